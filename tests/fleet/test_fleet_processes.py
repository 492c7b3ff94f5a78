"""Breaker state shared across real processes, on a real redis-server (otelres._fleet).

Six worker processes (fleet_processes_support.py), each with ``otelres.instrument()``,
``OTELRES_SHARED_STATE`` and a 0.2 s interval, call a real loopback HTTP upstream with
``requests`` 4 times a second and report every call, every change of their breaker's
state and of the fleet's ``connected`` flag. Against them:

- fleet-wide trip: failing calls until every process rejects, shared vs six processes
  deciding alone, in the same run;
- fleet-wide half-open: the probes the upstream receives per open period, across the fleet;
- operator control: force-open and reset reach every process within two intervals;
- redis-server stopped and started again mid-run: no call fails or slows, one warning per
  process, every process reconnects;
- gunicorn with 4 workers serving an app that calls the upstream: the workers reject after
  far fewer upstream failures than four independent breakers need.

Every wait is a bounded poll; every process is reaped, whatever happens.
"""

from __future__ import annotations

import collections
import contextlib
import importlib
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
import redis
from fleet_processes_support import MARK, Partition, Upstream

from otelres._fleet_store import FleetStore

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

# The real redis-server of the store tests (tests/ is not a package).
_STORE = str(Path(__file__).resolve().parent.parent / "store")
if _STORE not in sys.path:
    sys.path.append(_STORE)
store_servers: Any = importlib.import_module("store_servers")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SUPPORT = HERE / "fleet_processes_support.py"

PROCESSES = 6
INTERVAL = 0.2  # shared_state.interval
RATE = 4.0  # calls a second per process
MINIMUM_CALLS = 12  # breaker.minimum_calls
OPEN_SECONDS = 1.0  # breaker.open_seconds (open_backoff 1: every open period alike)
SERVICE = "fleet-processes"
STARTUP = 60.0  # bound on starting processes on a busy 2-core machine
WAIT = 15.0  # bound on waits that end as soon as the processes act

T = TypeVar("T")


