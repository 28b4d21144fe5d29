"""The fake S3 credentials every tier uses with moto's server, and a bucket on such a server.

The unit tier's `s3_bucket` fixture hands out an S3Bucket; the control-plane tier puts the same
credentials into the Secret its speedruns read.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass(frozen=True)
class S3Bucket:
    name: str
    endpoint_url: str
    env: dict[str, str] = field(repr=False)

    @property
    def uri(self) -> str:
        return f"s3://{self.name}"

    def client(self) -> Any:
        """A boto3 S3 client for this server (independent of the code under test)."""
        return _client(self.endpoint_url)


@functools.lru_cache(maxsize=4)
def _client(endpoint_url: str) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
