"""Breaker state shared across processes, what it costs: ``python benchmarks/fleet.py [--quick]``.

Starts a redis-server of its own on loopback (``redis-server`` must be installed), then:

1. success path      a trivial function through otelres ``Resilience`` (a breaker of the default
                     registry), with shared state off and on (a live fleet thread syncing with the
                     redis-server every 1 s), interleaved rounds of ~2 intervals each
2. background cost   the fleet thread's CPU time per sync (``time.thread_time`` around each round,
                     inside the thread) with 1, 10 and 100 breakers, and what it makes per second at
                     the default 1 s interval
3. round trip        one sync (``FleetStore.sync``: the script, its answer parsed), wall time, and
                     the redis-server's own time per sync (``INFO commandstats``), for 1, 10 and 100
                     breakers with 1, 10 and 100 live processes in the fleet

See benchmarks/README.md ("Shared state") for the method and the latest figures.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import TYPE_CHECKING, Any

import _harness as h
import redis

import otelres
from otelres import BreakerPolicy, CircuitBreaker, SharedState, _events
from otelres._fleet import Fleet, redis_client
from otelres._fleet_store import FleetStore, Published

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

Contender = h.Contender

#: The default shared_state.interval: what the success path and the per-second figures assume.
INTERVAL = 1.0
SERVICE = "bench-fleet"
START_TIMEOUT = 10.0


def target() -> int:
    return 1


# -- a redis-server of the run's own ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def redis_server() -> Iterator[tuple[str, str]]:
    """A redis-server on 127.0.0.1 (nothing written to disk), stopped on the way out;
    yields its URL and version.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="otelres-bench-redis-") as directory:
        command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", directory]
        command += ["--save", "", "--appendonly", "no"]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        watchdog = threading.Timer(START_TIMEOUT, process.kill)
        watchdog.start()
        try:
            assert process.stdout is not None
            for line in process.stdout:
                if "Ready to accept connections" in line:
                    break
            else:
                raise SystemExit("redis-server did not start")
            watchdog.cancel()
            # Keep reading its log so that the pipe never fills up.
            threading.Thread(target=process.stdout.read, daemon=True).start()
            client = redis.Redis(host="127.0.0.1", port=port)
            version = str(client.info("server")["redis_version"])
            client.close()
            yield f"redis://127.0.0.1:{port}/0", version
        finally:
            watchdog.cancel()
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=START_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# -- 1. the success path, shared state on vs off ------------------------------------------------------


class LiveFleet:
    """A fleet member publishing the default registry's breakers, on its own thread, only
    around the runs of the "on" contender; it counts the syncs that fall inside each run.
    """

    def __init__(self, url: str) -> None:
        self.config = SharedState(url, interval=INTERVAL, service=SERVICE)
        self.fleet: Fleet | None = None
        self.syncs: list[float] = []  # when each sync of the current fleet ended
        self.per_run: list[int] = []
        self._run_started = 0.0

    def start(self) -> None:
        fleet = Fleet(self.config)
        plain = fleet.sync_once

        def counted() -> bool:
            ok = plain()
            self.syncs.append(time.perf_counter())
            return ok

        fleet.sync_once = counted  # type: ignore[method-assign]
        self.syncs = []
        fleet.start()
        self.fleet = fleet
        deadline = time.monotonic() + 5.0
        while not (fleet.connected and fleet.views):
            if time.monotonic() > deadline:
                raise RuntimeError("the fleet did not connect to the redis-server within 5 s")
            time.sleep(0.005)
        self._run_started = time.perf_counter()

    def stop(self) -> None:
        fleet, self.fleet = self.fleet, None
        if fleet is not None:
            fleet.stop()
            self.per_run.append(sum(1 for t in self.syncs if t > self._run_started))


def path_success(url: str, registry_breakers: int) -> tuple[list[Contender], LiveFleet]:
    live = LiveFleet(url)
    off = otelres.Resilience("https://shared-off.bench.example:443")
    on = otelres.Resilience("https://shared-on.bench.example:443")
    for i in range(registry_breakers - 2):  # idle breakers the fleet publishes too
        otelres.default_registry().get(f"https://idle-{i}.bench.example:443")
    for res in (off, on):
        if res(target)() != 1 or not res.guard.enabled:
            raise RuntimeError("otelres is disabled by OTELRES_* settings; unset them")
    contenders = [
        Contender("otelres Resilience, shared state off", h.OTELRES, loop(off(target))),
        Contender(
            f"otelres Resilience, shared state on (syncs every {INTERVAL:g} s)",
            h.OTELRES,
            loop(on(target)),
            before_round=live.start,
            after_round=live.stop,
        ),
    ]
    return contenders, live


def loop(fn: Callable[[], Any]) -> Callable[[int], None]:
    def run(n: int) -> None:
        for _ in range(n):
            fn()

    return run


