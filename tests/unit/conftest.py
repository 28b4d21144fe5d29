"""The unit tier's fixtures.

S3: `s3_server` is a real S3 endpoint over HTTP (moto's server mode on 127.0.0.1, one per test
session); `s3_env` the environment variables a client or subprocess needs to use it (endpoint and
fake credentials); `s3_bucket` a fresh, empty bucket per test, with that environment applied to
the test process. `http_server` serves a directory over HTTP; `bpe_tokenizer_json` is a tiny
byte-level BPE tokenizer trained at the start of the session.
"""

from __future__ import annotations

import functools
import http.server
import itertools
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.s3 import S3_CREDENTIALS, S3Bucket


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """The endpoint URL of a moto S3 server on loopback, e.g. http://127.0.0.1:45678."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_env(s3_server: str) -> dict[str, str]:
    """Env vars that point AWS clients at `s3_server` (apply with monkeypatch, or pass to a subprocess)."""
    return {"AWS_ENDPOINT_URL": s3_server, **S3_CREDENTIALS}


_bucket_numbers = itertools.count()


@pytest.fixture
def s3_bucket(s3_server: str, s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> S3Bucket:
    """A new empty bucket; `s3_env` is set in os.environ for the duration of the test."""
    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    bucket = S3Bucket(f"test-{os.getpid()}-{next(_bucket_numbers)}", s3_server, dict(s3_env))
    bucket.client().create_bucket(Bucket=bucket.name)
    return bucket


@pytest.fixture(scope="session")
def http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """(base URL, directory): a static HTTP server on loopback serving the files put in that directory."""
    root = tmp_path_factory.mktemp("http-root")
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="session")
def bpe_tokenizer_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny byte-level BPE `tokenizers` JSON (vocab 400, `<|endoftext|>` special), trained here."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from speedrun_trainer.data.builtin import builtin_documents

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(builtin_documents("builtin://pydoc-topics/val"), trainer)
    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.json"
    tok.save(str(path))
    return path
