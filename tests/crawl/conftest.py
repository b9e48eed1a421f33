"""A small threaded HTTP server on 127.0.0.1 with per-test routes, for the fetch-guard tests.

Routes map a path to a fixed answer (status, headers, body) or to a function that writes the answer itself
(redirect chains, slow drips). Unrouted paths answer 404, so robots.txt is "absent" unless a test routes it.
Every request path is recorded in ``LocalServer.requests`` so tests can assert what was (not) fetched.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

Handler = Callable[[BaseHTTPRequestHandler, threading.Event], None]


@dataclass
class Answer:
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    send_length: bool = True  # False: no Content-Length, body ends when the connection closes


class LocalServer:
    def __init__(self) -> None:
        self.routes: dict[str, Answer | Handler] = {}
        self.requests: list[str] = []
        self.user_agents: list[str] = []
        self.stopping = threading.Event()  # lets long-running handlers (drips, stalls) end at teardown
        server = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                server.requests.append(self.path)
                server.user_agents.append(self.headers.get("User-Agent", ""))
                route = server.routes.get(self.path.split("?", 1)[0])
                if route is None:
                    route = Answer(404, [("Content-Type", "text/plain")], b"not found")
                if callable(route):
                    route(self, server.stopping)
                    return
                self.send_response(route.status)
                for name, value in route.headers:
                    self.send_header(name, value)
                if route.send_length:
                    self.send_header("Content-Length", str(len(route.body)))
                self.send_header("Connection", "close")
                self.end_headers()
                try:
                    self.wfile.write(route.body)
                except (BrokenPipeError, ConnectionResetError):  # the client stopped reading: that is the point
                    pass

            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def route(
        self,
        path: str,
        handler: Handler | None = None,
        *,
        status: int = 200,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        send_length: bool = True,
    ) -> None:
        """Answer ``path`` with a fixed response, or hand the request to ``handler``."""
        self.routes[path] = handler or Answer(status, headers or [], body, send_length)

    def redirect(self, path: str, location: str, status: int = 302) -> None:
        self.routes[path] = Answer(status, [("Location", location)])

    @staticmethod
    def drip(chunks: int, pause_s: float, declared_length: int | None = None) -> Handler:
        """A handler that sends headers, then one byte every ``pause_s`` seconds, ``chunks`` times at most."""

        def handle(request: BaseHTTPRequestHandler, stopping: threading.Event) -> None:
            request.send_response(200)
            request.send_header("Content-Type", "application/octet-stream")
            request.send_header("Content-Length", str(declared_length if declared_length is not None else chunks))
            request.send_header("Connection", "close")
            request.end_headers()
            for _ in range(chunks):
                if stopping.wait(pause_s):
                    return
                try:
                    request.wfile.write(b"x")
                    request.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    return

        return handle

    @staticmethod
    def drip_head(pause_s: float, padding: int) -> Handler:
        """A handler that sends its status line and headers (``padding`` bytes of them) one byte per ``pause_s``."""
        head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Padding: " + b"p" * padding
            + b"\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
        )  # fmt: skip

        def handle(request: BaseHTTPRequestHandler, stopping: threading.Event) -> None:
            for i in range(len(head)):
                if stopping.wait(pause_s):
                    return
                try:
                    request.wfile.write(head[i : i + 1])
                    request.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    return

        return handle

    @staticmethod
    def stall(seconds: float) -> Handler:
        """A handler that accepts the request and says nothing for ``seconds`` (a read timeout on the client)."""

        def handle(request: BaseHTTPRequestHandler, stopping: threading.Event) -> None:
            stopping.wait(seconds)

        return handle


@pytest.fixture
def local_server() -> Iterator[LocalServer]:
    server = LocalServer()
    server.thread.start()
    yield server
    server.stopping.set()
    server.httpd.shutdown()
    server.httpd.server_close()
    server.thread.join(timeout=5)