def run_success(args: argparse.Namespace, url: str) -> float:
    print("\n### success path, shared state on vs off\n")
    print(
        f"A trivial function through otelres Resilience (a breaker of the default registry, with "
        f"{args.registry} breakers in it), shared state off, and on: a fleet member publishing every "
        f"registry breaker to the redis-server and reading the fleet's view every {INTERVAL:g} s, on its "
        f"own thread, started before each of its runs and stopped after (outside the timing). Each run "
        f"lasts ~{args.success_target:g} s, two intervals: it holds the syncs that much work holds (one "
        f"interval would not do: the machine's speed varies, and a run may end before its sync).\n"
    )
    contenders, live = path_success(url, args.registry)
    h.measure(contenders, args.rounds, args.success_target, args.seed)
    off, on = contenders
    rows = []
    for c in contenders:
        ratio = c.median / off.median
        rows.append(
            [
                c.name,
                h.fmt_ns(c.median),
                f"{h.spread(c.samples) * 100:.0f}%",
                h.fmt_ns(c.best),
                h.fmt_ratio(ratio),
            ]
        )
    print(h.table(["contender", "median ns/call", "IQR", "min ns", "x off"], rows))
    ratio = on.median / off.median
    counts = live.per_run[1:]  # the first is the calibration's
    paired = statistics.median(a / b for a, b in zip(on.samples, off.samples, strict=True))
    print(
        f"\nsyncs inside each 'on' run: {', '.join(map(str, counts))} (each run ~{args.success_target:g} s); "
        f"on / off: {ratio:.3f} (medians), {paired:.3f} (median of the rounds' own ratios), "
        f"{on.best / off.best:.3f} (fastest rounds)"
    )
    return ratio


# -- 2. the background cost ---------------------------------------------------------------------------


def breakers_with_windows(count: int) -> list[CircuitBreaker]:
    """``count`` breakers with something in their windows (what a busy process publishes)."""
    policy = BreakerPolicy(minimum_calls=1000)
    made = []
    for i in range(count):
        b = CircuitBreaker(f"https://dependency-{i:03d}.bench.example:443", policy)
        for k in range(20):
            token = b.acquire()
            b.record(token, k % 5 == 0, time.monotonic())
        made.append(b)
    return made


def thread_cost(url: str, count: int, seconds: float) -> tuple[list[float], list[float]]:
    """CPU time (s) and wall time (s) of each sync of a real fleet thread publishing ``count``
    breakers, measured inside the thread; the thread runs every 0.05 s for ``seconds``.
    """
    breakers = breakers_with_windows(count)
    fleet = Fleet(
        SharedState(url, interval=0.05, service=f"{SERVICE}-cost-{count}"), breakers=lambda: breakers
    )
    cpu: list[float] = []
    wall: list[float] = []
    plain = fleet.sync_once

    def measured() -> bool:
        c0, w0 = time.thread_time(), time.perf_counter()
        ok = plain()
        cpu.append(time.thread_time() - c0)
        wall.append(time.perf_counter() - w0)
        if not ok:
            raise RuntimeError("a sync failed")
        return ok

    fleet.sync_once = measured  # type: ignore[method-assign]
    fleet.start()
    try:
        time.sleep(seconds)
    finally:
        fleet.stop()
    return cpu[2:], wall[2:]  # the first rounds connect and load the script


def run_background(args: argparse.Namespace, url: str) -> dict[int, float]:
    print("\n### background cost per process\n")
    print(
        "The fleet thread's CPU time per sync (time.thread_time() around each round, inside the "
        "thread: publishing every breaker, the round trip, following the answer), with 1, 10 and 100 "
        f"breakers, each with 20 calls in its window, this process alone in its fleet; the thread ran "
        f"every 0.05 s for {args.cost_seconds:g} s per row. 'per second' is what it takes at the default "
        f"{INTERVAL:g} s interval: one sync a second.\n"
    )
    rows = []
    per_sync: dict[int, float] = {}
    for count in (1, 10, 100):
        cpu, wall = thread_cost(url, count, args.cost_seconds)
        cpu_med = statistics.median(cpu)
        per_sync[count] = cpu_med
        rows.append(
            [
                str(count),
                str(len(cpu)),
                f"{cpu_med * 1e6:,.0f}",
                f"{quantile(cpu, 0.9) * 1e6:,.0f}",
                f"{statistics.median(wall) * 1e3:.2f}",
                f"{cpu_med / INTERVAL * 100:.3f}%",
            ]
        )
    header = ["breakers", "syncs", "CPU us/sync", "p90 us", "wall ms/sync", "CPU per second (1 s interval)"]
    print(h.table(header, rows))
    return per_sync


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- 3. one round trip ---------------------------------------------------------------------------------


def evalsha_usec(client: redis.Redis) -> tuple[int, int]:
    stats = client.info("commandstats").get("cmdstat_evalsha", {})
    return int(stats.get("calls", 0)), int(stats.get("usec", 0))


