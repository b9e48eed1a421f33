"""Polite crawling: how hard the crawler may press one host, enforced across every thread, process and node of a run.

What ``FetchConfig`` asks, for every request the guard makes (pages, media, URL-list downloads, robots.txt, and
each redirect hop, each against the host of that hop):

  per_host_concurrency  fetches in flight to one host at once. A slot is held from just before the connection is
                        made until the response is closed (or garbage-collected), or its lease expires.
  per_host_delay_s      seconds between the starts of two fetches to one host.
  Crawl-delay           the value in robots.txt for our group raises the host's delay (``respect_crawl_delay``).
                        A host asking for more than ``max_crawl_delay_s`` is not crawled: its fetches are
                        CRAWL_DELAY_TOO_LONG. We do not fetch faster than a site asked, and one site must not stall
                        the run: refusing is the only answer that keeps both.
  host_error_budget     after this many connection errors, timeouts and 5xx/429 answers *in a row* from one host
                        (any answer below 500 but 429 resets the count), its further fetches are refused before
                        connecting, HOST_FAILING, for the rest of the run. Fetches already in flight finish.
                        "In a row" is the order the gate hears outcomes in, across workers: which fetch of a dying
                        host is the first refused depends on timing.

A host is ``hostname:port`` as in the URL (``example.org:443``): robots.txt, and so Crawl-delay, is per origin, and
two ports of one name are often two services (the tests' servers are). http and https of one name are two hosts.

Where the gate lives
  * Ray running in this process (a Ray worker, or a driver after ``ray.init``): a detached async actor named
    ``mmcurate-politeness-<Ray job id>-<shard>`` in the namespace ``mmcurate``, one per shard, hosts spread over
    ``gate_shards`` shards by a stable hash. Every worker of one run is in the run's job, so they find the same
    actor by name (created by whichever asks first, ``get_if_exists``); another run is another job and another gate.
    A killed and resumed run is a new job with a fresh gate. An acquire is one actor call; a release is a call not
    waited for; a host found failing is remembered in the process and refused with no call. Measured on a 2-core
    machine under load (``ray.init(num_cpus=2)``): ~3 ms per acquire round trip; two workers of 16 threads fetching
    1 KB from one loopback host made ~375 fetches/s through the gate against ~470/s with politeness off — the cost
    is the round trip, small beside a fetch over a real network. Past one actor's few hundred to thousands of
    acquires a second, ``gate_shards`` spreads hosts over more actors. The actor exits itself once idle (no call
    and no slot held) for ``IDLE_EXIT_S``; a later call makes a new one (``RayGate`` retries once on a dead actor).
    Being detached, it outlives the pool worker that happened to create it (an owned actor would die with it).
  * No Ray: one in-process gate for the process (``LocalGate``), threads waiting on a condition variable.
Both keep the rules in ``HostTable`` (plain data, the clock passed in), so they cannot drift apart.

A worker that dies holding a slot does not hold it forever: a slot is a lease that expires when the fetch's
deadline has passed (a live fetch cannot outlast it but for an uninterruptible DNS lookup) plus ``LEASE_GRACE_S``.
Time spent waiting for a slot is not fetch time: the fetch's deadline is moved on by it (``opener.FetchClock``).
A thread waiting for a slot is a thread not fetching elsewhere: a worker whose records are mostly one slow-paced
host goes at that host's pace (URL lists shuffled across hosts keep the threads busy).
"""

from __future__ import annotations

import asyncio
import functools
import http.client
import itertools
import sys
import threading
import time
import weakref
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

from mmcurate.schemas.reasons import Reason, Rejected
from mmcurate.schemas.stage_configs import FetchConfig
from mmcurate.stages.crawl.robots import RobotsRules

Outcome = Literal["ok", "failed", "neutral"]  # neutral: nothing learnt about the host (we refused to connect)
NAMESPACE = "mmcurate"
IDLE_EXIT_S = 300.0
LEASE_GRACE_S = 2.0
_REPORT_EVERY_S = 1.0  # a steady unconstrained host's successes reach the gate this often, per process
_RECHECK_S = 1.0  # a waiter re-checks at least this often, whatever wakes it (or fails to)


