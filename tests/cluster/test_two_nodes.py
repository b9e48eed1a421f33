"""A real two-node Ray cluster on this machine, driven the way the README tells a user to drive one:
``ray start --head``, a second ``ray start --address`` node with its own resources, then
``RAY_ADDRESS=<head> mmcurate run workflows/demo.yaml``. The run's work ran on both nodes, and its shards equal,
byte for byte, those of the same workflow run on a local Ray.

How the test knows where work ran: each node writes its workers' logs under its own ``--temp-dir``, and a Ray
worker marks every task and actor it executes there (``:task_name:<name>`` / ``:actor_name:<name>`` lines, the
markers Ray's log monitor attributes lines by). ``ray.nodes()`` ties each node id to its temp dir (its raylet
socket lives there) and to its custom resource. Ray's state API (``ray list tasks``, ``ray.util.state``) would say
the same, but it is served by the dashboard and needs ``ray[default]``, which this project does not install.

Isolation from any other Ray on the machine: the cluster lives in its own short temp dir (Ray's unix sockets must
fit in 107 bytes, so not under pytest's tmp path; its logs are copied there at the end), on a block of ports
checked free, with token auth off (``RAY_AUTH_MODE=disabled`` for the nodes and the CLI). ``ray stop`` cannot be
scoped (it stops every Ray on the machine), so each ``ray start`` runs in a new session and teardown ends that
session's processes, Ray's workers included (they leave the process group but keep the session).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]  # a hang guard, not a speed claim

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the venv's console scripts: mmcurate and ray, as a user runs them
WORKFLOW = REPO / "workflows" / "demo.yaml"
PAGES = 25  # the smallest demo site
WORKER_PORTS = 100  # per node; a worker holds one while it lives
NODES = ("node_a", "node_b")  # the custom resource each node carries; node_a is the head (and runs the driver)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    # token auth off on both nodes and the client: no token file is written to or read from ~/.ray
    return {**env, "RAY_AUTH_MODE": "disabled", "NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "disabled",
            "PYTHONUNBUFFERED": "1", **extra}


def _port_block(n: int) -> list[int]:
    """n consecutive ports that nothing on the machine has bound, below Linux's ephemeral range (32768+, where
    outgoing connections take theirs) and above the demo server's (18000-27999)."""
    for _ in range(200):
        base = random.randrange(28000, 32768 - n)
        probes = []
        try:
            for port in range(base, base + n):
                probe = socket.socket()
                probes.append(probe)
                probe.bind(("0.0.0.0", port))
            return list(range(base, base + n))
        except OSError:
            continue
        finally:
            for probe in probes:
                probe.close()
    raise RuntimeError(f"no {n} consecutive free ports in 28000-32767")


@dataclass
class Node:
    label: str  # its custom resource
    temp_dir: Path
    session: int = 0  # sid of its `ray start`: every process of the node, workers included
    log: Path | None = None


@dataclass
class Cluster:
    root: Path
    nodes: list[Node] = field(default_factory=list)
    address: str = ""