def round_trip(url: str, breakers: int, processes: int, samples: int) -> tuple[list[float], float]:
    """Wall times (s) of ``samples`` syncs of one process publishing ``breakers`` breakers in a
    fleet of ``processes`` live processes, and the redis-server's own time per sync (s).
    """
    service = f"{SERVICE}-rt-{breakers}-{processes}"
    client = redis_client(url, 5.0)
    store = FleetStore(client, service)
    published = [
        Published(f"https://dependency-{i:03d}.bench.example:443", "closed", 20, 4, 0)
        for i in range(breakers)
    ]
    ttl = 600.0  # the other processes stay live for the whole measurement
    for p in range(1, processes):
        store.sync(f"other-{p:04d}", published, ttl=ttl, lease=ttl)
    for _ in range(3):  # warm: the script loaded, the connection made
        store.sync("measured", published, ttl=ttl, lease=ttl)
    calls0, usec0 = evalsha_usec(client)
    wall = []
    for _ in range(samples):
        start = time.perf_counter()
        _, views = store.sync("measured", published, ttl=ttl, lease=ttl)
        wall.append(time.perf_counter() - start)
        assert len(views) == breakers
    calls1, usec1 = evalsha_usec(client)
    # commandstats counts the command itself; the INFO calls are not EVALSHA.
    server = (usec1 - usec0) / max(1, calls1 - calls0) / 1e6
    client.close()
    return wall, server


def run_round_trip(args: argparse.Namespace, url: str) -> dict[tuple[int, int], float]:
    print("\n### one sync round trip\n")
    print(
        "One FleetStore.sync from this process (the script that publishes its breakers and reads the "
        "fleet's view of each, and the parsing of its answer), in a fleet of 1, 10 or 100 live processes "
        "(the others' rows put there beforehand), each publishing the same breakers. 'redis us/sync' is "
        "the redis-server's own time per sync (INFO commandstats): the server runs one script at a time, "
        "so 'redis busy' = processes x redis us/sync per interval is the share of its one core the whole "
        f"fleet takes at the default {INTERVAL:g} s interval.\n"
    )
    rows = []
    found: dict[tuple[int, int], float] = {}
    for breakers in (1, 10, 100):
        for processes in (1, 10, 100):
            samples = args.samples if breakers * processes < 10_000 else max(10, args.samples // 3)
            wall, server = round_trip(url, breakers, processes, samples)
            found[breakers, processes] = statistics.median(wall)
            busy = processes * server / INTERVAL
            rows.append(
                [
                    str(breakers),
                    str(processes),
                    f"{statistics.median(wall) * 1e3:.2f}",
                    f"{quantile(wall, 0.9) * 1e3:.2f}",
                    f"{server * 1e6:,.0f}",
                    f"{busy * 100:.1f}%",
                ]
            )
    header = ["breakers", "live processes", "wall ms (median)", "p90 ms", "redis us/sync", "redis busy"]
    print(h.table(header, rows))
    return found


# -- main ------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a ~20 s smoke run (fewer rounds)")
    parser.add_argument(
        "--rounds", type=int, help="interleaved rounds of the success path (default 9; quick 3)"
    )
    parser.add_argument("--seed", type=int, default=20240601, help="seed of the shuffles")
    parser.add_argument("--registry", type=int, default=10, help="breakers in the registry for path 1")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (3 if args.quick else 7)
    args.success_target = 2.0 * INTERVAL
    args.cost_seconds = 1.0 if args.quick else 3.0
    args.samples = 20 if args.quick else 60
    if args.registry < 2:
        parser.error("--registry: at least 2 (the on and off contenders' breakers)")
    return args


def print_header(args: argparse.Namespace, redis_version: str) -> None:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print("## otelres shared state (breaker state on Redis)\n")
    print(
        f"- python {platform.python_version()} ({platform.python_implementation()}), {platform.system()} "
        f"{platform.machine()}, {cpus} CPUs usable"
    )
    print(
        f"- otelres {otelres.__version__}; redis-py {h.version_of('redis')}; redis-server {redis_version} "
        "on loopback, started by the run (no persistence)"
    )
    print(
        f"- {'quick' if args.quick else 'full'} run: success path {args.rounds} interleaved rounds x "
        f"~{args.success_target:g} s per contender (medians of the rounds); seed {args.seed}"
    )
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(f"- load average at start: {load}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if _events.listeners:
        print(
            f"otelres listeners are registered ({_events.listeners!r}); telemetry must be off",
            file=sys.stderr,
        )
        return 2
    started = time.perf_counter()
    with redis_server() as (url, version):
        print_header(args, version)
        ratio = run_success(args, url)
        per_sync = run_background(args, url)
        trips = run_round_trip(args, url)
    print("\n### summary\n")
    rows = [
        [
            "success path, shared state on / off",
            f"{ratio:.3f}",
            "<= 1.05",
            "yes" if ratio <= 1.05 else "**NO**",
        ],
        [
            "fleet thread CPU per second, 10 / 100 breakers (1 s interval)",
            f"{per_sync[10] * 1e3:.2f} ms / {per_sync[100] * 1e3:.2f} ms",
            "",
            "",
        ],
        [
            "one sync, 10 breakers, 10 / 100 processes",
            f"{trips[10, 10] * 1e3:.2f} ms / {trips[10, 100] * 1e3:.2f} ms",
            "",
            "",
        ],
    ]
    print(h.table(["figure", "value", "target", "met"], rows))
    print(f"\ntotal run time: {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
