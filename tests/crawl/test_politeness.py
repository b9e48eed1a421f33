"""Polite crawling (``stages/crawl/politeness.py``): per-host concurrency, spacing, robots.txt Crawl-delay and the error
budget, as a server on 127.0.0.1 sees them — in one process (threads, the in-process gate) and across Ray worker
processes (the run's gate actor). Timing is asserted only as what the server observed: how many requests it had in
flight at once, and how far apart their arrivals were; every test that waits has a hang guard."""

from __future__ import annotations

import itertools
import socket
import sys
import threading
import time
import urllib.request
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mmcurate.schemas.reasons import Reason, Rejected
from mmcurate.schemas.record import empty_record
from mmcurate.schemas.stage_configs import CrawlConfig, FetchConfig, UrlListInput
from mmcurate.stages.crawl.fetch import Fetcher
from mmcurate.stages.crawl.politeness import (
    NAMESPACE,
    Failing,
    Full,
    Granted,
    HostLimits,
    HostTable,
    LocalGate,
    RayGate,
    gate_actor_name,
    host_key,
)
from mmcurate.stages.crawl.robots import RobotsRules
from mmcurate.stages.crawl.url_list import UrlListDownloader

LOCAL = ("127.0.0.0/8",)
PAIR_WAIT_S = 2.0


class RecordingServer:
    """Answers on 127.0.0.1 and records, per request, its arrival time and path, and the most requests it had in
    flight at once. A request is in flight from its arrival until the server starts its answer — inside the
    client's slot, which is taken before connecting and given back after the answer is read.

    /robots.txt   ``self.robots`` (404 when None)
    /ok           200
    /fail         500
    /pair         200, once a second request is in flight too (or after PAIR_WAIT_S): if two may overlap, they do
    /hold         200 after ``hold_s``
    /stall        says nothing for 5 s (a read timeout for the client)
    """

    def __init__(self, robots: str | None = None, hold_s: float = 0.0):
        self.robots, self.hold_s = robots, hold_s
        self.arrivals: list[tuple[float, str]] = []
        self.in_flight = self.max_in_flight = 0
        self.changed = threading.Condition()
        self.stopping = threading.Event()
        server = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                path = self.path.split("?", 1)[0]
                with server.changed:
                    server.arrivals.append((time.monotonic(), self.path))
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    server.changed.notify_all()
                    if path == "/pair":
                        server.changed.wait_for(lambda: server.in_flight >= 2 or server.stopping.is_set(), PAIR_WAIT_S)
                if path == "/hold":
                    server.stopping.wait(server.hold_s)
                if path == "/stall":
                    server.stopping.wait(5)
                with server.changed:
                    server.in_flight -= 1  # before the answer: the client cannot have it (and free its slot) yet
                status, body = 200, b"ok"
                if path == "/robots.txt":
                    status, body = (404, b"") if server.robots is None else (200, server.robots.encode())
                elif path == "/fail":
                    status, body = 500, b"down"
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def paths(self) -> list[str]:
        return [path for _, path in self.arrivals]

    def gaps(self, prefix: str) -> list[float]:
        """Seconds between consecutive arrivals of requests whose path starts with ``prefix``."""
        times = sorted(t for t, path in self.arrivals if path.startswith(prefix))
        return [later - earlier for earlier, later in itertools.pairwise(times)]

    def stop(self) -> None:
        self.stopping.set()
        with self.changed:
            self.changed.notify_all()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def servers():
    made: list[RecordingServer] = []

    def make(**kwargs) -> RecordingServer:
        made.append(RecordingServer(**kwargs))
        return made[-1]

    yield make
    for server in made:
        server.stop()


def fetcher(gate=None, **overrides) -> Fetcher:
    return Fetcher(FetchConfig(allow_networks=LOCAL, **overrides), gate=gate or LocalGate())


def rejection(fetch: Fetcher, url: str) -> Rejected:
    with pytest.raises(Rejected) as caught:
        fetch.fetch(url)
    return caught.value


def fetch_in_threads(fetch: Fetcher, urls: list[str], threads: int) -> list[bytes]:
    with ThreadPoolExecutor(threads) as pool:
        return [result.body for result in pool.map(fetch.fetch, urls)]


