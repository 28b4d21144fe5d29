"""The e2e tier's fixtures: `gcs_server` and `gcs_bucket`, a GCS emulator built from its Go module
(tests/support/gcs_server.py); `built_images` and `s3` for the speedruns in real containers, one
registry and one S3 server per session (tests/cluster/real_speedrun.py). The control-plane
fixtures come from tests/cluster/fixtures.py."""

from tests.cluster.real_speedrun import built_images, s3
from tests.support.gcs_server import gcs_bucket, gcs_server

__all__ = ["built_images", "gcs_bucket", "gcs_server", "s3"]