def host_key(url: str) -> str:
    """``"example.org:443"`` for ``https://Example.org/x``; ``"[::1]:80"`` for ``http://[::1]/``."""
    parts = urlsplit(url)
    host = (parts.hostname or "").rstrip(".")
    try:
        port = parts.port
    except ValueError:  # a port that is not a number: the connection will fail; keep the text as the key
        return parts.netloc.rpartition("@")[2].lower()
    if port is None:
        port = 443 if parts.scheme.lower() == "https" else 80
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def host_failing(host: str, failures: int) -> Rejected:
    return Rejected(
        Reason.HOST_FAILING,
        f"{host}: {failures} connection errors, timeouts or 5xx/429 answers in a row (fetch.host_error_budget); "
        "not fetched",
    )


# ---------------------------------------------------------------------------------------------- the rules


@dataclass(frozen=True)
class HostLimits:
    concurrency: int | None  # None: no cap
    delay_s: float
    lease_s: float  # a slot not released within this is taken back


@dataclass(frozen=True)
class Granted:
    lease: int
    wait_s: float  # start the fetch this long from now (the host's delay)


@dataclass(frozen=True)
class Full:
    retry_in: float  # the earliest a slot frees by expiry; a release frees one sooner


@dataclass(frozen=True)
class Failing:
    failures: int


@dataclass
class _Host:
    leases: dict[int, float] = field(default_factory=dict)  # lease id -> expiry
    next_start: float = 0.0  # the earliest the next fetch may start
    delay_s: float = 0.0  # the largest delay a caller asked for: a Crawl-delay one worker read holds for all
    failures: int = 0  # consecutive
    failing_after: int | None = None  # the count that made the host failing; it stays failing


class HostTable:
    """Per-host slots, spacing and error counts. Not thread-safe: its gate holds a lock (or is one event loop)."""

    _PRUNE_EVERY = 4096

    def __init__(self) -> None:
        self._hosts: dict[str, _Host] = {}
        self._ids = itertools.count(1)
        self._acquires = 0

    def acquire(self, host: str, limits: HostLimits, now: float) -> Granted | Full | Failing:
        self._acquires += 1
        if self._acquires % self._PRUNE_EVERY == 0:
            self._prune(now)
        entry = self._hosts.setdefault(host, _Host())
        if entry.failing_after is not None:
            return Failing(entry.failing_after)
        for lease, expiry in list(entry.leases.items()):
            if expiry <= now:  # its holder died, or never closed its response
                del entry.leases[lease]
        if limits.concurrency is not None and len(entry.leases) >= limits.concurrency:
            return Full(max(0.0, min(entry.leases.values()) - now))
        entry.delay_s = max(entry.delay_s, limits.delay_s)
        start = max(now, entry.next_start)
        entry.next_start = start + entry.delay_s  # reserved now: waiters start in the order they were granted
        lease = next(self._ids)
        entry.leases[lease] = start + limits.lease_s
        return Granted(lease, start - now)

    def release(self, host: str, lease: int, outcome: Outcome, error_budget: int | None) -> bool:
        """Record the outcome; True when this freed a slot (it had not expired)."""
        entry = self._hosts.setdefault(host, _Host())  # an unconstrained fetch took no lease, but its outcome counts
        freed = entry.leases.pop(lease, None) is not None
        if outcome == "ok":
            entry.failures = 0
        elif outcome == "failed":
            entry.failures += 1
            if error_budget is not None and entry.failures >= error_budget and entry.failing_after is None:
                entry.failing_after = entry.failures
        return freed

    def busy(self) -> bool:
        return any(entry.leases for entry in self._hosts.values())

    def failing(self, host: str) -> int | None:
        entry = self._hosts.get(host)
        return entry.failing_after if entry is not None else None

    def _prune(self, now: float) -> None:
        """Forget hosts that would behave the same if never seen (a crawl over millions of hosts stays small)."""
        for host in [h for h, e in self._hosts.items() if not e.leases and not e.failures
                     and e.failing_after is None and e.next_start <= now]:  # fmt: skip
            del self._hosts[host]


# ---------------------------------------------------------------------------------------------- gates


@dataclass(frozen=True)
class Lease:
    host: str
    id: int