# ---------------------------------------------------------------------------------------------- the rules, by clock


def test_a_host_gets_at_most_its_concurrency_and_a_release_frees_a_slot():
    table, limits = HostTable(), HostLimits(concurrency=2, delay_s=0.0, lease_s=60)
    first, second = table.acquire("h:80", limits, now=0), table.acquire("h:80", limits, now=0)
    assert isinstance(first, Granted) and isinstance(second, Granted)
    assert isinstance(table.acquire("h:80", limits, now=1), Full)
    assert isinstance(table.acquire("other:80", limits, now=1), Granted)  # another host is not affected
    assert table.release("h:80", first.lease, "ok", error_budget=None)
    assert isinstance(table.acquire("h:80", limits, now=1), Granted)


def test_starts_are_reserved_a_delay_apart_in_the_order_asked():
    table, limits = HostTable(), HostLimits(concurrency=None, delay_s=0.5, lease_s=60)
    waits = [table.acquire("h:80", limits, now=10.0).wait_s for _ in range(3)]
    assert waits == [0.0, 0.5, 1.0]
    assert table.acquire("h:80", limits, now=12.0).wait_s == 0.0  # long after the last reserved start


def test_the_largest_delay_asked_for_a_host_holds_for_every_caller():
    table = HostTable()
    table.acquire("h:80", HostLimits(None, delay_s=2.0, lease_s=60), now=0)  # a worker that read Crawl-delay: 2
    later = table.acquire("h:80", HostLimits(None, delay_s=0.0, lease_s=60), now=0)  # one that has not yet
    assert later.wait_s == 2.0


def test_a_slot_whose_holder_never_releases_it_is_taken_back_when_its_lease_expires():
    table, limits = HostTable(), HostLimits(concurrency=1, delay_s=0.0, lease_s=5.0)
    held = table.acquire("h:80", limits, now=0)
    assert isinstance(table.acquire("h:80", limits, now=4.9), Full)
    assert isinstance(table.acquire("h:80", limits, now=5.0), Granted)
    assert not table.release("h:80", held.lease, "ok", None)  # the late release of an expired lease frees nothing


def test_a_host_fails_after_its_budget_of_failures_in_a_row_and_a_success_resets_the_count():
    table, limits = HostTable(), HostLimits(concurrency=None, delay_s=0.0, lease_s=60)

    def fetch(outcome: str) -> None:
        table.release("h:80", table.acquire("h:80", limits, now=0).lease, outcome, error_budget=3)

    for outcome in ("failed", "failed", "ok", "failed", "neutral", "failed"):  # neutral neither counts nor resets
        fetch(outcome)
    assert isinstance(table.acquire("h:80", limits, now=0), Granted)
    fetch("failed")
    assert table.acquire("h:80", limits, now=0) == Failing(3)
    assert isinstance(table.acquire("other:80", limits, now=0), Granted)


def test_a_host_is_its_name_and_port():
    assert host_key("https://Example.org./a") == "example.org:443"
    assert host_key("http://example.org/a") == "example.org:80"
    assert host_key("http://user@example.org:8080/a") == "example.org:8080"
    assert host_key("http://[::1]/") == "[::1]:80"


def test_crawl_delay_is_read_from_our_group_else_the_catch_all_group():
    ours = "User-agent: mmcurate\nCrawl-delay: 2\nDisallow: /x\n\nUser-agent: *\nCrawl-delay: 50\n"
    assert RobotsRules.parse(ours, "mmcurate").crawl_delay == 2.0
    assert RobotsRules.parse(ours, "otherbot").crawl_delay == 50.0
    merged = "User-agent: mmcurate\nCrawl-delay: 1\n\nUser-agent: mmcurate\nCrawl-delay: 3.5\n"
    assert RobotsRules.parse(merged, "mmcurate").crawl_delay == 3.5
    for junk in ("soon", "-1", "nan", "inf", ""):
        assert RobotsRules.parse(f"User-agent: *\nCrawl-delay: {junk}\n", "mmcurate").crawl_delay is None
    assert RobotsRules.parse("User-agent: *\nDisallow: /x\n", "mmcurate").crawl_delay is None


