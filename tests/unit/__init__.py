"""The unit tier: no Go, no root, no control plane; seconds per file (`make test-unit`)."""