class Gate(Protocol):
    def acquire(self, host: str, limits: HostLimits) -> Lease:
        """Block until a slot is free and the host's delay has passed; raise HOST_FAILING instead of waiting."""
        ...

    def release(self, lease: Lease, outcome: Outcome, error_budget: int | None) -> None: ...


class LocalGate:
    """The gate for one process without Ray: threads share one table under a condition variable."""

    def __init__(self) -> None:
        self._table = HostTable()
        self._changed = threading.Condition()

    def acquire(self, host: str, limits: HostLimits) -> Lease:
        with self._changed:
            while True:
                decision = self._table.acquire(host, limits, time.monotonic())
                if not isinstance(decision, Full):
                    break
                self._changed.wait(min(max(decision.retry_in, 0.001), _RECHECK_S))
        if isinstance(decision, Failing):
            raise host_failing(host, decision.failures)
        if decision.wait_s > 0:
            time.sleep(decision.wait_s)
        return Lease(host, decision.lease)

    def release(self, lease: Lease, outcome: Outcome, error_budget: int | None) -> None:
        with self._changed:
            if self._table.release(lease.host, lease.id, outcome, error_budget):
                self._changed.notify()


@dataclass
class _Waiting:
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    count: int = 0


class GateActor:
    """The gate shared by every process of one Ray job (run as a detached async actor; see the module docstring)."""

    def __init__(self, idle_exit_s: float = IDLE_EXIT_S):
        self._table = HostTable()
        self._waiting: dict[str, _Waiting] = {}  # hosts with callers waiting for a slot, only while they wait
        self._idle_exit_s = idle_exit_s
        self._last_call = time.monotonic()
        self._watch: asyncio.Task[None] | None = None

    def _touch(self) -> None:
        self._last_call = time.monotonic()
        if self._watch is None:
            self._watch = asyncio.get_running_loop().create_task(self._exit_when_idle())

    async def acquire(self, host: str, limits: HostLimits) -> Granted | Failing:
        self._touch()
        decision = self._table.acquire(host, limits, time.monotonic())
        if not isinstance(decision, Full):
            return decision
        waiting = self._waiting.setdefault(host, _Waiting())
        waiting.count += 1
        try:
            async with waiting.changed:
                while True:
                    decision = self._table.acquire(host, limits, time.monotonic())
                    if not isinstance(decision, Full):
                        return decision
                    try:
                        await asyncio.wait_for(waiting.changed.wait(), min(max(decision.retry_in, 0.001), _RECHECK_S))
                    except asyncio.TimeoutError:
                        pass
        finally:
            waiting.count -= 1
            if not waiting.count:
                del self._waiting[host]

    async def release(self, host: str, lease: int, outcome: Outcome, error_budget: int | None) -> int | None:
        """Record the outcome; return the failure count that made the host failing, if it is."""
        self._touch()
        if self._table.release(host, lease, outcome, error_budget) and host in self._waiting:
            changed = self._waiting[host].changed
            async with changed:
                changed.notify()  # one slot freed: one waiter (a woken waiter that loses the race waits again)
        return self._table.failing(host)

    async def _exit_when_idle(self) -> None:
        import ray

        while True:
            await asyncio.sleep(min(30.0, self._idle_exit_s / 4))
            idle = time.monotonic() - self._last_call >= self._idle_exit_s
            if idle and not self._table.busy():
                ray.kill(ray.get_runtime_context().current_actor, no_restart=True)  # frees the name
                return


@functools.cache
def _gate_actor_class() -> Any:
    import ray

    # num_cpus=0: it waits, it does not compute; max_concurrency: callers waiting for a slot are coroutines
    return ray.remote(num_cpus=0, max_concurrency=10_000, max_restarts=0)(GateActor)


def gate_actor_name(run_id: str, shard: int) -> str:
    return f"mmcurate-politeness-{run_id}-{shard}"