def test_the_politeness_fields_are_validated():
    import pydantic

    for bad in ({"per_host_concurrency": 0}, {"per_host_delay_s": -1}, {"host_error_budget": 0},
                {"max_crawl_delay_s": -0.5}, {"gate_shards": 0}):  # fmt: skip
        with pytest.raises(pydantic.ValidationError):
            FetchConfig(**bad)
    assert FetchConfig(per_host_concurrency=None, host_error_budget=None).per_host_concurrency is None


# ---------------------------------------------------------------------------------------------- one process, threads


@pytest.mark.timeout(60)
def test_eight_threads_never_have_more_than_per_host_concurrency_requests_in_flight(servers):
    server = servers()
    fetch = fetcher(per_host_concurrency=2)
    bodies = fetch_in_threads(fetch, [server.url(f"/pair?n={i}") for i in range(16)], threads=8)
    assert bodies == [b"ok"] * 16
    assert server.max_in_flight == 2  # the /pair route holds each request until a second one is in flight


@pytest.mark.timeout(60)
def test_fetch_starts_to_one_host_are_spaced_by_per_host_delay(servers):
    server = servers()
    fetch_in_threads(fetcher(per_host_delay_s=0.4), [server.url(f"/ok?n={i}") for i in range(6)], threads=4)
    gaps = server.gaps("/")  # robots.txt counts as a fetch to the host too
    assert len(gaps) >= 6 and min(gaps) >= 0.4 * 0.75, gaps
    assert server.max_in_flight == 1


@pytest.mark.timeout(60)
def test_a_robots_txt_crawl_delay_spaces_the_hosts_fetches(servers):
    server = servers(robots="User-agent: mmcurate\nCrawl-delay: 0.4\n\nUser-agent: *\nCrawl-delay: 50\n")
    fetch_in_threads(fetcher(), [server.url(f"/ok?n={i}") for i in range(5)], threads=3)
    gaps = server.gaps("/ok")
    assert len(gaps) == 4 and min(gaps) >= 0.4 * 0.75, gaps


@pytest.mark.timeout(30)
def test_a_crawl_delay_above_the_cap_refuses_the_host_unless_crawl_delay_is_not_respected(servers):
    server = servers(robots="User-agent: *\nCrawl-delay: 3600\n")
    refused = rejection(fetcher(max_crawl_delay_s=10), server.url("/ok"))
    assert refused.reason == Reason.CRAWL_DELAY_TOO_LONG.value
    assert f"127.0.0.1:{server.port}" in refused.detail and "3600" in refused.detail
    assert server.paths() == ["/robots.txt"]  # the page was never asked for
    assert fetcher(respect_crawl_delay=False).fetch(server.url("/ok")).body == b"ok"


@pytest.mark.timeout(30)
def test_a_failing_host_is_refused_after_its_budget_and_a_healthy_host_beside_it_is_not(servers):
    failing, healthy = servers(), servers()
    fetch = fetcher(host_error_budget=3)
    for _ in range(3):
        assert rejection(fetch, failing.url("/fail")).reason == Reason.HTTP_ERROR.value
    refused = rejection(fetch, failing.url("/fail"))
    assert refused.reason == Reason.HOST_FAILING.value
    assert f"127.0.0.1:{failing.port}: 3 " in refused.detail
    assert failing.paths().count("/fail") == 3  # the refused fetch sent nothing
    assert rejection(fetch, failing.url("/ok")).reason == Reason.HOST_FAILING.value  # the host, not the URL
    assert fetch.fetch(healthy.url("/ok")).body == b"ok"  # another port is another host


@pytest.mark.timeout(30)
def test_a_success_between_failures_keeps_the_host(servers):
    server = servers()
    fetch = fetcher(host_error_budget=3)
    for path in ("/fail", "/fail", "/ok", "/fail", "/fail", "/ok"):
        try:
            fetch.fetch(server.url(path))
        except Rejected as refused:
            assert refused.reason == Reason.HTTP_ERROR.value