def _start_node(cluster: Cluster, label: str, ports: Iterator[int], log_dir: Path) -> None:
    node = Node(label, cluster.root / label[-1])
    cluster.nodes.append(node)
    head = not cluster.address
    if head:
        args = ["--head", "--port", str(next(ports)), "--include-dashboard=false"]
        if _has_ray_client():  # the head would take port 10001 for its client server
            args += ["--ray-client-server-port", str(next(ports))]
    else:
        args = ["--address", cluster.address]
    workers = [next(ports) for _ in range(WORKER_PORTS)]
    args += [
        "--temp-dir", str(node.temp_dir), "--num-cpus", "1", "--resources", json.dumps({label: 1}),
        "--object-store-memory", str(512 * 2**20), "--disable-usage-stats",
        "--node-manager-port", str(next(ports)), "--object-manager-port", str(next(ports)),
        "--min-worker-port", str(workers[0]), "--max-worker-port", str(workers[-1]),
        "--dashboard-agent-listen-port", str(next(ports)), "--dashboard-agent-grpc-port", str(next(ports)),
        "--runtime-env-agent-port", str(next(ports)), "--metrics-export-port", str(next(ports)),
    ]
    node.log = log_dir / f"ray-start-{label}.log"
    with open(node.log, "w") as out:
        proc = subprocess.Popen([str(BIN / "ray"), "start", *args], env=_env(), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        node.session = proc.pid
        rc = proc.wait(timeout=180)
    assert rc == 0, f"ray start {' '.join(args)} failed:\n{node.log.read_text()[-4000:]}"
    if head:  # the address the head advertises (its node IP, not loopback), as `ray start` prints it
        cluster.address = (node.temp_dir / "ray_current_cluster").read_text().strip()


def _has_ray_client() -> bool:
    import importlib.util

    return importlib.util.find_spec("grpc") is not None  # ray[client]; without it `ray start` refuses the flag


def _session_pids(sid: int) -> list[str]:
    listed = subprocess.run(["ps", "-o", "pid=,stat=", "-s", str(sid)], capture_output=True, text=True,
                            check=False).stdout
    return [line.split()[0] for line in listed.splitlines() if not line.split()[1].startswith("Z")]


def _stop(cluster: Cluster, keep_logs: Path) -> None:
    """What `ray stop` does (SIGTERM, a grace period, then SIGKILL), to this cluster's sessions only."""
    sessions = [node.session for node in cluster.nodes if node.session > 0]  # 0 would be ps's own session
    for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 30)):
        for session in sessions:
            for pid in _session_pids(session):
                try:
                    os.kill(int(pid), sig)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace
        while any(_session_pids(session) for session in sessions) and time.monotonic() < deadline:
            time.sleep(0.2)
    left = [pid for session in sessions for pid in _session_pids(session)]
    for node in cluster.nodes:
        logs = node.temp_dir / "session_latest" / "logs"
        if logs.is_dir():
            shutil.copytree(logs, keep_logs / f"ray-logs-{node.label}", ignore_dangling_symlinks=True,
                            dirs_exist_ok=True)
    shutil.rmtree(cluster.root, ignore_errors=True)
    assert not left, f"processes of the test's cluster outlived its stop: {left}"


NODES_SCRIPT = """
import json, sys, ray
ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR")
print(json.dumps([{"id": n["NodeID"], "alive": n["Alive"], "resources": n["Resources"],
                   "raylet_socket": n["RayletSocketName"]} for n in ray.nodes()]))
"""


