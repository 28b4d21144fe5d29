"""The e2e tier's fixtures: `gcs_server` and `gcs_bucket`, a GCS emulator built from its Go module
(tests/support/gcs_server.py). The control-plane fixtures (nodes, images, S3) come from
tests/cluster/fixtures.py."""

from tests.support.gcs_server import gcs_bucket, gcs_server

__all__ = ["gcs_bucket", "gcs_server"]
