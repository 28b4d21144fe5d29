"""The fake S3 credentials every tier uses with moto's server, a bucket on such a server, and a
moto server whose PUTs a test can hold.

The unit tier's `s3_bucket` fixture hands out an S3Bucket; the control-plane tier puts the same
credentials into the Secret its speedruns read.
"""

from __future__ import annotations

import functools
import re
import threading
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


class GatedMotoServer:
    """moto's S3 server, whose PUTs of keys matching a pattern can be held until the test releases them.

    A trainer writes its checkpoints synchronously, so holding one PUT keeps a run at that step with
    its metrics still served: a test can then observe what a slow run would show, with no race
    against how fast the machine trains. A held request waits at most HOLD_MAX_SECONDS (below
    botocore's 60 s read timeout), then goes through.
    """

    HOLD_MAX_SECONDS = 50.0

    def __init__(self, host: str, port: int) -> None:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        self._pattern: re.Pattern[str] | None = None
        self._released = threading.Event()
        app = DomainDispatcherApplication(create_backend_app)
        self._server = make_server(host, port, self._gate(app), threaded=True, request_handler=MotoRequestHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> GatedMotoServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release()
        self._server.shutdown()
        self._thread.join()

    def hold(self, key_pattern: str) -> None:
        """Hold PUTs whose path matches `key_pattern` (a regex) until release()."""
        self._released.clear()
        self._pattern = re.compile(key_pattern)

    def release(self) -> None:
        self._pattern = None
        self._released.set()

    def _gate(self, app: Any) -> Any:
        def gated(environ: dict[str, Any], start_response: Any) -> Any:
            pattern = self._pattern
            if environ["REQUEST_METHOD"] == "PUT" and pattern and pattern.search(environ.get("PATH_INFO", "")):
                self._released.wait(self.HOLD_MAX_SECONDS)
            return app(environ, start_response)

        return gated
