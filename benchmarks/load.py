"""Overload at the door, with and without otelres's concurrency limit: ``python benchmarks/load.py``.

A queueing upstream (this file's ``make_upstream``: ``--slots`` requests served at once, each for
``--service-ms`` give or take ``--jitter``, the others waiting in line, so its latency grows with
its concurrency; capacity = slots / mean service time) sits behind a real server whose handler
calls it: gunicorn (``-k gthread``, one worker) and uvicorn (one worker). A load generator in
this process (asyncio + httpx, open loop: Poisson arrivals at a fixed rate, whatever the answers
do, as real traffic arrives) drives each server with ordinary traffic (``--warmup-load`` times
capacity for ``--warmup`` seconds: a service runs before a surge hits it, and an adaptive limit
learns it meanwhile), then at ``--overload`` times capacity for ``--duration`` seconds, measured;
once with ``ResilienceMiddleware(app)`` alone and once with ``limit=AdaptiveLimit(...)``. Before
that, each server's unloaded latency is measured at a tenth of capacity. Each request's client
gives up after ``--timeout`` seconds.

Reported, per server and configuration: offered and successful requests per second (goodput,
also as a share of capacity), the share of requests shed with 503 and of requests the client
gave up on, the p50 and p99 latency of the admitted requests (those that got a 200), and the
limit as it moved. The issue's goals, with the limit: admitted p99 <= 2 x the unloaded p99, and
goodput >= 90 % of capacity. Everything runs on 127.0.0.1; every loop is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _harness as h  # noqa: E402

# The server processes read their configuration from the environment (set by this file's run).
ENV_UPSTREAM = "OTELRES_LOAD_UPSTREAM"
ENV_SLOTS = "OTELRES_LOAD_SLOTS"
ENV_SERVICE = "OTELRES_LOAD_SERVICE_S"
ENV_JITTER = "OTELRES_LOAD_JITTER"
ENV_LIMIT = "OTELRES_LOAD_LIMIT"
ENV_THREADS = "OTELRES_LOAD_THREADS"
STATS_PATH = "/_bench/stats"
WORK_PATH = "/work"
SERVERS = ("gunicorn", "uvicorn")
CONFIGS = ("none", "adaptive")
LABELS = {"none": "no limit", "adaptive": "AdaptiveLimit()"}
DISTS = ("gunicorn", "uvicorn", "httpx")
#: Connections the app's client may open to the upstream, and each of the load generator's
#: CLIENTS clients to the server.
APP_CONNECTIONS = 1000
CLIENT_CONNECTIONS = 200
CLIENTS = 32
#: A run whose load generator sent requests later than this (p99) measured the generator, not
#: the server: the goals table says so.
MAX_LAG = 0.1


# -- the upstream (its own uvicorn process) ------------------------------------------------------


def make_upstream() -> Callable[..., Any]:
    """The queueing upstream: ``OTELRES_LOAD_SLOTS`` requests served at once, each for
    ``OTELRES_LOAD_SERVICE_S`` x U(1 - jitter, 1 + jitter) seconds, the others waiting in line.
    """
    slots = int(os.environ[ENV_SLOTS])
    service = float(os.environ[ENV_SERVICE])
    jitter = float(os.environ.get(ENV_JITTER, "0"))
    semaphore: asyncio.Semaphore | None = None
    rng = random.Random(os.getpid())
    served = 0

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal semaphore, served
        if scope["type"] != "http":
            return
        if scope["path"] == STATS_PATH:
            body = json.dumps({"served": served}).encode()
        else:
            if semaphore is None:  # made on the server's own loop
                semaphore = asyncio.Semaphore(slots)
            async with semaphore:
                await asyncio.sleep(service * rng.uniform(1 - jitter, 1 + jitter))
                served += 1
            body = b"ok"
        headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


# -- the app servers (gunicorn and uvicorn processes) --------------------------------------------


def _limit() -> Any:
    """The limit the configuration asks for, or None."""
    config = os.environ.get(ENV_LIMIT, "none")
    if config == "none":
        return None
    import otelres  # noqa: PLC0415

    threads = int(os.environ.get(ENV_THREADS, "0"))
    # Under a thread server the limit must stay below the threads, or requests wait for one,
    # unseen by the limit.
    return otelres.AdaptiveLimit(max_limit=threads) if threads else otelres.AdaptiveLimit()


def _stats_body(middleware: Any) -> bytes:
    limiter = middleware.limiter
    if limiter is None:
        return json.dumps({"limit": None}).encode()
    return json.dumps(
        {
            "limit": limiter.limit,
            "in_flight": limiter.in_flight,
            "shed": limiter.shed,
            "rtt": getattr(limiter, "rtt", None),
            "long_rtt": getattr(limiter, "long_rtt", None),
        }
    ).encode()


def _is_stats(path: str) -> bool:
    return path == STATS_PATH


def make_wsgi() -> Callable[..., Any]:
    """The WSGI app (gunicorn's factory): ``/work`` calls the upstream once (httpx.Client)."""
    import httpx  # noqa: PLC0415

    from otelres.wsgi import ResilienceMiddleware  # noqa: PLC0415

    upstream = os.environ[ENV_UPSTREAM] + WORK_PATH
    client = httpx.Client(timeout=60.0, limits=httpx.Limits(max_connections=APP_CONNECTIONS))
    middleware: Any = None

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if environ.get("PATH_INFO") == STATS_PATH:
            body = _stats_body(middleware)
        else:
            body = client.get(upstream).content
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    limit = _limit()
    critical = (lambda environ: _is_stats(environ.get("PATH_INFO", ""))) if limit is not None else None
    middleware = ResilienceMiddleware(app, limit=limit, critical=critical)
    return middleware  # type: ignore[no-any-return]


def make_asgi() -> Callable[..., Any]:
    """The ASGI app (uvicorn's factory): ``/work`` calls the upstream once (httpx.AsyncClient)."""
    import httpx  # noqa: PLC0415

    from otelres.asgi import ResilienceMiddleware  # noqa: PLC0415

    upstream = os.environ[ENV_UPSTREAM] + WORK_PATH
    clients: list[httpx.AsyncClient] = []
    middleware: Any = None

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope.get("path") == STATS_PATH:
            body = _stats_body(middleware)
        else:
            if not clients:  # made on the server's own loop
                clients.append(
                    httpx.AsyncClient(timeout=60.0, limits=httpx.Limits(max_connections=APP_CONNECTIONS))
                )
            body = (await clients[0].get(upstream)).content
        headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    limit = _limit()
    critical = (lambda scope: _is_stats(scope.get("path", ""))) if limit is not None else None
    middleware = ResilienceMiddleware(app, limit=limit, critical=critical)
    return middleware  # type: ignore[no-any-return]


# -- the processes -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Process:
    """A server process on a loopback port, ended by :meth:`close`."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], port: int) -> None:
        self.name = name
        self.url = f"http://127.0.0.1:{port}"
        full_env = {**os.environ, **env, "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent)])}
        # Its own process group: close() ends the server's workers with it.
        self.proc = subprocess.Popen(
            [sys.executable, *argv], env=full_env, stdin=subprocess.DEVNULL, cwd=HERE, start_new_session=True
        )

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + STATS_PATH, timeout=5) as response:  # noqa: S310 (loopback)
            data: dict[str, Any] = json.loads(response.read())
            return data

    def wait_ready(self, timeout: float = 30.0) -> None:
        give_up = time.monotonic() + timeout
        while time.monotonic() < give_up:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with code {self.proc.returncode}")
            try:
                self.stats()
            except OSError:
                time.sleep(0.1)
                continue
            return
        raise RuntimeError(f"{self.name} did not answer within {timeout:g} s")

    def close(self) -> None:
        """End the server and its workers now: a server still serving the requests of a run
        without a limit would take the CPU from the next run.
        """
        group = self.proc.pid  # the group this process leads (start_new_session)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        self.proc.wait(10)


def uvicorn_argv(factory: str, port: int) -> list[str]:
    return [
        *("-m", "uvicorn", "--factory", "--host", "127.0.0.1", "--port", str(port)),
        *("--workers", "1", "--log-level", "error", "--no-access-log", "--lifespan", "off"),
        *("--backlog", "4096", "--timeout-keep-alive", "30", factory),
    ]


def start_upstream(args: argparse.Namespace) -> Process:
    port = free_port()
    env = {ENV_SLOTS: str(args.slots), ENV_SERVICE: str(args.service_ms / 1000), ENV_JITTER: str(args.jitter)}
    return Process("upstream", uvicorn_argv("load:make_upstream", port), env, port)


def start_server(server: str, config: str, upstream: str, args: argparse.Namespace) -> Process:
    port = free_port()
    env = {ENV_UPSTREAM: upstream, ENV_LIMIT: config}
    if server == "gunicorn":
        env[ENV_THREADS] = str(args.threads)
        argv = [
            *("-m", "gunicorn", "-b", f"127.0.0.1:{port}", "-w", "1", "-k", "gthread"),
            *("--threads", str(args.threads), "--backlog", "4096", "--keep-alive", "30"),
            *("--worker-connections", "4000", "--log-level", "error", "load:make_wsgi()"),
        ]
    else:
        argv = uvicorn_argv("load:make_asgi", port)
    return Process(f"{server} ({LABELS[config]})", argv, env, port)


# -- the load generator --------------------------------------------------------------------------


class Results:
    """What the clients saw: each request's status (0: gave up or failed), latency and end (s
    after the run's start).
    """

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.latencies: list[float] = []
        self.ends: list[float] = []
        #: How late each request was sent after its arrival (the generator's own lag).
        self.lags: list[float] = []
        self.overflow = 0

    def ok(self) -> list[float]:
        """The latencies of the requests answered 200."""
        return [lat for status, lat in zip(self.statuses, self.latencies, strict=True) if status == 200]

    def goodput(self, duration: float) -> float:
        """Requests answered 200 within the run (the ones ending after it are not counted), per second."""
        ok = sum(
            1
            for status, end in zip(self.statuses, self.ends, strict=True)
            if status == 200 and end <= duration
        )
        return ok / duration

    def count(self, status: int) -> int:
        return sum(1 for s in self.statuses if s == status)


async def _drive(url: str, rate: float, duration: float, timeout: float, seed: int) -> Results:
    """Open loop: Poisson arrivals at ``rate`` for ``duration`` s, each a GET with ``timeout``;
    at most rate x (timeout + 1) requests outstanding (an arrival past that is counted, not sent).
    """
    import httpx  # noqa: PLC0415

    results = Results()
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    cap = max(10, int(rate * (timeout + 1)))
    limits = httpx.Limits(max_connections=CLIENT_CONNECTIONS, max_keepalive_connections=CLIENT_CONNECTIONS)
    tasks: set[asyncio.Task[None]] = set()

    async def one(client: httpx.AsyncClient, due: float) -> None:
        results.lags.append(loop.time() - due)
        status = 0
        with contextlib.suppress(httpx.HTTPError, OSError, asyncio.TimeoutError):
            # httpx's timeout bounds each step (connect, pool, read); the client's is the whole.
            status = (await asyncio.wait_for(client.get(url + WORK_PATH), timeout)).status_code
        end = loop.time()
        latency = end - due  # from the request's arrival: the generator's own lag counts too
        results.statuses.append(status if latency <= timeout else 0)
        results.latencies.append(latency)
        results.ends.append(end - run_start)

    # Many small clients, not one: httpx's pool scans every connection and waiting request on each
    # event, which costs the square of the requests outstanding; against a slow server (hundreds
    # outstanding) one client starved the generator of CPU and it sent requests seconds late.
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(httpx.AsyncClient(timeout=timeout, limits=limits))
            for _ in range(CLIENTS)
        ]
        run_start = due = loop.time()
        sent = 0
        while True:
            due += rng.expovariate(rate)
            if due - run_start >= duration:
                break
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(tasks) >= cap:
                results.overflow += 1
                continue
            task = asyncio.create_task(one(clients[sent % CLIENTS], due))
            sent += 1
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=timeout + 10)
    return results


def drive(url: str, rate: float, duration: float, timeout: float, seed: int) -> Results:
    return asyncio.run(_drive(url, rate, duration, timeout, seed))


@contextlib.contextmanager
def sampling_limit(process: Process, seconds: float) -> Iterator[list[int]]:
    """Read the server's limit every ``seconds`` while the block runs (a thread); yields the list."""
    seen: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(seconds):
            with contextlib.suppress(OSError, ValueError):
                limit = process.stats().get("limit")
                if limit is not None:
                    seen.append(int(limit))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join(10)


# -- the run -------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by the nearest rank; NaN without values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:,.0f}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of overload per run (30)")
    parser.add_argument("--unloaded", type=float, default=10.0, help="seconds of the unloaded run (10)")
    parser.add_argument("--slots", type=int, default=40, help="requests the upstream serves at once (40)")
    parser.add_argument("--service-ms", type=float, default=800.0, help="its mean service time (800 ms)")
    parser.add_argument("--jitter", type=float, default=0.5, help="service time x U(1-j, 1+j) (0.5)")
    parser.add_argument("--overload", type=float, default=2.0, help="offered load / capacity (2)")
    parser.add_argument("--timeout", type=float, default=5.0, help="the clients' timeout (5 s)")
    parser.add_argument(
        "--warmup", type=float, default=20.0, help="seconds of ordinary traffic before the overload (20)"
    )
    parser.add_argument(
        "--warmup-load", type=float, default=0.6, help="the ordinary traffic / capacity (0.6)"
    )
    parser.add_argument("--threads", type=int, default=128, help="gunicorn gthread threads (128)")
    parser.add_argument("--seed", type=int, default=20240601, help="seed of the arrivals")
    parser.add_argument("--only", default="", help="comma-separated: gunicorn,uvicorn")
    args = parser.parse_args(argv)
    # bounded: the whole run stays within minutes
    args.duration = max(1.0, min(args.duration, 300.0))
    args.unloaded = max(1.0, min(args.unloaded, 60.0))
    args.slots = max(1, min(args.slots, 200))
    args.service_ms = max(1.0, min(args.service_ms, 2000.0))
    args.jitter = max(0.0, min(args.jitter, 0.9))
    args.overload = max(0.1, min(args.overload, 5.0))
    args.timeout = max(0.1, min(args.timeout, 30.0))
    args.threads = max(4, min(args.threads, 256))
    args.warmup = max(1.0, min(args.warmup, 120.0))
    args.warmup_load = max(0.05, min(args.warmup_load, 1.0))
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    args.servers = [s for s in SERVERS if not only or s in only]
    args.capacity = args.slots / (args.service_ms / 1000)
    return args


def print_header(args: argparse.Namespace) -> None:
    import otelres  # noqa: PLC0415

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print("## Overload at the door: the concurrency limit under load\n")
    print(
        f"- python {platform.python_version()}, {platform.system()} {platform.machine()}, {cpus} CPUs "
        f"usable; otelres {otelres.__version__}; " + ", ".join(f"{d} {h.version_of(d)}" for d in DISTS)
    )
    print(
        f"- upstream: {args.slots} slots x {args.service_ms:g} ms (x U({1 - args.jitter:g}, "
        f"{1 + args.jitter:g})), FIFO queue: capacity {args.capacity:,.0f} req/s"
    )
    print(
        f"- servers: gunicorn `-k gthread --threads {args.threads}`, uvicorn; one worker each; the "
        f"handler makes one httpx call to the upstream; limit: `AdaptiveLimit()` (gunicorn: "
        f"`max_limit={args.threads}`, its threads)"
    )
    print(
        f"- load: open loop, Poisson arrivals: {args.warmup:g} s of ordinary traffic at "
        f"{args.warmup_load:g} x capacity (not measured: the limit learns the service), then "
        f"{args.overload:g} x capacity = {args.overload * args.capacity:,.0f} req/s for "
        f"{args.duration:g} s, measured; unloaded: "
        f"{0.1 * args.capacity:,.0f} req/s for {args.unloaded:g} s; clients give up after "
        f"{args.timeout:g} s; load generator, servers and upstream share the CPUs"
    )
    load_avg = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(f"- load average at start: {load_avg}")


def run_one(
    server: str,
    config: str,
    args: argparse.Namespace,
    rate: float,
    duration: float,
    *,
    warmup: float = 1.0,
    warmup_rate: float | None = None,
) -> tuple[Results, list[int], dict[str, Any], float]:
    """Start a fresh upstream and the server, drive it at ``warmup_rate`` for ``warmup`` s (not
    measured), then at ``rate`` for ``duration`` s: its results, the limit read every second, the
    server's last stats, and the requests per second the upstream served meanwhile.

    Each run has its own upstream: one left behind by a run without a limit is still serving,
    for minutes, the requests whose clients gave up.
    """
    upstream = start_upstream(args)
    try:
        upstream.wait_ready()
        process = start_server(server, config, upstream.url, args)
        try:
            process.wait_ready()
            if warmup_rate is None:
                warmup_rate = max(1.0, 0.05 * args.capacity)
            drive(process.url, warmup_rate, warmup, args.timeout, args.seed + 1)
            before = upstream.stats()["served"]
            with sampling_limit(process, 1.0) as limits:
                results = drive(process.url, rate, duration, args.timeout, args.seed)
            served = (upstream.stats()["served"] - before) / duration
            stats: dict[str, Any] = {}
            with contextlib.suppress(OSError, ValueError):  # a server still drowning in requests
                stats = process.stats()
        finally:
            process.close()
    finally:
        upstream.close()
    return results, limits, stats, served


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    rows: list[list[str]] = []
    summary: list[list[str]] = []
    print_header(args)
    for server in args.servers:
        unloaded, _, _, _ = run_one(server, "adaptive", args, 0.1 * args.capacity, args.unloaded)
        base_p99 = percentile(unloaded.ok(), 0.99)
        rows.append(
            [
                server,
                "unloaded",
                f"{0.1 * args.capacity:,.0f}",
                f"{unloaded.goodput(args.unloaded):,.0f}",
                "-",
                "-",
                "0%",
                f"{(len(unloaded.statuses) - unloaded.count(200)) / max(1, len(unloaded.statuses)):.0%}",
                ms(percentile(unloaded.ok(), 0.5)),
                ms(base_p99),
                "1.00x",
                "-",
                ms(percentile(unloaded.lags, 0.99)),
            ]
        )
        for config in CONFIGS:
            rate = args.overload * args.capacity
            results, limits, stats, served = run_one(
                server,
                config,
                args,
                rate,
                args.duration,
                warmup=args.warmup,
                warmup_rate=args.warmup_load * args.capacity,
            )
            sent = len(results.statuses) + results.overflow
            ok = results.ok()
            goodput = results.goodput(args.duration)
            shed = results.count(503) / max(1, sent)
            gave_up = (sent - results.count(200) - results.count(503)) / max(1, sent)
            p99 = percentile(ok, 0.99)
            limit_text = f"{min(limits)} / {statistics.median(limits):.0f} / {max(limits)}" if limits else "-"
            rows.append(
                [
                    server,
                    LABELS[config],
                    f"{sent / args.duration:,.0f}",
                    f"{goodput:,.0f}",
                    f"{goodput / args.capacity:.0%}",
                    f"{served:,.0f}",
                    f"{shed:.0%}",
                    f"{gave_up:.0%}",
                    ms(percentile(ok, 0.5)),
                    ms(p99),
                    f"{p99 / base_p99:.2f}x",
                    limit_text,
                    ms(percentile(results.lags, 0.99)),
                ]
            )
            if config == "adaptive":
                latency_ok = p99 <= 2 * base_p99
                goodput_ok = goodput >= 0.9 * args.capacity
                summary.append(
                    [
                        server,
                        f"{p99 / base_p99:.2f}x",
                        "yes" if latency_ok else "**NO**",
                        f"{goodput / args.capacity:.0%}",
                        "yes" if goodput_ok else "**NO**",
                        json.dumps(stats.get("shed", {}), sort_keys=True),
                        "yes" if percentile(results.lags, 0.99) < MAX_LAG else "**NO**: generator starved",
                    ]
                )
    header = [
        "server",
        "configuration",
        "offered req/s",
        "200 req/s",
        "of capacity",
        "upstream served req/s",
        "shed (503)",
        "gave up / failed",
        "p50 ms",
        "p99 ms",
        "p99 / unloaded",
        "limit min / median / max",
        "generator lag p99 ms",
    ]
    print("\n### runs\n")
    print(
        "'200 req/s' is goodput: requests answered 200 within the client's timeout, per second of "
        "the run; 'upstream served' is what the upstream did meanwhile, for clients still waiting or "
        "not; latencies are those of the admitted (200) requests; 'gave up / failed' are "
        "requests the client abandoned at its timeout (or whose connection failed), or could not "
        "send (more outstanding than rate x timeout); 'generator lag' is how late the load generator "
        "sent a request after its arrival time (high: the generator itself was starved of CPU).\n"
    )
    print(h.table(header, rows))
    print("\n### goals (with the limit)\n")
    goal_header = [
        "server",
        "p99 / unloaded p99",
        "<= 2x",
        "goodput / capacity",
        ">= 90 %",
        "shed by reason",
        f"valid run (generator lag p99 < {MAX_LAG * 1000:.0f} ms)",
    ]
    print(h.table(goal_header, summary))
    print(f"\ntotal run time: {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
