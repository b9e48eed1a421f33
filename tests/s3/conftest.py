"""A real S3-compatible server for the tests: moto in server mode, in its own process on a free loopback port,
one bucket, stopped at the end of the session. Clients (s3fs in this process, the mmcurate CLI in subprocesses
and its Ray workers) find it through the environment only, as they would find AWS."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from s3_helpers import KEY_ID, SECRET, free_port


@dataclass
class S3Server:
    endpoint: str
    bucket: str
    env: dict[str, str]
    log: Path

    def url(self, *parts: str) -> str:
        return "/".join([f"s3://{self.bucket}", *parts])


@pytest.fixture(scope="session")
def s3(tmp_path_factory) -> S3Server:
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=2).close()
            break
        except urllib.error.HTTPError:
            break  # it answered
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"moto server did not start:\n{log.read_text()[-2000:]}") from None
            time.sleep(0.2)
    env = {
        "AWS_ACCESS_KEY_ID": KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        import fsspec

        fs = fsspec.filesystem("s3", use_listings_cache=False)
        fs.mkdir("mmcurate-test")
        yield S3Server(endpoint, "mmcurate-test", env, log)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def s3fs_client(s3):
    import fsspec

    return fsspec.filesystem("s3", use_listings_cache=False)
