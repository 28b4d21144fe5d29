"""Helpers the test tiers share: manifest builders, S3 and GCS servers, helm, Go-built tools,
headless Chromium, a fake Hugging Face Hub, the CRD's offline admission. Not tests themselves."""
