"""A tiny stand-in for the Hugging Face Hub on 127.0.0.1, for the fetch tests.

It answers the endpoints `huggingface_hub` calls for a dataset repository (read from the client's
source): the repository listing `GET /api/datasets/OWNER/NAME/revision/REV?blobs=true` (commit
`sha` and `siblings` with size and LFS sha256), and file downloads
`HEAD|GET /datasets/OWNER/NAME/resolve/REV/PATH` with the headers the client checks
(`X-Repo-Commit`, `ETag`, `Content-Length`) and `Range: bytes=N-` resumption (206). Errors carry
the client's `X-Error-Code` values (RepoNotFound, RevisionNotFound, EntryNotFound).

Failure injection: `cut_once` names files whose first GET sends half the body and then drops the
connection; `refuse_resume` answers every ranged GET with 503. Every request is logged.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


class LoopbackHub:
    """repos: {"OWNER/NAME": {"revisions": {"main": commit}, "files": {path: bytes}}}."""

    def __init__(self, repos: dict[str, dict]):
        self.repos = repos
        self.log: list[tuple[str, str, str | None]] = []
        self.cut_once: set[str] = set()
        self.refuse_resume = False
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                hub._answer(self, body=True)

            def do_HEAD(self):
                hub._answer(self, body=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> LoopbackHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    # ------------------------------------------------------------------------------------------

    def _commit(self, repo: dict, revision: str) -> str | None:
        if revision in repo["revisions"]:
            return repo["revisions"][revision]
        return revision if revision in repo["revisions"].values() else None

    def _answer(self, handler: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlsplit(handler.path).path)
        self.log.append((handler.command, path, handler.headers.get("Range")))
        listing = re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/revision/([^/]+)", path)
        resolve = re.fullmatch(r"/datasets/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        match = listing or resolve
        repo = self.repos.get(match.group(1)) if match else None
        if repo is None:
            return self._error(handler, 404, "RepoNotFound")
        commit = self._commit(repo, match.group(2))
        if commit is None:
            return self._error(handler, 404, "RevisionNotFound")
        if listing:
            return self._listing(handler, match.group(1), repo, commit)
        data = repo["files"].get(resolve.group(3))
        if data is None:
            return self._error(handler, 404, "EntryNotFound", commit)
        self._file(handler, resolve.group(3), data, commit, body)

    def _listing(self, handler, repo_id: str, repo: dict, commit: str) -> None:
        siblings = [
            {
                "rfilename": name,
                "size": len(data),
                "blobId": hashlib.sha1(data).hexdigest(),
                "lfs": {
                    "size": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "pointerSize": 130,
                },
            }
            for name, data in sorted(repo["files"].items())
        ]
        payload = json.dumps(
            {"id": repo_id, "sha": commit, "private": False, "siblings": siblings}
        ).encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    def _file(self, handler, name: str, data: bytes, commit: str, body: bool) -> None:
        start = 0
        ranged = handler.headers.get("Range")
        if ranged and body:
            if self.refuse_resume:
                return self._error(handler, 503, None, commit)
            start = int(re.fullmatch(r"bytes=(\d+)-", ranged).group(1))
        handler.send_response(206 if start else 200)
        handler.send_header("X-Repo-Commit", commit)
        handler.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        handler.send_header("Accept-Ranges", "bytes")
        handler.send_header("Content-Length", str(len(data) - start))
        if start:
            handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        handler.end_headers()
        if not body:
            return
        if name in self.cut_once and not start:
            self.cut_once.discard(name)
            handler.wfile.write(data[: len(data) // 2])
            handler.wfile.flush()
            handler.close_connection = True
            handler.connection.shutdown(2)  # the client sees a body shorter than announced
            return
        handler.wfile.write(data[start:])

    def _error(self, handler, status: int, code: str | None, commit: str | None = None) -> None:
        payload = json.dumps({"error": code or "unavailable"}).encode()
        handler.send_response(status)
        if code:
            handler.send_header("X-Error-Code", code)
        if commit:
            handler.send_header("X-Repo-Commit", commit)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(payload)