class RayGate:
    """A process's client of its run's gate actors. Thread-safe; one per (run, shard count) per process."""

    def __init__(self, run_id: str, shards: int = 1, idle_exit_s: float = IDLE_EXIT_S):
        self.run_id, self.shards, self._idle_exit_s = run_id, shards, idle_exit_s
        self._actors: dict[int, Any] = {}
        self._failing: dict[str, int] = {}  # a failing host stays failing: no need to ask again
        self._reports: dict[str, Any] = {}  # host -> the latest release's answer (failing count or None), unread
        self._unsteady: set[str] = set()  # hosts whose last outcome this process reported was a failure
        self._reported_at: dict[str, float] = {}  # host -> when this process last reported an outcome
        self._lock = threading.Lock()

    def _shard(self, host: str) -> int:
        return zlib.crc32(host.encode()) % self.shards  # stable across processes, unlike hash()

    def _actor(self, shard: int, fresh: bool = False) -> Any:

        with self._lock:
            if fresh:
                self._actors.pop(shard, None)
            if shard not in self._actors:
                self._actors[shard] = _gate_actor_class().options(
                    name=gate_actor_name(self.run_id, shard), namespace=NAMESPACE, get_if_exists=True,
                    lifetime="detached",  # an owner-bound actor would die with the pool worker that made it
                ).remote(self._idle_exit_s)
            return self._actors[shard]

    def acquire(self, host: str, limits: HostLimits) -> Lease:
        import ray
        from ray.exceptions import RayActorError

        self._read_report(host)
        if host in self._failing:
            raise host_failing(host, self._failing[host])
        if limits.concurrency is None and limits.delay_s <= 0 and host not in self._unsteady:
            # nothing to wait for: no round trip to the gate. Outcomes still reach it (release); once this process
            # has seen the host fail, its fetches ask the gate again until a success, so a failing host is refused
            # after at most the fetches already in flight, not a whole second wave of them.
            return Lease(host, 0)
        shard = self._shard(host)
        try:
            decision = ray.get(self._actor(shard).acquire.remote(host, limits))
        except RayActorError:  # it exited idle (or its node went): a fresh gate, once
            decision = ray.get(self._actor(shard, fresh=True).acquire.remote(host, limits))
        if isinstance(decision, Failing):
            self._failing[host] = decision.failures
            raise host_failing(host, decision.failures)
        if decision.wait_s > 0:
            time.sleep(decision.wait_s)
        return Lease(host, decision.lease)

    def release(self, lease: Lease, outcome: Outcome, error_budget: int | None) -> None:
        now = time.monotonic()
        if lease.id == 0 and (outcome == "neutral" or (
                outcome == "ok" and lease.host not in self._unsteady
                and now - self._reported_at.get(lease.host, -_REPORT_EVERY_S) < _REPORT_EVERY_S)):
            # an unconstrained fetch holds no slot, and a success only matters to the gate to reset a run of
            # failures: after no failure of this process there is none of its own to reset, so a steady host's
            # successes are reported about once a second (each answer says whether the host became failing)
            # instead of every time (the call cost ~15% of a fetch). A run of failures ends at the next success
            # of a process that failed.
            return
        self._reported_at[lease.host] = now
        if outcome == "failed":
            self._unsteady.add(lease.host)
        elif outcome == "ok":
            self._unsteady.discard(lease.host)
        # not waited for: a lost release (dead actor) costs nothing but the lease's expiry
        answer = self._actor(self._shard(lease.host)).release.remote(lease.host, lease.id, outcome, error_budget)
        self._reports[lease.host] = answer

    def _read_report(self, host: str) -> None:
        import ray

        answer = self._reports.get(host)
        if answer is None or not ray.wait([answer], timeout=0)[0]:
            return
        self._reports.pop(host, None)
        try:
            failures = ray.get(answer)
        except Exception:  # the gate went away: its verdicts with it
            return
        if failures is not None:
            self._failing[host] = failures


_local_gate = LocalGate()
_ray_gates: dict[tuple[str, int], RayGate] = {}
_ray_gates_lock = threading.Lock()


def process_gate(shards: int = 1) -> Gate:
    """This process's gate: its Ray job's gate actors when Ray is initialised here, else the in-process gate."""
    ray = sys.modules.get("ray")  # a process that never imported Ray cannot be running it
    if ray is None or not ray.is_initialized():
        return _local_gate
    key = (ray.get_runtime_context().get_job_id(), shards)
    with _ray_gates_lock:
        if key not in _ray_gates:
            _ray_gates[key] = RayGate(*key)
        return _ray_gates[key]