def wait_for(check: Callable[[], T], timeout: float, what: str | Callable[[], str]) -> T:
    """Poll ``check`` until it returns something true, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what() if callable(what) else what}")
        time.sleep(0.02)


def worker_env(redis_url: str | None, service: str = SERVICE, minimum_calls: int = MINIMUM_CALLS) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTELRES_", "OTEL_"))}
    env |= {
        "PYTHONPATH": os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "OTEL_SERVICE_NAME": service,
        "OTELRES_RETRY_ATTEMPTS": "1",  # one call, one attempt: calls count simply
        "OTELRES_BREAKER_MINIMUM_CALLS": str(minimum_calls),
        "OTELRES_BREAKER_OPEN_SECONDS": str(OPEN_SECONDS),
        "OTELRES_BREAKER_OPEN_BACKOFF": "1",
    }
    if redis_url is not None:
        env |= {"OTELRES_SHARED_STATE": redis_url, "OTELRES_SHARED_STATE_INTERVAL": str(INTERVAL)}
    return env


class Worker:
    """One worker process: commands in on stdin, reports out on stdout, logs on stderr."""

    def __init__(self, env: dict, label: str) -> None:
        self.label = label
        self._lock = threading.Lock()
        self._reports: list[dict] = []
        self.errors: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, str(SUPPORT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=HERE,
        )
        self._readers = [
            threading.Thread(target=self._read_reports, daemon=True),
            threading.Thread(target=self._read_errors, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_reports(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith(MARK):
                report = json.loads(line[len(MARK) :])
                with self._lock:
                    self._reports.append(report)

    def _read_errors(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._lock:
                self.errors.append(line.rstrip("\n"))

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def reports(self, ev: str, url: str | None = None, since: float = 0.0) -> list[dict]:
        with self._lock:
            return [
                r
                for r in self._reports
                if r["ev"] == ev and (url is None or r.get("url") == url) and r["t"] >= since
            ]

    def last(self, ev: str, url: str | None = None) -> Any:
        found = self.reports(ev, url)
        return found[-1]["value"] if found else None

    def calls(self, url: str, since: float = 0.0) -> list[dict]:
        return self.reports("call", url, since)

    def reached(self, ev: str, value: object, since: float) -> bool:
        """Whether the worker reported ``ev`` at or after ``since`` and its last report is ``value``."""
        return bool(self.reports(ev, since=since)) and self.last(ev) == value

    def logged(self, text: str) -> int:
        with self._lock:
            return sum(text in line for line in self.errors)

    def tail(self) -> str:
        with self._lock:
            return "\n".join(self.errors[-20:])

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.send("quit")
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for reader in self._readers:
            reader.join(5)
        for pipe in (self.process.stdin, self.process.stdout, self.process.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


class Group:
    """Several workers, commanded together."""

    def __init__(self, workers: list[Worker]) -> None:
        self.workers = workers

    def target(self, url: str, rate: float) -> None:
        for w in self.workers:
            w.send(f"target {url} {rate}")

    def wait(self, check: Callable[[Worker], object], what: str, timeout: float = WAIT) -> None:
        def missing() -> str:
            late = [w for w in self.workers if not check(w)]
            logs = "\n".join(f"--- {w.label} stderr:\n{w.tail()}" for w in late)
            return f"{what}: {', '.join(w.label for w in late)}\n{logs}"

        wait_for(lambda: all(check(w) for w in self.workers), timeout, missing)

    def close(self) -> None:
        for w in self.workers:
            with contextlib.suppress(OSError, ValueError):
                w.send("quit")
        for w in self.workers:
            w.close()


def start_group(envs: list[dict], label: str, shared: bool) -> Group:
    group = Group([])
    try:
        for index, env in enumerate(envs):
            group.workers.append(Worker(env, f"{label}-{index}"))
        group.wait(lambda w: w.reports("ready"), "ready", STARTUP)
        if shared:
            group.wait(
                lambda w: w.last("connected") and w.last("processes") == PROCESSES,
                f"connected, seeing {PROCESSES} processes",
            )
    except BaseException:
        group.close()
        raise
    return group


def first_state(worker: Worker, url: str, state: str, since: float) -> float | None:
    """When the worker first reported ``state`` for ``url`` at or after ``since``."""
    for report in worker.reports("state", url, since):
        if report["value"] == state:
            return float(report["t"])
    return None


def failing_until_rejected(worker: Worker, url: str) -> int | None:
    """The calls the worker made to ``url`` before its first rejection (None: none yet)."""
    for made, call in enumerate(worker.calls(url)):
        if call["outcome"] == "rejected":
            return made
        assert call["outcome"] == "failed", call
    return None


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


def report(text: str) -> None:
    """A measured figure: printed (``pytest -s`` shows it)."""
    print(f"[fleet] {text}")  # noqa: T201 - the figures are the point


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A redis-server on loopback that keeps its data across a stop and a start."""
    server = store_servers.RedisServer(tmp_path_factory.mktemp("fleet-redis"), durable=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def redis_url(redis_server: Any) -> str:
    return f"redis://127.0.0.1:{redis_server.port}/0"


@pytest.fixture(scope="module")
def partition(redis_server: Any) -> Iterator[Partition]:
    """The first worker's way to Redis, which a test may cut (that process alone loses Redis)."""
    proxy = Partition(redis_server.port)
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.fixture(scope="module")
def fleet(redis_url: str, partition: Partition) -> Iterator[Group]:
    """Six workers sharing breaker state (the first through :func:`partition`); each test
    calls an upstream of its own.
    """
    envs = [worker_env(f"redis://127.0.0.1:{partition.port}/0")]
    envs += [worker_env(redis_url) for _ in range(PROCESSES - 1)]
    group = start_group(envs, "shared", shared=True)
    try:
        yield group
    finally:
        group.close()


@pytest.fixture
def upstreams() -> Iterator[Callable[..., Upstream]]:
    made: list[Upstream] = []

    def make(**kwargs: Any) -> Upstream:
        made.append(Upstream(**kwargs))
        return made[-1]

    try:
        yield make
    finally:
        for upstream in made:
            upstream.close()


# -- the cases ----------------------------------------------------------------------------------


def test_fleet_trips_after_far_fewer_failing_calls_than_processes_alone(
    fleet: Group, redis_url: str, upstreams: Callable[..., Upstream]
) -> None:
    """Six processes calling a dead upstream 4 times a second: with shared state the fleet
    rejects after less than half the failing calls six processes deciding alone make."""
    alone = start_group([worker_env(None)] * PROCESSES, "alone", shared=False)
    try:
        dead_shared, dead_alone = upstreams(healthy=False), upstreams(healthy=False)
        for group, upstream in ((fleet, dead_shared), (alone, dead_alone)):
            group.target(upstream.url, RATE)
        seen: dict[str, int] = {}
        for name, group, upstream in (("shared", fleet, dead_shared), ("alone", alone, dead_alone)):
            group.wait(
                lambda w, url=upstream.url: failing_until_rejected(w, url) is not None,
                f"{name}: every process rejects",
            )
            seen[name] = upstream.requests
        for group, upstream in ((fleet, dead_shared), (alone, dead_alone)):
            group.target(upstream.url, 0)
        shared = [failing_until_rejected(w, dead_shared.url) or 0 for w in fleet.workers]
        independent = [failing_until_rejected(w, dead_alone.url) or 0 for w in alone.workers]
    finally:
        alone.close()
    report(
        f"trip: failing calls until all {PROCESSES} reject: shared {sum(shared)} {shared}, "
        f"alone {sum(independent)} {independent} (upstream saw {seen['shared']} / {seen['alone']})"
    )
    # Alone, each process needs minimum_calls failures of its own.
    assert independent == [MINIMUM_CALLS] * PROCESSES
    assert seen["alone"] >= sum(independent)
    assert seen["shared"] >= sum(shared)
    assert sum(shared) < sum(independent) / 2


def test_fleet_probes_once_per_open_period_and_closes_together(
    fleet: Group, redis_server: Any, upstreams: Callable[..., Upstream]
) -> None:
    """Once the fleet opened, the upstream receives exactly half_open_calls (1) probe per
    open period across all processes; when one succeeds every process closes."""
    holder: list[Upstream] = []

    def fleet_state() -> tuple[str, int]:
        key = f"otelres:{SERVICE}:b:{holder[0].breaker}"
        state, episode = store_servers.resp(redis_server.port, "HMGET", key, "state", "episode")
        return str(state), int(episode or 0)

    upstream = upstreams(healthy=False, tag=lambda: fleet_state() if holder else None)
    holder.append(upstream)
    url = upstream.url
    fleet.target(url, RATE)
    fleet.wait(lambda w: w.last("state", url) == "open", "every process open")
    state, opened = fleet_state()
    assert state == "open"

    def later_periods() -> collections.Counter[int]:
        tags = [tag for _, tag in upstream.snapshot() if tag is not None]
        return collections.Counter(episode for state, episode in tags if state == "open" and episode > opened)

    # Two more open periods with the upstream still down: each ends with one failed probe.
    wait_for(lambda: len(later_periods()) >= 2, WAIT, lambda: f"two probes after the trip: {later_periods()}")
    upstream.healthy = True
    recovered = time.time()
    fleet.wait(lambda w: first_state(w, url, "closed", recovered), "every process closed")
    fleet.wait(lambda w: any(c["outcome"] == "ok" for c in w.calls(url, recovered)), "a good call each")
    fleet.target(url, 0)
    closed_at = max(first_state(w, url, "closed", recovered) or 0.0 for w in fleet.workers)
    probes = later_periods()
    report(
        f"half-open: probes per open period after the trip {dict(sorted(probes.items()))}; "
        f"every process closed {closed_at - recovered:.2f} s after the upstream recovered"
    )
    assert len(probes) >= 3  # two failed probes, then the one that succeeded
    assert set(probes.values()) == {1}
    assert fleet_state()[0] == "closed"


def test_force_open_and_reset_reach_every_process_within_two_intervals(
    fleet: Group, redis_server: Any, upstreams: Callable[..., Upstream]
) -> None:
    """FleetStore.control(name, 'forced_open') then 'closed': every process reports the new
    state within 2 x interval (+ a quarter interval of margin) of the command."""
    upstream = upstreams(healthy=True)
    url = upstream.url
    fleet.target(url, RATE)
    fleet.wait(lambda w: w.last("state", url) == "closed" and w.calls(url), "closed, calling")
    client = redis.Redis(host="127.0.0.1", port=redis_server.port)
    bound = 2 * INTERVAL + INTERVAL / 4
    try:
        store = FleetStore(client, SERVICE)
        delays: dict[str, list[float]] = {}
        for state, outcome in (("forced_open", "rejected"), ("closed", "ok")):
            sent = time.time()
            store.control(upstream.breaker, state)
            fleet.wait(lambda w, s=state, t=sent: first_state(w, url, s, t), f"every process {state}")
            delays[state] = [(first_state(w, url, state, sent) or 0.0) - sent for w in fleet.workers]
            fleet.wait(
                lambda w, o=outcome, s=state, t=sent: any(
                    c["outcome"] == o for c in w.calls(url, first_state(w, url, s, t) or t)
                ),
                f"a call {outcome} in every process",
            )
    finally:
        fleet.target(url, 0)
        client.close()
    report(
        "control: propagation to all processes "
        + ", ".join(f"{s} max {max(d):.3f} s (each {[round(x, 3) for x in d]})" for s, d in delays.items())
        + f"; bound {bound:.2f} s"
    )
    for state, each in delays.items():
        assert max(each) <= bound, (state, each)


class Gunicorn:
    """``gunicorn -w N`` serving fleet_processes_support's app; each worker keeps a file with
    its breaker's state in ``states``.
    """

    def __init__(self, workers: int, env: dict, directory: Path) -> None:
        self.workers = workers
        self.port = store_servers.free_port()
        self.states = directory / "states"
        self.states.mkdir()
        self.log = directory / "gunicorn.log"
        env = env | {"FLEET_STATE_DIR": str(self.states)}
        command = [sys.executable, "-m", "gunicorn", "-w", str(workers), "-b", f"127.0.0.1:{self.port}"]
        command += ["--graceful-timeout", "5", "fleet_processes_support:make_app()"]
        with self.log.open("wb") as output:
            self.process = subprocess.Popen(command, cwd=HERE, env=env, stdout=output, stderr=output)

    def read_states(self) -> list[dict]:
        found = []
        for path in self.states.glob("*.json"):
            with contextlib.suppress(OSError, ValueError):
                found.append(json.loads(path.read_text()))
        return found

    def all(self, check: Callable[[dict], bool]) -> bool:
        found = self.read_states()
        return len(found) == self.workers and all(check(s) for s in found)

    def wait_ready(self) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                log = self.log.read_text(errors="replace")
                pytest.fail(f"gunicorn exited ({self.process.returncode}):\n{log}")
            return self.all(lambda s: s["connected"] and s["processes"] == self.workers)

        wait_for(ready, STARTUP, lambda: f"{self.workers} workers connected: {self.read_states()}")

    def get(self) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            with error:
                return error.code, error.read().decode()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def test_gunicorn_workers_reject_together(
    redis_url: str, tmp_path: Path, upstreams: Callable[..., Upstream]
) -> None:
    """gunicorn -w 4 serving an app that calls a dead upstream through requests, with shared
    state: all four workers reject after far fewer upstream failures than four independent
    breakers need (4 x minimum_calls)."""
    workers, minimum = 4, 16
    upstream = upstreams(healthy=False)
    env = worker_env(redis_url, service="fleet-gunicorn", minimum_calls=minimum)
    server = Gunicorn(workers, env | {"FLEET_UPSTREAM": upstream.url}, tmp_path)
    stop = threading.Event()
    answers: list[tuple[int, str]] = []

    def load() -> None:  # one client, RATE requests a second
        while not stop.is_set():
            with contextlib.suppress(OSError):
                answers.append(server.get())
            stop.wait(1 / RATE)

    clients = [threading.Thread(target=load, daemon=True) for _ in range(workers)]
    try:
        server.wait_ready()
        for client in clients:
            client.start()
        wait_for(
            lambda: server.all(lambda s: s["state"] == "open"),
            WAIT,
            lambda: f"every worker open: {server.read_states()}",
        )
        failures = upstream.requests
        stop.set()
        for client in clients:
            client.join(10)
        after = [server.get() for _ in range(2 * workers)]
    finally:
        stop.set()
        server.stop()
    codes = collections.Counter(code for code, _ in answers)
    report(
        f"gunicorn: {failures} upstream failures until all {workers} workers rejected "
        f"(independent breakers: {workers * minimum}); app answers {dict(codes)}"
    )
    assert failures < workers * minimum / 2
    assert after == [(503, "rejected")] * len(after)
    assert codes[502] >= 1


def test_one_process_cut_off_from_redis_does_not_reopen_a_recovered_fleet(
    fleet: Group, redis_server: Any, partition: Partition, upstreams: Callable[..., Upstream]
) -> None:
    """A process with no traffic to a dependency loses Redis while the fleet is open, and the
    dependency recovers meanwhile (another process's probe closes the fleet): when it is back,
    it follows the fleet and closes; its stale open state reopens nothing."""
    upstream = upstreams(healthy=False)
    url = upstream.url
    fleet.target(url, RATE)
    fleet.wait(lambda w: w.last("state", url) == "open", "every process open")
    cut_off, *others = fleet.workers
    rest = Group(others)
    try:
        cut_off.send(f"target {url} 0")  # little traffic to this dependency: none for now
        cut = time.time()
        partition.cut()
        wait_for(lambda: cut_off.reached("connected", False, cut), WAIT, "cut off")
        upstream.healthy = True
        recovered = time.time()
        rest.wait(lambda w: first_state(w, url, "closed", recovered), "the others closed")
        assert cut_off.last("state", url) == "open"
        healed = time.time()
        partition.heal()
        wait_for(lambda: cut_off.reached("connected", True, healed), WAIT, "back")
        wait_for(lambda: first_state(cut_off, url, "closed", healed), WAIT, "the cut-off process closed")
        reopened = {w.label: first_state(w, url, "open", healed) for w in others}
        rejected = [c for w in others for c in w.calls(url, healed) if c["outcome"] != "ok"]
    finally:
        partition.heal()
        fleet.target(url, 0)
    assert reopened == dict.fromkeys(reopened)
    assert rejected == []


def test_redis_stopped_and_restarted_mid_run(
    fleet: Group, redis_server: Any, upstreams: Callable[..., Upstream]
) -> None:
    """redis-server stops and comes back while every process calls a healthy upstream: no
    call fails, none takes 0.4 s (a Redis round trip would time out at interval / 2), each
    process logs one 'shared state unreachable' warning and reconnects by itself."""
    rate = 10.0
    upstream = upstreams(healthy=True)
    url = upstream.url
    warned = [w.logged("shared state unreachable") for w in fleet.workers]
    back = [w.logged("shared state is back") for w in fleet.workers]
    fleet.target(url, rate)
    try:
        fleet.wait(lambda w: w.last("connected") and w.last("state", url) == "closed", "connected")
        start = time.time()
        fleet.wait(lambda w: len(w.calls(url, start)) >= 8, "a baseline of calls")
        down = time.time()
        redis_server.stop()
        fleet.wait(lambda w: w.reached("connected", False, down), "disconnected")
        # An outage of several intervals, every process calling through it.
        gone = time.time()
        fleet.wait(lambda w: len(w.calls(url, gone)) >= 8, "calls during the outage")
        up = time.time()
        redis_server.start()
        fleet.wait(lambda w: w.reached("connected", True, up), "reconnected")
        again = max(w.reports("connected", since=up)[-1]["t"] for w in fleet.workers)
        fleet.wait(lambda w: len(w.calls(url, again)) >= 3, "calls after reconnecting")
    finally:
        fleet.target(url, 0)
    calls = [c for w in fleet.workers for c in w.calls(url, start)]
    baseline = [c["latency"] for c in calls if c["t"] < down]
    outage = [c["latency"] for c in calls if down <= c["t"] <= again]
    report(
        f"redis outage: {len(calls)} calls, {len(outage)} while redis was down or reconnecting; "
        f"latency baseline median {ms(statistics.median(baseline))} max {ms(max(baseline))}, "
        f"outage median {ms(statistics.median(outage))} max {ms(max(outage))}; "
        f"down for {again - down:.2f} s"
    )
    assert [c for c in calls if c["outcome"] != "ok"] == []
    assert max(c["latency"] for c in calls) < 0.4
    warnings = [w.logged("shared state unreachable") - n for w, n in zip(fleet.workers, warned, strict=True)]
    backs = [w.logged("shared state is back") - n for w, n in zip(fleet.workers, back, strict=True)]
    assert (warnings, backs) == ([1] * PROCESSES, [1] * PROCESSES)
    assert all(w.last("connected") for w in fleet.workers)


def test_a_fleet_that_recovered_alone_during_an_outage_closes_when_redis_is_back(
    fleet: Group, redis_server: Any, upstreams: Callable[..., Upstream]
) -> None:
    """The fleet opens; redis-server stops; the dependency recovers and every process, deciding
    alone, probes and closes; redis-server comes back: the fleet's state closes too."""
    upstream = upstreams(healthy=False)
    url = upstream.url
    key = f"otelres:{SERVICE}:b:{upstream.breaker}"
    fleet.target(url, RATE)
    try:
        fleet.wait(lambda w: w.last("state", url) == "open", "every process open")
        down = time.time()
        redis_server.stop()
        fleet.wait(lambda w: w.reached("connected", False, down), "disconnected")
        upstream.healthy = True
        recovered = time.time()
        fleet.wait(lambda w: first_state(w, url, "closed", recovered), "every process closed alone")
        up = time.time()
        redis_server.start()
        fleet.wait(lambda w: w.reached("connected", True, up), "reconnected")
        state = wait_for(
            lambda: (store_servers.resp(redis_server.port, "HGET", key, "state") == "closed") or None,
            4 * INTERVAL + 1.0,
            lambda: f"the fleet state closed: {store_servers.resp(redis_server.port, 'HGETALL', key)}",
        )
    finally:
        fleet.target(url, 0)
    assert state
