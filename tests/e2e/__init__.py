"""The e2e tier: whole paths through real processes (`make test-e2e`)."""