def _nodes(address: str) -> list[dict]:
    """``ray.nodes()`` of the cluster, from a driver of its own (this pytest process may hold a local Ray)."""
    out = subprocess.run([sys.executable, "-c", NODES_SCRIPT, address], env=_env(), capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _wait_for_both_nodes(cluster: Cluster) -> dict[str, str]:
    """{label: node id} once both nodes are alive with their resources and CPUs."""
    deadline = time.monotonic() + 60
    while True:
        alive = [n for n in _nodes(cluster.address) if n["alive"]]
        by_label = {label: n for n in alive for label in NODES if n["resources"].get(label)}
        if len(by_label) == 2 and sum(n["resources"].get("CPU", 0) for n in alive) == 2:
            break
        assert time.monotonic() < deadline, f"the cluster never had both nodes alive: {alive}"
        time.sleep(1)
    for node in cluster.nodes:  # each node id's raylet socket is under that node's own temp dir
        assert by_label[node.label]["raylet_socket"].startswith(str(node.temp_dir) + os.sep), by_label[node.label]
    return {label: n["id"] for label, n in by_label.items()}


def work_done_on(node: Node) -> Counter:
    """{task or actor name: how many of the node's worker processes executed it}, from the workers' log files
    (``worker-<worker id>-<job id>-<pid>.out|.err``; workers never given a job, job id ffffffff, are left out).
    The test's own drivers submit nothing, so every job's work here is the mmcurate run's."""
    ran: set[tuple[str, str]] = set()
    for log in (node.temp_dir / "session_latest" / "logs").glob("worker-*"):
        _, worker, job, _ = log.name.split("-", 3)
        if job == "ffffffff":
            continue
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith((":task_name:", ":actor_name:")):
                ran.add((worker, line.split(":", 2)[2]))
    return Counter(name for _, name in ran)


def _mmcurate_run(run_dir: Path, port: int, env: dict[str, str], log: Path) -> None:
    command = [str(BIN / "mmcurate"), "run", str(WORKFLOW), "--run-dir", str(run_dir),
               "--set", f"serve.demo_site.pages={PAGES}",
               # the demo derives its port from the run directory and the shards hold the URLs they came from:
               # two run directories compare only when both serve the site on one port (in turn)
               "--set", f"serve.demo_site.port={port}"]
    with open(log, "w") as out:
        proc = subprocess.run(command, cwd=run_dir.parent, env=env, stdout=out, stderr=subprocess.STDOUT,
                              timeout=600, start_new_session=True, check=False)
    tail = "\n".join(line for line in log.read_text(errors="replace").splitlines()[-80:] if "progress" not in line)
    assert proc.returncode == 0, f"{' '.join(command)} failed:\n{tail}"


def shard_files(run: Path) -> dict[str, bytes]:
    """Every shard set of the demo graph (DIR/shards/images/, DIR/shards/audio/)."""
    return {f"{folder.name}/{p.name}": p.read_bytes() for folder in sorted((run / "shards").iterdir())
            for p in sorted(folder.iterdir())}


@dataclass
class ClusterRun:
    run_dir: Path
    node_ids: dict[str, str]
    work: dict[str, Counter]


@pytest.fixture(scope="module")
def ports() -> list[int]:
    return _port_block(2 * (WORKER_PORTS + 6) + 3)  # per node: workers + 6 services; GCS, Ray client, demo site


@pytest.fixture(scope="module")
def demo_port(ports) -> int:
    return ports[-1]


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory, ports, demo_port) -> ClusterRun:
    """Start the two nodes, run the demo workflow on them through RAY_ADDRESS, read where its work ran, stop."""
    base = tmp_path_factory.mktemp("cluster")
    cluster = Cluster(Path(tempfile.mkdtemp(prefix="mmc-2n-")))
    free = iter(ports[:-1])
    try:
        for label in NODES:
            _start_node(cluster, label, free, base)
        node_ids = _wait_for_both_nodes(cluster)
        run_dir = base / "run"
        run_dir.mkdir()
        _mmcurate_run(run_dir, demo_port, _env(RAY_ADDRESS=cluster.address), base / "mmcurate.log")
        work = {node.label: work_done_on(node) for node in cluster.nodes}
        for label, names in work.items():
            print(f"{label} ({node_ids[label][:12]}): {dict(sorted(names.items()))}")
    finally:
        _stop(cluster, base)
    return ClusterRun(run_dir, node_ids, work)


def test_the_demo_workflow_runs_through_RAY_ADDRESS_with_pipeline_work_on_both_nodes(cluster_run):
    assert len(set(cluster_run.node_ids.values())) == 2
    for label in NODES:
        # MapBatches(<fn>) is Ray Data's name for the pipeline's own functions (fetch, align, write), run as tasks
        # or in actors; Ray Data's bookkeeping (file listing, footers, stats) alone would not count
        pipeline_work = [name for name in cluster_run.work[label] if "MapBatches(" in name]
        assert pipeline_work, f"no pipeline work ran on {label}: {dict(cluster_run.work[label])}"


def test_the_cluster_run_writes_the_shards_a_local_run_writes(cluster_run, demo_port, tmp_path):
    local = tmp_path / "local"
    local.mkdir()
    _mmcurate_run(local, demo_port, _env(), tmp_path / "mmcurate-local.log")  # no RAY_ADDRESS: ray.init() here
    on_cluster, here = shard_files(cluster_run.run_dir), shard_files(local)
    assert any(name.startswith("images/") and name.endswith(".tar") for name in here)
    assert any(name.startswith("audio/") and name.endswith(".tar") for name in here)
    assert sorted(on_cluster) == sorted(here)
    for name in here:
        assert on_cluster[name] == here[name], f"{name} differs between the cluster run and the local run"
