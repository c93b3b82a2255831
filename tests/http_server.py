"""A real HTTP server on 127.0.0.1 for ingestion tests: images, and every way a download fails."""

from __future__ import annotations

import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ImageServer:
    """Serves `images[name]` at /img/<name>, plus failure routes:

    /missing (404), /always500 (500), /flaky/<name> (500 on the first request, then the image),
    /slow/<name> (waits `slow_s` first), /html (text/html), /html-as-jpeg (HTML sent as image/jpeg),
    /truncated.jpg (a cut JPEG), /redirect/<name> (302 to /img/<name>), /redirect-private (302 to
    a private address), /loop (redirects forever).
    `hits` counts requests per path.
    """

    def __init__(self, images: dict[str, bytes], slow_s: float = 3.0) -> None:
        self.images = images
        self.slow_s = slow_s
        self.hits: Counter[str] = Counter()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:
                with server._lock:
                    server.hits[self.path] += 1
                    count = server.hits[self.path]
                server.handle(self, count)

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._http.daemon_threads = True
        self.base = f"http://127.0.0.1:{self._http.server_address[1]}"
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    def __enter__(self) -> ImageServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.shutdown()
        self._http.server_close()

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def handle(self, request: BaseHTTPRequestHandler, count: int) -> None:
        path = request.path.split("?", 1)[0]  # a query string names the same resource
        if path.startswith("/img/") and path[5:] in self.images:
            return _send(request, 200, self.images[path[5:]], "image/jpeg")
        if path.startswith("/flaky/") and path[7:] in self.images:
            if count == 1:
                return _send(request, 500, b"try again", "text/plain")
            return _send(request, 200, self.images[path[7:]], "image/jpeg")
        if path.startswith("/slow/") and path[6:] in self.images:
            time.sleep(self.slow_s)
            return _send(request, 200, self.images[path[6:]], "image/jpeg")
        if path.startswith("/redirect/"):
            return _redirect(request, f"/img/{path[10:]}")
        if path == "/redirect-private":
            return _redirect(request, "http://10.1.2.3/a.jpg")
        if path == "/trickle.jpg":  # a byte every 0.2 s, for ever (until the client gives up)
            request.send_response(200)
            request.send_header("Content-Type", "image/jpeg")
            request.end_headers()
            try:
                request.wfile.write(b"\xff\xd8\xff")
                for _ in range(200):
                    time.sleep(0.2)
                    request.wfile.write(b"\x00")
                    request.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass
            return None
        if path == "/bad-gzip.jpg":
            body = b"this is not gzip at all" * 10
            request.send_response(200)
            request.send_header("Content-Type", "image/jpeg")
            request.send_header("Content-Encoding", "gzip")
            request.send_header("Content-Length", str(len(body)))
            request.end_headers()
            request.wfile.write(body)
            return None
        if path == "/loop":
            return _redirect(request, "/loop")
        if path == "/always500":
            return _send(request, 500, b"broken", "text/plain")
        if path == "/html":
            return _send(request, 200, b"<!doctype html><p>a page</p>", "text/html; charset=utf-8")
        if path == "/html-as-jpeg":
            return _send(request, 200, b"<!doctype html><p>not a picture</p>" * 10, "image/jpeg")
        if path == "/truncated.jpg":
            first = next(iter(self.images.values()))
            return _send(request, 200, first[: len(first) // 3], "image/jpeg")
        return _send(request, 404, b"not found", "text/plain")


def _send(request: BaseHTTPRequestHandler, status: int, body: bytes, content_type: str) -> None:
    request.send_response(status)
    request.send_header("Content-Type", content_type)
    request.send_header("Content-Length", str(len(body)))
    request.end_headers()
    try:
        request.wfile.write(body)
    except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeouts, early refusal)
        pass


def _redirect(request: BaseHTTPRequestHandler, location: str) -> None:
    request.send_response(302)
    request.send_header("Location", location)
    request.send_header("Content-Length", "0")
    request.end_headers()
