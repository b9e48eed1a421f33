"""Shared fixtures. Unit tests never start Ray; integration tests share one session-scoped Ray runtime."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("WANDB_MODE", "disabled")


# Label Studio phones home by default (Sentry error reports, a version check, usage analytics); tests stay on
# 127.0.0.1. .ci/run sets the same for the server it starts.
LABEL_STUDIO_OFFLINE = {"LABEL_STUDIO_SENTRY_DSN": "", "LABEL_STUDIO_FRONTEND_SENTRY_DSN": "",
                        "LABEL_STUDIO_LATEST_VERSION_CHECK": "false", "LABEL_STUDIO_COLLECT_ANALYTICS": "false"}


# pytest-xdist (two workers: pyproject.toml's addopts) gets whole modules (--dist loadgroup): their module- and
# session-scoped fixtures (a demo run, an installed wheel, a Ray session) are built once. The filter demo run is
# shared by two modules, so they form one group, in file order. The longest groups are handed out first, so that
# the last one to start is a short one.
SHARED_GROUPS = {"tests/e2e/test_filter_ground_truth.py": "filter_demo", "tests/e2e/test_label_round_trip.py": "filter_demo"}
LONG_FIRST = ("filter_demo", "tests/e2e/test_user_path.py", "tests/s3/test_s3_run_dir.py", "tests/dag/test_dag_cli.py",
              "tests/cluster/test_two_nodes.py", "tests/train/test_train_ray.py", "tests/pii/test_raw_text_purge.py",
              "tests/train/test_driver_kill.py", "tests/models/test_train_filter.py", "tests/dedupe/test_dedupe_demo_ground_truth.py")


def _group(item) -> str:
    module = item.nodeid.split("::", 1)[0]
    return SHARED_GROUPS.get(module, module)


def pytest_itemcollected(item):
    # here, not in pytest_collection_modifyitems: xdist's worker reads the groups in that hook, ahead of a conftest's
    item.add_marker(pytest.mark.xdist_group(_group(item)))


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    order = {id(item): i for i, item in enumerate(items)}
    items.sort(key=lambda item: (rank.get(_group(item), len(rank)), order[id(item)]))


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray runtime for every integration test in the session (starting one costs ~5 s here)."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            _temp_dir="/tmp/ray-mmcurate-tests",
            log_to_driver=False,
            configure_logging=False,
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory):
    """A Label Studio server as ``(url, token)``: the one ``$LABEL_STUDIO_URL`` and ``$LABEL_STUDIO_API_KEY`` name
    (``.ci/run`` starts it in the background while the suite runs: waited on through ``/health``), else one started
    here from ``$LABEL_STUDIO_BIN`` (default: ``.ls-venv/bin/label-studio`` at the repository root, then
    ``label-studio`` on PATH) on 127.0.0.1 with a legacy token. Neither: the test fails, it does not skip."""
    import secrets
    import shutil
    import signal
    import socket
    import subprocess
    import time
    import urllib.request
    from pathlib import Path

    def ready(url: str, token: str, deadline_s: float) -> str | None:
        deadline, last = time.monotonic() + deadline_s, "no answer"
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=5).read()
                request = urllib.request.Request(f"{url}/api/projects?page_size=1",
                                                 headers={"Authorization": f"Token {token}"})
                urllib.request.urlopen(request, timeout=10).read()
                return None
            except OSError as err:  # refused while it starts; 401 if the token is not (yet) accepted
                last = f"{type(err).__name__}: {err}"
                time.sleep(1)
        return last

    url, token = os.environ.get("LABEL_STUDIO_URL"), os.environ.get("LABEL_STUDIO_API_KEY")
    if url and token:
        problem = ready(url.rstrip("/"), token, float(os.environ.get("LABEL_STUDIO_WAIT_S", "600")))
        if problem:
            pytest.fail(f"Label Studio at {url} is not ready: {problem}")
        yield url.rstrip("/"), token
        return
    root = Path(__file__).resolve().parent.parent
    binary = os.environ.get("LABEL_STUDIO_BIN") or next(
        (str(p) for p in (root / ".ls-venv" / "bin" / "label-studio",) if p.exists()), None) or shutil.which("label-studio")
    if not binary:
        pytest.fail("no Label Studio server: set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY, or LABEL_STUDIO_BIN, or "
                    "install it beside the project: python3 -m venv .ls-venv && .ls-venv/bin/pip install label-studio")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = tmp_path_factory.mktemp("label-studio")
    token = secrets.token_hex(20)
    # the token and password in the environment (LABEL_STUDIO_USER_TOKEN/_PASSWORD), not argv
    env = {**os.environ, **LABEL_STUDIO_OFFLINE, "LABEL_STUDIO_BASE_DATA_DIR": str(data),
           "LABEL_STUDIO_USER_TOKEN": token, "LABEL_STUDIO_PASSWORD": secrets.token_hex(12)}
    log = open(data / "server.log", "wb")
    server = subprocess.Popen(
        [binary, "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port), "--username",
         "ci@example.com", "--enable-legacy-api-token"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        problem = ready(url, token, 600)
        if problem:
            pytest.fail(f"Label Studio started from {binary} is not ready: {problem}\n"
                        f"{(data / 'server.log').read_text(errors='replace')[-3000:]}")
        yield url, token
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()
