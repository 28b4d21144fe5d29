"""A local HTTP server that answers like the Hugging Face Hub for a small mirror on disk.

The real hubs are unreachable here, so `speedrun data fetch` is tested against this: the
routes huggingface_hub's `hf_hub_download` and `snapshot_download` use, served from
`<root>/datasets/<org>/<name>/<path>`, plus plain files under `<root>/files/` (the eval bundle's
S3 URL stands in for it):

- HEAD/GET `/datasets/<repo>/resolve/<revision>/<path>`: the file, with the hub's headers
  (X-Repo-Commit, X-Linked-Etag = its sha256, X-Linked-Size, Accept-Ranges) and `Range` support;
- GET `/api/datasets/<repo>/revision/<revision>`: repo info (sha, siblings);
- GET `/api/datasets/<repo>/tree/<revision>[/<path>]`: the tree listing, LFS entries included;
- `token`: when set, every request without `Authorization: Bearer <token>` gets 401 (a gated repo);
- `cut_once`: paths whose first GET stops after half the bytes (an interrupted download).
`requests` records (method, path, Range header) of every request.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import urllib.parse
from pathlib import Path
from typing import Any


class HubMirror:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.token: str | None = None
        self.cut_once: set[str] = set()
        self.requests: list[tuple[str, str, str | None]] = []
        handler = type("Handler", (_Handler,), {"mirror": self})
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, repo: str, path: str, data: bytes) -> None:
        target = self.root / "datasets" / repo / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)

    def add_url_file(self, name: str, data: bytes) -> str:
        target = self.root / "files" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return f"{self.url}/files/{name}"

    def __enter__(self) -> HubMirror:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


def commit_of(repo: str) -> str:
    return hashlib.sha1(repo.encode()).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    mirror: HubMirror
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _reply(self, status: int, data: bytes, headers: dict[str, str] | None = None, body: bool = True) -> None:
        self.send_response(status)
        for key, value in {"Content-Length": str(len(data)), **(headers or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _json(self, obj: Any) -> None:
        self._reply(200, json.dumps(obj).encode(), {"Content-Type": "application/json"})

    def _serve(self, body: bool) -> None:
        m = self.mirror
        path = urllib.parse.urlsplit(self.path).path
        m.requests.append((self.command, path, self.headers.get("Range")))
        if m.token and self.headers.get("Authorization") != f"Bearer {m.token}":
            self._reply(401, b'{"error": "Access to this dataset is restricted"}', {"X-Error-Code": "GatedRepo"}, body)
            return
        parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/")]
        if parts[0] == "files":
            self._file(m.root / "files" / "/".join(parts[1:]), path, {}, body)
        elif parts[:1] == ["datasets"] and len(parts) > 5 and parts[3] == "resolve":
            repo, rel = "/".join(parts[1:3]), "/".join(parts[5:])
            self._file(m.root / "datasets" / repo / rel, path, {"X-Repo-Commit": commit_of(repo)}, body)
        elif parts[:2] == ["api", "datasets"] and len(parts) > 5 and parts[4] == "revision":
            repo = "/".join(parts[2:4])
            files = self._files(repo, "")
            self._json(
                {
                    "id": repo,
                    "sha": commit_of(repo),
                    "private": False,
                    "siblings": [{"rfilename": f["path"]} for f in files],
                }
            )
        elif parts[:2] == ["api", "datasets"] and len(parts) > 5 and parts[4] == "tree":
            self._json(self._files("/".join(parts[2:4]), "/".join(parts[6:])))
        else:
            self._reply(404, b'{"error": "not found"}', {"X-Error-Code": "EntryNotFound"}, body)

    def _files(self, repo: str, under: str) -> list[dict[str, Any]]:
        base = self.mirror.root / "datasets" / repo
        out = []
        for p in sorted((base / under).rglob("*")):
            if p.is_file():
                data = p.read_bytes()
                sha256 = hashlib.sha256(data).hexdigest()
                out.append(
                    {
                        "type": "file",
                        "path": p.relative_to(base).as_posix(),
                        "size": len(data),
                        "oid": hashlib.sha1(data).hexdigest(),
                        "lfs": {"oid": sha256, "size": len(data), "pointerSize": 134},
                    }
                )
        return out

    def _file(self, target: Path, path: str, headers: dict[str, str], body: bool) -> None:
        if not target.is_file():
            self._reply(404, b'{"error": "Entry not found"}', {"X-Error-Code": "EntryNotFound"}, body)
            return
        data = target.read_bytes()
        sha256 = hashlib.sha256(data).hexdigest()
        headers = {
            **headers,
            "ETag": f'"{sha256}"',
            "X-Linked-Etag": f'"{sha256}"',
            "X-Linked-Size": str(len(data)),
            "Accept-Ranges": "bytes",
        }
        start = 0
        if body and (wanted := self.headers.get("Range", "")).startswith("bytes="):
            start = int(wanted[len("bytes=") :].split("-")[0] or 0)
        if body and path in self.mirror.cut_once and start == 0:
            self.mirror.cut_once.discard(path)
            self.send_response(200)
            for key, value in {"Content-Length": str(len(data)), **headers}.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])  # then the connection drops
            self.wfile.flush()
            self.close_connection = True
            return
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            self._reply(206, data[start:], headers, body)
        else:
            self._reply(200, data, headers, body)