@pytest.mark.timeout(30)
def test_connection_errors_and_timeouts_spend_the_error_budget(servers):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    try:
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/x"
        fetch = fetcher(host_error_budget=2, respect_robots=False)
        assert [rejection(fetch, url).reason for _ in range(3)] == ["connection_error", "connection_error",
                                                                    "host_failing"]  # fmt: skip
    finally:
        closed.close()
    server = servers()
    fetch = fetcher(host_error_budget=1, respect_robots=False, timeout_s=0.2)
    assert [rejection(fetch, server.url("/stall")).reason for _ in range(2)] == ["timeout", "host_failing"]


@pytest.mark.timeout(30)
def test_time_queued_for_a_slot_does_not_count_against_the_fetch_deadline(servers):
    server = servers(hold_s=0.6)
    fetch = fetcher(per_host_concurrency=1, deadline_s=1.0, respect_robots=False)
    # the second fetch waits ~0.6 s for the first, then takes ~0.6 s itself: 1.2 s > deadline_s, yet not a timeout
    assert fetch_in_threads(fetch, [server.url("/hold?n=1"), server.url("/hold?n=2")], threads=2) == [b"ok", b"ok"]
    assert server.max_in_flight == 1


@pytest.mark.timeout(30)
def test_a_slot_held_by_a_fetch_that_never_ends_is_free_again_after_its_lease():
    gate, limits = LocalGate(), HostLimits(concurrency=1, delay_s=0.0, lease_s=0.3)
    gate.acquire("h:80", limits)  # never released, as by a worker that died
    gate.acquire("h:80", limits)  # returns once the first lease has expired (the hang guard says if not)


@pytest.fixture
def url_list_downloader():
    previous = urllib.request._opener  # type: ignore[attr-defined]

    def build(**fetch) -> UrlListDownloader:
        config = CrawlConfig(url_lists=(UrlListInput(path="unused.csv"),), fetch=FetchConfig(**fetch))
        stage = UrlListDownloader(config, "crawl")
        stage.setup()  # installs the guard as the process's urllib opener, as in a Ray worker
        return stage

    yield build
    urllib.request.install_opener(previous)


@pytest.mark.timeout(30)
def test_url_list_downloads_through_img2dataset_spend_the_same_budget(servers, url_list_downloader):
    server = servers()
    stage = url_list_downloader(allow_networks=LOCAL, host_error_budget=2)
    reasons = []
    for _ in range(3):
        record = empty_record(key="k", source="url_list", url=server.url("/fail"), image_url=server.url("/fail"))
        with pytest.raises(Rejected) as caught:
            stage.process(record)
        reasons.append(caught.value.reason)
    assert reasons == ["http_error", "http_error", "host_failing"]
    assert server.paths().count("/fail") == 2


# ---------------------------------------------------------------------------------------------- across Ray processes


class FetchWorker:
    """A Ray actor fetching with its own Fetcher (so its own process's gate client), in threads."""

    def __init__(self, **config):
        import os

        self.fetcher = Fetcher(FetchConfig(allow_networks=LOCAL, **config))
        self.pid = os.getpid()

    def fetch_all(self, urls: list[str], threads: int) -> tuple[int, list[str]]:
        def one(url: str) -> str:
            try:
                return self.fetcher.fetch(url).body.decode()
            except Rejected as refused:
                return refused.reason

        with ThreadPoolExecutor(threads) as pool:
            return self.pid, list(pool.map(one, urls))

    def hold_a_slot(self, host: str, lease_s: float) -> None:
        from mmcurate.stages.crawl.politeness import process_gate

        process_gate().acquire(host, HostLimits(concurrency=1, delay_s=0.0, lease_s=lease_s))


@pytest.fixture(scope="module")
def ray_workers(ray_session):
    ray = ray_session
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # tests/ is not importable in workers
    actor = ray.remote(num_cpus=0, max_concurrency=4)(FetchWorker)

    def make(n: int, **config) -> list:
        return [actor.remote(**config) for _ in range(n)]

    yield make


