"""A local stand-in for the Hugging Face Hub: serves folders (written by `save_pretrained` in the
tests) as model repos over the few endpoints huggingface_hub calls to download them.

- `GET /api/models/{repo}[/revision/{rev}]`: repo info (`sha`, `siblings`), what
  `HfApi.model_info`/`repo_info` read;
- `GET /api/models/{repo}/tree/{rev}[/{path}]`: the recursive file listing `snapshot_download`
  reads (path, size, git blob oid);
- `HEAD`/`GET /{repo}/resolve/{rev}/{file}`: the file, with the headers `hf_hub_download` needs
  (`X-Repo-Commit`, `ETag`, `Content-Length`), and `Range: bytes=N-` (206) for resumed transfers.

`rate` throttles file bodies to that many bytes/s (a realistic link for benchmarks); `cut` makes
the next GET of a file stop after that many bytes (a dropped connection).

Anything else is 404 with the `X-Error-Code` huggingface_hub maps to its errors. Requests are
logged in `requests` so that tests can see what was fetched.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit


def _git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class LocalHub:
    def __init__(self, repos: dict[str, Path]) -> None:
        self.repos = {repo: Path(folder) for repo, folder in repos.items()}
        self.requests: list[tuple[str, str]] = []
        self.gate: threading.Event | None = None
        """When set to an unset Event, file downloads wait for it (a download 'in progress')."""
        self.held: set[str] | None = None
        """Only these files wait for the gate (None: all)."""
        self.rate: float | None = None
        """Bytes per second for all file bodies together, like one link (None: unthrottled)."""
        self._link = threading.Lock()
        self._link_free_at = 0.0
        self.cut: dict[str, int] = {}
        """file → bytes after which its next GET drops the connection (once)."""
        self.ranges: list[tuple[str, int]] = []
        """(file, first byte) of every GET with a Range header."""
        self.sent: dict[str, int] = {}
        """file → body bytes sent, all GETs together."""
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def files(self, repo: str) -> dict[str, Path]:
        root = self.repos[repo]
        return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}

    def sha(self, repo: str) -> str:
        digest = hashlib.sha1(repo.encode())
        for name, path in self.files(repo).items():
            digest.update(name.encode() + path.read_bytes())
        return digest.hexdigest()

    def reserve(self, size: int) -> float:
        """Seconds to wait before sending `size` bytes: transfers share the `rate` in turn."""
        assert self.rate
        with self._link:
            now = time.monotonic()
            start = max(now, self._link_free_at)
            self._link_free_at = start + size / self.rate
            return self._link_free_at - now

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _serve(self, body: bool) -> None:
                path = unquote(urlsplit(self.path).path)
                hub.requests.append((self.command, path))
                parts = [p for p in path.split("/") if p]
                if parts[:2] == ["api", "models"] and len(parts) >= 4:
                    self._api(parts[2:], body)
                elif len(parts) >= 5 and parts[2] == "resolve":
                    self._resolve(f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]), body)
                else:
                    self._error(404, "RepoNotFound", "not found", body)

            def _api(self, parts: list[str], body: bool) -> None:
                repo = "/".join(parts[:2])
                if repo not in hub.repos:
                    self._error(404, "RepoNotFound", f"Repository {repo} not found", body)
                    return
                rest = parts[2:]
                files = hub.files(repo)
                if not rest or rest[0] == "revision":
                    info = {"id": repo, "modelId": repo, "sha": hub.sha(repo), "private": False,
                            "siblings": [{"rfilename": name} for name in files]}
                    self._json(info, body)
                elif rest[0] == "tree" and len(rest) >= 2:
                    prefix = "/".join(rest[2:])
                    entries = [{"type": "file", "path": name, "size": p.stat().st_size,
                                "oid": _git_blob_oid(p.read_bytes())}
                               for name, p in files.items()
                               if not prefix or name.startswith(prefix.rstrip("/") + "/")]
                    self._json(entries, body)
                else:
                    self._error(404, "EntryNotFound", "unknown API route", body)

            def _resolve(self, repo: str, revision: str, name: str, body: bool) -> None:
                if repo not in hub.repos:
                    self._error(404, "RepoNotFound", f"Repository {repo} not found", body)
                    return
                path = hub.files(repo).get(name)
                if path is None:
                    self._error(404, "EntryNotFound", f"{name} not in {repo}", body)
                    return
                if body and hub.gate is not None and (hub.held is None or name in hub.held):
                    hub.gate.wait(60)
                data = path.read_bytes()
                start = 0
                wanted = self.headers.get("Range", "")
                if body and wanted.startswith("bytes=") and wanted.endswith("-"):
                    start = min(int(wanted[6:-1]), len(data))
                    hub.ranges.append((name, start))
                self.send_response(206 if start else 200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data) - start))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("ETag", f'"{_git_blob_oid(data)}"')
                self.send_header("X-Repo-Commit", hub.sha(repo))
                self.end_headers()
                if body:
                    self._send_body(name, data[start:])

            def _send_body(self, name: str, data: bytes) -> None:
                stop = hub.cut.pop(name, None)
                chunk = 64 * 1024
                sent = 0
                while sent < len(data):
                    if stop is not None and sent >= stop:
                        self.close_connection = True  # the transfer is cut here
                        return
                    end = min(len(data), sent + chunk, stop if stop is not None else len(data))
                    if hub.rate:
                        time.sleep(hub.reserve(end - sent))
                    try:
                        self.wfile.write(data[sent:end])
                    except OSError:
                        return
                    hub.sent[name] = hub.sent.get(name, 0) + end - sent
                    sent = end

            def _json(self, value: object, body: bool) -> None:
                data = json.dumps(value).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def _error(self, status: int, code: str, message: str, body: bool) -> None:
                data = json.dumps({"error": message}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("X-Error-Code", code)
                self.send_header("X-Error-Message", message)
                self.end_headers()
                if body:
                    self.wfile.write(data)

        return Handler

    @contextmanager
    def running(self) -> Iterator[LocalHub]:
        thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            if self.gate is not None:
                self.gate.set()
            self._server.shutdown()
            self._server.server_close()


def point_hub_at(monkeypatch: Any, endpoint: str, home: Path) -> None:
    """What HF_ENDPOINT / HF_HOME would have set, had they been set before huggingface_hub was
    imported (it reads them into its constants then). `monkeypatch`: pytest's."""
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(hub_constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(hub_constants, "HF_HOME", str(home))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
