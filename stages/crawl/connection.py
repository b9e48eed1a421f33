"""HTTP(S) connections that connect only to vetted addresses and give up at the fetch's deadline.

Address: the connection resolves the host itself, refuses addresses ``address_refusal`` rejects and connects to
the checked address (no second DNS lookup to race, so DNS rebinding meets the same check).

Deadline: every socket operation — connect, the TLS handshake, each send and each recv of the status line,
headers and body — runs with a timeout of ``min(timeout_s, time left before the deadline)``, and none starts
after the deadline. A server dripping one byte per ``timeout_s - ε`` therefore cannot stretch a fetch past its
deadline: the operation that would cross it times out, and ``DeadlineExceeded`` says which limit was hit. Name
resolution (``getaddrinfo``) cannot be interrupted; the deadline is checked before and after it.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
from typing import Any

from mmcurate.schemas.reasons import Reason, Rejected
from mmcurate.stages.crawl.address import IPNetwork, address_refusal


class DeadlineExceeded(TimeoutError):
    """The whole-fetch deadline passed. A TimeoutError (an OSError) so that urllib and http.client treat it like
    any timeout; its text starts with the reason code, which is how img2dataset's error strings carry it."""

    def __init__(self, deadline_s: float, during: str):
        super().__init__(f"{Reason.TIMEOUT.value}: fetch deadline of {deadline_s:g} s passed during {during}")


class _DeadlineMixin:
    """Arms each blocking socket call with ``min(op timeout, time left)``; set ``arm(...)`` before first use."""

    _deadline: float | None = None  # time.monotonic() value; None: an ordinary socket
    _deadline_s: float = 0.0
    _op_timeout: float | None = None

    def arm(self, deadline: float, deadline_s: float, op_timeout: float | None) -> None:
        self._deadline, self._deadline_s, self._op_timeout = deadline, deadline_s, op_timeout

    def _call(self, during: str, method: Any, *args: Any) -> Any:
        if self._deadline is None:
            return method(*args)
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded(self._deadline_s, during)
        timeout = left if self._op_timeout is None else min(self._op_timeout, left)
        socket.socket.settimeout(self, timeout)  # type: ignore[arg-type]
        try:
            return method(*args)
        except TimeoutError:
            if time.monotonic() >= self._deadline:
                raise DeadlineExceeded(self._deadline_s, during) from None
            raise

    def connect(self, address: Any) -> None:
        self._call("connect", super().connect, address)  # type: ignore[misc]

    def recv(self, *args: Any) -> bytes:
        return self._call("the response", super().recv, *args)  # type: ignore[misc]

    def recv_into(self, *args: Any) -> int:
        return self._call("the response", super().recv_into, *args)  # type: ignore[misc]

    def send(self, *args: Any) -> int:
        return self._call("the request", super().send, *args)  # type: ignore[misc]

    def sendall(self, *args: Any) -> None:
        return self._call("the request", super().sendall, *args)  # type: ignore[misc]


class DeadlineSocket(_DeadlineMixin, socket.socket):
    pass


class DeadlineSSLSocket(_DeadlineMixin, ssl.SSLSocket):
    def do_handshake(self, *args: Any) -> None:
        self._call("the TLS handshake", super().do_handshake, *args)


def deadline_ssl_context() -> ssl.SSLContext:
    """The default verifying context, making sockets whose handshake and reads meet the deadline."""
    context = ssl.create_default_context()
    context.sslsocket_class = DeadlineSSLSocket
    return context


class _GuardedConnectionMixin:
    """Resolves the host, refuses disallowed addresses and connects to the vetted address itself."""

    def __init__(
        self, *args: Any, allow_networks: tuple[IPNetwork, ...], deadline: float, deadline_s: float, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._allow_networks = allow_networks
        self._deadline, self._deadline_s = deadline, deadline_s
        # http.client.HTTPConnection.connect() calls self._create_connection; HTTPS wraps the result in TLS
        # with server_hostname=self.host, so certificate checks still use the name, not the pinned IP.
        self._create_connection = self._create_vetted_connection

    def _op_timeout(self) -> float | None:
        timeout = self.timeout  # type: ignore[attr-defined]
        return timeout if isinstance(timeout, (int, float)) else None  # else socket's "default timeout" sentinel

    def _create_vetted_connection(
        self, address: tuple[str, int], timeout: Any = None, source_address: Any = None
    ) -> socket.socket:
        host, port = address
        if time.monotonic() >= self._deadline:
            raise DeadlineExceeded(self._deadline_s, "name resolution")
        addresses = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
        refused: list[str] = []
        last_error: OSError | None = None
        for family, sock_type, proto, _, sockaddr in addresses:
            why = address_refusal(str(sockaddr[0]), self._allow_networks)
            if why is not None:
                refused.append(why)
                continue
            sock = DeadlineSocket(family, sock_type, proto)
            sock.arm(self._deadline, self._deadline_s, self._op_timeout())
            try:
                if source_address:
                    sock.bind(source_address)
                sock.connect(sockaddr)
                return sock
            except DeadlineExceeded:
                sock.close()
                raise
            except OSError as err:
                sock.close()
                last_error = err
        if last_error is not None:
            raise last_error
        raise Rejected(Reason.ADDRESS_NOT_ALLOWED, f"{host}: " + "; ".join(refused))


class GuardedHTTPConnection(_GuardedConnectionMixin, http.client.HTTPConnection):
    pass


class GuardedHTTPSConnection(_GuardedConnectionMixin, http.client.HTTPSConnection):
    def connect(self) -> None:
        # http.client's HTTPSConnection.connect, with the handshake run as an armed call (no proxy tunnels here).
        http.client.HTTPConnection.connect(self)
        context: ssl.SSLContext = self._context  # type: ignore[attr-defined]
        sock = context.wrap_socket(self.sock, server_hostname=self.host, do_handshake_on_connect=False)
        if isinstance(sock, DeadlineSSLSocket):
            sock.arm(self._deadline, self._deadline_s, self._op_timeout())
        self.sock = sock
        sock.do_handshake()