def run_on(workers: list, jobs: list[tuple[list[str], int]]) -> list[tuple[int, list[str]]]:
    import ray

    return ray.get([worker.fetch_all.remote(urls, threads) for worker, (urls, threads) in zip(workers, jobs)])


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_two_worker_processes_share_one_hosts_concurrency(servers, ray_workers):
    import ray

    server = servers()
    workers = ray_workers(2, per_host_concurrency=2, gate_shards=3)
    results = run_on(workers, [([server.url(f"/pair?w={w}&n={i}") for i in range(6)], 4) for w in range(2)])
    assert len({pid for pid, _ in results}) == 2
    assert [bodies for _, bodies in results] == [["ok"] * 6] * 2
    assert server.max_in_flight == 2
    # the run's gate for this host: the actor of its shard, found by name (the run is the Ray job)
    shard = zlib.crc32(f"127.0.0.1:{server.port}".encode()) % 3
    assert ray.get_actor(gate_actor_name(ray.get_runtime_context().get_job_id(), shard), namespace=NAMESPACE)


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_two_worker_processes_share_one_hosts_delay_and_error_budget(servers, ray_workers):
    server = servers()
    workers = ray_workers(2, per_host_delay_s=0.5, host_error_budget=2)
    run_on(workers, [([server.url(f"/ok?w={w}&n={i}") for i in range(3)], 3) for w in range(2)])
    gaps = server.gaps("/ok")
    assert len(gaps) == 5 and min(gaps) >= 0.5 * 0.6, gaps
    # one worker spends the host's budget; the other is refused without a request reaching the server
    (_, first), = run_on(workers[:1], [([server.url("/fail"), server.url("/fail")], 1)])
    (_, second), = run_on(workers[1:], [([server.url("/fail"), server.url("/ok?after")], 1)])
    assert first == ["http_error", "http_error"] and second == ["host_failing", "host_failing"]
    assert server.paths().count("/fail") == 2 and "/ok?after" not in server.paths()


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_an_unconstrained_host_asks_the_gate_nothing_but_still_spends_one_error_budget(servers, ray_workers):
    """No cap and no delay: fetches skip the gate's round trip; outcomes still reach it, and a worker learns that
    the host is failing from the answer to one of its own releases (a few fetches late, never never)."""
    server = servers()
    workers = ray_workers(2, per_host_concurrency=None, host_error_budget=2, respect_robots=False)
    (_, first), = run_on(workers[:1], [([server.url("/fail"), server.url("/fail")], 1)])
    assert first == ["http_error", "http_error"]
    # its first success is reported (nothing reported for the host in the last second): the answer says failing
    (_, second), = run_on(workers[1:], [([server.url(f"/ok?after={i}") for i in range(8)], 1)])
    assert second[0] == "ok" and second[-3:] == ["host_failing"] * 3, second
    assert server.paths().count("/fail") == 2


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_a_slot_held_by_a_killed_worker_is_free_again_after_its_lease(ray_workers):
    import ray

    from mmcurate.stages.crawl.politeness import process_gate

    host = f"dies-holding-a-slot-{uuid.uuid4().hex[:8]}:80"
    (worker,) = ray_workers(1)
    ray.get(worker.hold_a_slot.remote(host, 2.0))
    ray.kill(worker)
    process_gate().acquire(host, HostLimits(concurrency=1, delay_s=0.0, lease_s=1.0))  # after the lease expired


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_an_idle_gate_actor_exits_and_a_later_fetch_makes_a_new_one(ray_session):
    ray = ray_session
    run_id = f"idle-{uuid.uuid4().hex[:8]}"
    gate, limits = RayGate(run_id, shards=1, idle_exit_s=1.0), HostLimits(2, 0.0, 10.0)
    gate.release(gate.acquire("h:80", limits), "ok", None)
    name = gate_actor_name(run_id, 0)
    assert ray.get_actor(name, namespace=NAMESPACE)
    while True:  # gone once idle (the hang guard fails the test if it never goes)
        try:
            ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            break
        time.sleep(0.2)
    gate.release(gate.acquire("h:80", limits), "ok", None)  # the client notices and makes a fresh gate
    assert ray.get_actor(name, namespace=NAMESPACE)
