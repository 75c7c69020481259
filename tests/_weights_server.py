"""A tiny HTTP server on 127.0.0.1 for the pretrained-weights tests: serves files of a folder, and answers as the
Hugging Face Hub does for ``/<org>/<repo>/resolve/<revision>/<file>`` (the headers huggingface_hub reads)."""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class _Handler(BaseHTTPRequestHandler):
    root: Path
    hits: list[str]

    def log_message(self, *args):  # quiet
        pass

    def _file(self) -> Path | None:
        path = self.path.split("?")[0].lstrip("/")
        if "/resolve/" in path:  # the Hub's URL: org/repo/resolve/revision/file -> hub/org/repo/file
            repo, rest = path.split("/resolve/", 1)
            path = f"hub/{repo}/{rest.split('/', 1)[1]}"
        f = self.root / path
        return f if f.is_file() else None

    def _headers(self, f: Path) -> bytes:
        data = f.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("ETag", '"' + hashlib.sha256(data).hexdigest() + '"')
        self.send_header("X-Repo-Commit", "0" * 40)
        self.end_headers()
        return data

    def do_HEAD(self):
        self.hits.append("HEAD " + self.path)
        f = self._file()
        if f is None:
            self.send_error(404)
            return
        self._headers(f)

    def do_GET(self):
        self.hits.append("GET " + self.path)
        f = self._file()
        if f is None:
            self.send_error(404)
            return
        data = self._headers(f)
        self.wfile.write(data)


class WeightsServer:
    """Serve ``root`` on 127.0.0.1 at a free port; ``url`` is its base, ``hits`` the requests seen."""

    def __init__(self, root: Path) -> None:
        handler = type("Handler", (_Handler,), {"root": Path(root), "hits": []})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.hits = handler.hits
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