# ---------------------------------------------------------------------------------------------- the guard's use


class LeasedResponse:
    """A response whose host slot is released when it is closed or garbage-collected, with its outcome: a failed
    read (reset, timeout, truncated body) turns an "ok" into "failed"."""

    def __init__(self, response: Any, outcome: Outcome, finish: Callable[[Outcome], None]):
        self._response = response
        self._outcome = [outcome]  # shared with the finalizer, which must not hold self
        self._finalizer = weakref.finalize(self, lambda box: finish(box[0]), self._outcome)
        self._finalizer.atexit = False  # a process on its way out has no use for its slots (and leases expire)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._response, name)

    def __enter__(self) -> LeasedResponse:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._response.close()
        finally:
            self._finalizer()

    def _reading(self, method: Callable[..., Any], *args: Any) -> Any:
        try:
            return method(*args)
        except (OSError, http.client.HTTPException):
            self._outcome[0] = "failed"
            raise

    def read(self, *args: Any) -> bytes:
        return self._reading(self._response.read, *args)

    def read1(self, *args: Any) -> bytes:
        return self._reading(self._response.read1, *args)

    def readinto(self, *args: Any) -> int:
        return self._reading(self._response.readinto, *args)

    def readline(self, *args: Any) -> bytes:
        return self._reading(self._response.readline, *args)


class _Clock(Protocol):
    deadline: float

    def pause(self, seconds: float) -> None: ...


def _answer_outcome(status: int) -> Outcome:
    return "failed" if status >= 500 or status == 429 else "ok"


class HostPoliteness:
    """What one opener asks of its gate: the limits for a host, a slot around each request, Crawl-delay."""

    def __init__(self, config: FetchConfig, gate: Gate | None = None):
        self.config = config
        active = (config.per_host_concurrency is not None or config.per_host_delay_s > 0
                  or config.host_error_budget is not None or config.respect_crawl_delay)  # fmt: skip
        self.gate = (gate or process_gate(config.gate_shards)) if active else None
        self._crawl_delays: dict[str, float] = {}  # host -> Crawl-delay read from its robots.txt by this opener

    def note_robots(self, url: str, rules: RobotsRules) -> None:
        """Apply the robots.txt Crawl-delay of ``url``'s host; raise CRAWL_DELAY_TOO_LONG past the cap."""
        if not self.config.respect_crawl_delay or rules.crawl_delay is None:
            return
        host = host_key(url)
        if rules.crawl_delay > self.config.max_crawl_delay_s:
            raise Rejected(
                Reason.CRAWL_DELAY_TOO_LONG,
                f"{host}: robots.txt asks Crawl-delay: {rules.crawl_delay:g} s, above fetch.max_crawl_delay_s="
                f"{self.config.max_crawl_delay_s:g}; the host is not crawled",
            )
        self._crawl_delays[host] = rules.crawl_delay

    def open(self, url: str, clock: _Clock, do_open: Callable[[], Any]) -> Any:
        """``do_open()`` with a slot for ``url``'s host held until the response is closed."""
        if self.gate is None:
            return do_open()
        gate, host, budget = self.gate, host_key(url), self.config.host_error_budget
        delay = max(self.config.per_host_delay_s, self._crawl_delays.get(host, 0.0))
        asked = time.monotonic()
        # a slot outlives the fetch's deadline only if its holder died: then it is taken back
        lease_s = max(clock.deadline - asked, 0.0) + LEASE_GRACE_S
        lease = gate.acquire(host, HostLimits(self.config.per_host_concurrency, delay, lease_s))
        clock.pause(time.monotonic() - asked)  # queueing for a slot is politeness, not the site's slowness
        try:
            response = do_open()
        except (OSError, http.client.HTTPException):  # refused, reset, timeouts (URLError is an OSError), TLS
            gate.release(lease, "failed", budget)
            raise
        except BaseException:  # Rejected: its address was refused before connecting; nothing learnt of the host
            gate.release(lease, "neutral", budget)
            raise
        return LeasedResponse(response, _answer_outcome(response.status), lambda how: gate.release(lease, how, budget))
