"""A local HTTP server for the demo site (``mmcurate.pipeline.demo.site``), with the failure modes a crawler must survive.

``serve_site(root)`` serves ``root/site/`` on 127.0.0.1 at an ephemeral port, in a background thread::

    with serve_site(root) as server:
        crawl(server.base_url + "/index.html")
        assert server.request_count == ...

Besides static files it implements the dynamic paths the generator links to (see ``demo.site.labels``):

- ``/loop/a/<name>`` ↔ ``/loop/b/<name>``: 302 to each other forever
- ``/slow/<name>``: stalls ``slow_seconds`` (default 5 s, longer than a crawler's 2 s timeout) before answering;
  it sleeps in short steps so ``stop()`` is prompt
- ``/error/<name>``: 500
- ``/huge/<name>``: 200 ``image/jpeg`` streaming ``huge_bytes`` (default 30 MiB) with no Content-Length
- extra headers per path from ``site/_headers.json`` (e.g. ``X-Robots-Tag: noai``); the sidecar itself is 404
- HTML files have ``{{BASE_URL}}`` replaced by the server's base URL, so absolute links work at any port

HTML is served as ``text/html`` with no charset parameter: pages declare theirs in ``<meta charset>``, and the
Latin-1 test page declares none, which is the point of it.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import posixpath
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import unquote, urlsplit

from mmcurate.pipeline.demo.site.labels import (
    BASE_URL_TOKEN,
    ERROR_PREFIX,
    HEADERS_SIDECAR,
    HUGE_PREFIX,
    LOOP_PREFIX,
    SLOW_PREFIX,
)

logger = logging.getLogger(__name__)

CONTENT_TYPES = {
    ".html": "text/html",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".flac": "audio/flac",
    ".wav": "audio/wav",
    ".vtt": "text/vtt",
    ".srt": "application/x-subrip",
    ".txt": "text/plain",
    ".json": "application/json",
    ".csv": "text/csv",
}
SLEEP_STEP_S = 0.05
STREAM_CHUNK = 64 * 1024


@dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str  # as requested, query included
    status: int


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a client that never closes must not keep the process (or stop()) waiting
    request_queue_size = 128  # a concurrent crawler must not see SYN drops (the default backlog is 5)

    def __init__(self, address: tuple[str, int], site: "SiteServer"):
        self.site = site
        super().__init__(address, _Handler)

    def handle_error(self, request: object, client_address: object) -> None:
        # a crawler hanging up on a capped or stalled body is expected here, not an error worth a traceback
        import sys

        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "mmcurate-demo/1.0"
    sys_version = ""  # keep the Server header free of the Python version: responses are reproducible

    # ---- bookkeeping ----------------------------------------------------------------------------------------
    def parse_request(self) -> bool:
        ok = super().parse_request()
        if ok:
            self.server.site._count(self.command or "", self.path)
        return ok

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        status = code.value if hasattr(code, "value") else int(code) if str(code).isdigit() else 0
        self.server.site._record(RequestRecord(self.command or "", self.path, status))
        logger.debug("%s %s -> %s", self.command, self.path, code)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (signature of the base class)
        logger.debug("demo server: " + format, *args)  # never stderr: one line per request drowns test output

    # ---- methods --------------------------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        self._dispatch(send_body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch(send_body=False)

    def _dispatch(self, send_body: bool) -> None:
        path = unquote(urlsplit(self.path).path) or "/"
        if path == "/":
            path = "/index.html"
        if path.startswith(LOOP_PREFIX):
            self._loop(path, send_body)
        elif path.startswith(SLOW_PREFIX):
            self._slow(send_body)
        elif path.startswith(ERROR_PREFIX):
            self._send(500, b"<html><body><h1>500 Internal Server Error</h1></body></html>\n", "text/html", send_body)
        elif path.startswith(HUGE_PREFIX):
            self._huge(send_body)
        else:
            self._static(path, send_body)

    # ---- responses ------------------------------------------------------------------------------------------
    def _send(
        self, status: int, body: bytes, content_type: str, send_body: bool, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def _not_found(self, send_body: bool) -> None:
        self._send(404, b"<html><body><h1>404 Not Found</h1></body></html>\n", "text/html", send_body)

    def _static(self, path: str, send_body: bool) -> None:
        site = self.server.site
        normal = posixpath.normpath(path)
        if normal != path or normal == f"/{HEADERS_SIDECAR}" or "/." in normal:
            self._not_found(send_body)  # no traversal, no dot files, and the sidecar is not part of the site
            return
        file = site.site_dir / normal.lstrip("/")
        if not file.is_file():
            self._not_found(send_body)
            return
        body = file.read_bytes()
        suffix = file.suffix.lower()
        if suffix == ".html":
            body = body.replace(BASE_URL_TOKEN.encode("ascii"), site.base_url.encode("ascii"))
        content_type = CONTENT_TYPES.get(suffix, "application/octet-stream")
        self._send(200, body, content_type, send_body, site.extra_headers.get(normal))

    def _loop(self, path: str, send_body: bool) -> None:
        rest = path[len(LOOP_PREFIX) :]
        hop, _, name = rest.partition("/")
        if hop not in ("a", "b") or not name:
            self._not_found(send_body)  # a HEAD answer carries no body
            return
        self.send_response(302)
        self.send_header("Location", f"{LOOP_PREFIX}{'b' if hop == 'a' else 'a'}/{name}")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _slow(self, send_body: bool) -> None:
        stop = self.server.site._stopping
        if stop.wait(self.server.site.slow_seconds):
            self.close_connection = True  # shutting down: drop the client without an answer
            return
        self._send(200, b"finally\n", "text/plain", send_body)

    def _huge(self, send_body: bool) -> None:
        site = self.server.site
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")  # no Content-Length: the client must cap while reading
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        if not send_body:
            return
        chunk = b"\xff\xd8\xff\xe0" + bytes(STREAM_CHUNK - 4)
        sent = 0
        try:
            while sent < site.huge_bytes and not site._stopping.is_set():
                piece = chunk[: min(STREAM_CHUNK, site.huge_bytes - sent)]
                self.wfile.write(piece)
                sent += len(piece)
        except (BrokenPipeError, ConnectionResetError):
            logger.debug("client hung up after %d bytes of %s", sent, self.path)  # expected: it hit its cap


class SiteServer:
    """A running demo server. Use as a context manager, or call ``stop()``."""

    def __init__(
        self,
        root: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        slow_seconds: float = 5.0,
        huge_bytes: int = 30 * 1024 * 1024,
        access_log: Path | None = None,
    ):
        address = ipaddress.ip_address(host)
        if address.version != 4 or not address.is_loopback:
            raise ValueError(f"the demo server only binds IPv4 loopback (127.0.0.1), not {host!r}")
        self.site_dir = Path(root) / "site"
        if not (self.site_dir / "index.html").is_file():
            raise FileNotFoundError(f"no demo site under {self.site_dir}; run build_site({root!s}) first")
        sidecar = self.site_dir / HEADERS_SIDECAR
        self.extra_headers: dict[str, dict[str, str]] = (
            json.loads(sidecar.read_text("utf-8")) if sidecar.exists() else {}
        )
        self.slow_seconds = slow_seconds
        self.huge_bytes = huge_bytes
        self._lock = threading.Lock()
        self._count_value = 0
        self._log: list[RequestRecord] = []
        self._stopping = threading.Event()
        # an access log, like any web server's: "METHOD PATH" per request received, appended across runs
        self._access_log = open(access_log, "ab", buffering=0) if access_log is not None else None
        try:
            self._httpd = _Server((host, port), self)
        except OSError:
            if self._access_log is not None:
                self._access_log.close()
            raise
        self.host, self.port = self._httpd.server_address[:2]
        self.base_url = f"http://{self.host}:{self.port}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": SLEEP_STEP_S},
            name=f"demo-server-{self.port}",
            daemon=True,
        )
        self._thread.start()
        logger.info("demo site %s served at %s", self.site_dir, self.base_url)

    # called from handler threads
    def _count(self, method: str, path: str) -> None:
        with self._lock:
            self._count_value += 1
            if self._access_log is not None:
                # one write per line, unbuffered: the log stays whole even if this process is SIGKILLed
                self._access_log.write(f"{method} {path}\n".encode("utf-8", "backslashreplace"))

    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            self._log.append(record)

    @property
    def request_count(self) -> int:
        """Requests received (counted on arrival, so a stalled /slow/ request counts before it is answered)."""
        with self._lock:
            return self._count_value

    @property
    def request_log(self) -> list[RequestRecord]:
        """Answered requests, in the order their status line was sent."""
        with self._lock:
            return list(self._log)

    def requests_for(self, path: str) -> int:
        """How many answered requests asked for ``path`` (query ignored)."""
        return sum(1 for r in self.request_log if urlsplit(r.path).path == path)

    def url(self, path: str) -> str:
        return self.base_url + path

    def stop(self) -> None:
        if self._stopping.is_set():
            return
        self._stopping.set()  # wakes stalled /slow/ handlers and stops /huge/ streams
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()
        if self._access_log is not None:
            self._access_log.close()

    def __enter__(self) -> SiteServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def serve_site(
    root: Path,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    slow_seconds: float = 5.0,
    huge_bytes: int = 30 * 1024 * 1024,
    access_log: Path | None = None,
) -> SiteServer:
    """Start serving ``root/site/`` (built by ``build_site(root)``) and return the running server."""
    return SiteServer(root, host, port, slow_seconds=slow_seconds, huge_bytes=huge_bytes, access_log=access_log)
