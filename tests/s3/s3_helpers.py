"""Constants and helpers shared by tests/s3 and its conftest."""

from __future__ import annotations

import socket

# distinctive dummy credentials: tests/s3 checks that neither ever appears in what a run writes or prints
KEY_ID = "MMCURATETESTKEYID0042"
SECRET = "mmcurate-test-secret-7f3a9c-never-written"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
