"""Adaptive throttling against a partly failing upstream: ``python benchmarks/throttle.py [--duration 30]``.

The upstream is a real HTTP/1.1 server in a subprocess of its own (this file with ``--serve``: a
threaded ``http.server`` on 127.0.0.1) with a capacity of ``--slots`` concurrent requests. A request
that finds every slot taken is answered 503 at once; one that gets a slot takes
``--service-ms`` x (1 + ``--slowdown`` x occupancy), so the upstream slows as it nears capacity, and
its capacity is ``slots / (service x (1 + slowdown))`` requests a second.

The clients are ``--threads`` threads with an ``httpx.Client`` (one keep-alive connection) each, on
a fixed schedule (open loop: a request every ``threads / rate`` s per thread, phases spread), so
the load offered does not depend on how fast answers come back: ``--overload`` times the upstream's
capacity. The run has three phases: the upstream is healthy for the first sixth of
``--duration`` (``--overload`` x 1.5 times the slots, comfortably above the load), partly failing
(``--slots``) until the last sixth, then healthy again.

Each mode runs the same timeline against a fresh upstream: without a throttle (every request goes
out), then with one ``otelres`` throttle shared by all threads for each ``--k``::

    if not throttle.admit(): count a local rejection; continue
    response = client.get(...); throttle.record(response.status_code == 200)

Per ``--bin`` seconds it prints the load offered, the requests rejected locally, the load arriving
at the upstream and its success rate (both counted by the upstream itself), the goodput the clients
see (200s a second) and the throttle's rejection probability at the end of the bin. Loopback only;
every loop ends with the run (requests time out after 5 s).
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import _harness as h
import httpx

import otelres
from otelres._throttle import Throttle, ThrottlePolicy

if TYPE_CHECKING:
    from collections.abc import Iterator

#: Seconds the upstream may take to start, and a client request to be answered.
START_TIMEOUT = 10.0
REQUEST_TIMEOUT = 5.0
#: A request sent this much after its scheduled time counts as late (the load generator lagged).
LATE = 0.05


# -- the upstream (runs in its own process) --------------------------------------------------------------


class Upstream:
    """A capacity of ``slots`` concurrent requests; counts by bin of its own clock since the last reset."""

    def __init__(self, service: float, slowdown: float) -> None:
        self.service = service
        self.slowdown = slowdown
        self.lock = threading.Lock()
        self.slots = 1
        self.busy = 0
        self.started = time.monotonic()
        self.bin = 1.0
        self.arrivals: dict[int, int] = {}
        self.ok: dict[int, int] = {}

    def reset(self, slots: int, bin_seconds: float, delay: float) -> None:
        """Start counting afresh, bin 0 starting ``delay`` s from now (when the clients start)."""
        with self.lock:
            self.slots = slots
            self.bin = bin_seconds
            self.started = time.monotonic() + delay
            self.arrivals.clear()
            self.ok.clear()

    def work(self) -> int:
        """One request: 503 at once when every slot is taken, else 200 after the service time."""
        with self.lock:
            index = int((time.monotonic() - self.started) // self.bin)
            self.arrivals[index] = self.arrivals.get(index, 0) + 1
            if self.busy >= self.slots:
                return 503
            self.busy += 1
            occupancy = self.busy / self.slots
        try:
            time.sleep(self.service * (1.0 + self.slowdown * occupancy))
        finally:
            with self.lock:
                self.busy -= 1
                self.ok[index] = self.ok.get(index, 0) + 1
        return 200


def serve(port: int, service: float, slowdown: float) -> None:
    upstream = Upstream(service, slowdown)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: one connection per client thread

        def do_GET(self) -> None:
            path = urlsplit(self.path)
            if path.path == "/call":
                self.answer(upstream.work())
            elif path.path == "/_stats":
                with upstream.lock:
                    body = json.dumps({"arrivals": upstream.arrivals, "ok": upstream.ok}).encode()
                self.answer(200, body)
            else:
                self.answer(404)

        def do_POST(self) -> None:
            path = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(path.query).items()}
            if path.path == "/_reset":
                upstream.reset(int(query["slots"]), float(query["bin"]), float(query["delay"]))
            elif path.path == "/_slots":
                with upstream.lock:
                    upstream.slots = int(query["slots"])
            else:
                self.answer(404)
                return
            self.answer(204)

        def answer(self, status: int, body: bytes = b"") -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body:
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            pass

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 512

    with Server(("127.0.0.1", port), Handler) as server:
        print("ready", flush=True)
        server.serve_forever()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def upstream_process(args: argparse.Namespace) -> Iterator[str]:
    """The upstream in a subprocess on 127.0.0.1, stopped on the way out; yields its base URL."""
    port = free_port()
    command = [sys.executable, __file__, "--serve", str(port)]
    command += ["--service-ms", str(args.service_ms), "--slowdown", str(args.slowdown)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    watchdog = threading.Timer(START_TIMEOUT, process.kill)
    watchdog.start()
    try:
        assert process.stdout is not None
        if process.stdout.readline().strip() != "ready":
            raise SystemExit("the upstream did not start")
        watchdog.cancel()
        yield f"http://127.0.0.1:{port}"
    finally:
        watchdog.cancel()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=START_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- the clients -------------------------------------------------------------------------------------------


@dataclass
class Tally:
    """One client thread's counts, by bin (no lock: each thread has its own)."""

    bins: int
    offered: list[int] = field(init=False)
    rejected: list[int] = field(init=False)
    sent: list[int] = field(init=False)
    ok: list[int] = field(init=False)
    errors: int = 0
    late: int = 0

    def __post_init__(self) -> None:
        self.offered = [0] * self.bins
        self.rejected = [0] * self.bins
        self.sent = [0] * self.bins
        self.ok = [0] * self.bins


@dataclass
class Result:
    """One mode's run, by bin."""

    mode: str
    slots: list[int]
    offered: list[int]
    rejected: list[int]
    sent: list[int]
    ok: list[int]
    arrivals: list[int]
    upstream_ok: list[int]
    probability: list[float]
    errors: int
    late: int


@dataclass
class Start:
    """The clients' common start: each opens its connection, meets the others at ``ready``, and
    waits for ``go`` (the upstream's bins then start at ``at``, on the same monotonic clock).
    """

    ready: threading.Barrier
    go: threading.Event = field(default_factory=threading.Event)
    at: float = 0.0


def client(
    base: str,
    throttle: Throttle | None,
    tally: Tally,
    start: Start,
    first: float,
    interval: float,
    args: argparse.Namespace,
) -> None:
    with httpx.Client(base_url=base, timeout=REQUEST_TIMEOUT, limits=httpx.Limits(max_connections=1)) as http:
        http.get("/_stats")  # the keep-alive connection is open before the clock starts
        start.ready.wait(START_TIMEOUT)
        start.go.wait(START_TIMEOUT)
        end = start.at + args.duration
        scheduled = start.at + first
        while scheduled < end:
            wait = scheduled - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            elif -wait > LATE:
                tally.late += 1
            index = min(int((scheduled - start.at) // args.bin), tally.bins - 1)
            scheduled += interval
            tally.offered[index] += 1
            if throttle is not None and not throttle.admit():
                tally.rejected[index] += 1
                continue
            tally.sent[index] += 1
            try:
                ok = http.get("/call").status_code == 200
            except httpx.HTTPError:
                ok = False
                tally.errors += 1
            if throttle is not None:
                throttle.record(ok)
            tally.ok[index] += ok


def phase_slots(args: argparse.Namespace, second: float) -> int:
    """The upstream's slots at ``second`` of the run: healthy, partly failing, healthy again."""
    sixth = args.duration / 6
    return args.healthy_slots if second < sixth or second >= args.duration - sixth else args.slots


def run_mode(args: argparse.Namespace, k: float | None) -> Result:
    mode = "no throttle" if k is None else f"throttle k={k:g}"
    policy = None if k is None else ThrottlePolicy(k=k, window_seconds=args.window)
    throttle = None if policy is None else Throttle(policy)
    bins = math.ceil(args.duration / args.bin)
    tallies = [Tally(bins) for _ in range(args.threads)]
    interval = args.threads / args.offered
    probability = [0.0] * bins
    slots = [phase_slots(args, i * args.bin) for i in range(bins)]
    with upstream_process(args) as base, httpx.Client(base_url=base, timeout=REQUEST_TIMEOUT) as control:
        start = Start(threading.Barrier(args.threads + 1))
        pool = [
            threading.Thread(
                target=client,
                args=(
                    base,
                    throttle,
                    tally,
                    start,
                    (i + 0.5) * interval / args.threads,
                    interval,
                    args,
                ),
                daemon=True,
            )
            for i, tally in enumerate(tallies)
        ]
        for thread in pool:
            thread.start()
        start.ready.wait(START_TIMEOUT)
        start.at = time.monotonic() + 0.5
        params = {"slots": phase_slots(args, 0.0), "bin": args.bin, "delay": start.at - time.monotonic()}
        control.post("/_reset", params=params)
        start.go.set()
        # The timeline: the upstream's slots at each phase change, the probability at each bin's end.
        changes = sorted({args.duration / 6, args.duration - args.duration / 6})
        events = [
            (t, "bin", i) for i, t in enumerate(min((i + 1) * args.bin, args.duration) for i in range(bins))
        ]
        events += [(t, "slots", 0) for t in changes]
        for at, what, index in sorted(events):  # at a tie, the bin ends before the slots change
            wait = start.at + at - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            if what == "slots":
                control.post("/_slots", params={"slots": phase_slots(args, at)})
            elif throttle is not None:
                probability[index] = throttle.rejection_probability()
        for thread in pool:
            thread.join(REQUEST_TIMEOUT + 1.0)
        stats = control.get("/_stats").json()
    arrivals = [stats["arrivals"].get(str(i), 0) for i in range(bins)]
    upstream_ok = [stats["ok"].get(str(i), 0) for i in range(bins)]

    def column(name: str) -> list[int]:
        return [sum(getattr(t, name)[i] for t in tallies) for i in range(bins)]

    result = Result(
        mode,
        slots,
        column("offered"),
        column("rejected"),
        column("sent"),
        column("ok"),
        arrivals,
        upstream_ok,
        probability,
        sum(t.errors for t in tallies),
        sum(t.late for t in tallies),
    )
    # Every request the clients sent arrived (the upstream may count one at a bin's edge in the next).
    if abs(sum(result.sent) - sum(arrivals)) > args.threads:
        raise SystemExit(f"{mode}: clients sent {sum(result.sent)}, the upstream saw {sum(arrivals)}")
    return result


# -- report ------------------------------------------------------------------------------------------------


def per_second(count: float, seconds: float) -> str:
    return f"{count / seconds:,.0f}"


def percent(part: float, whole: float) -> str:
    return f"{100.0 * part / whole:.0f} %" if whole else "-"


def print_mode(args: argparse.Namespace, result: Result) -> None:
    print(f"\n### {result.mode}\n")
    rows = []
    for i, slots in enumerate(result.slots):
        seconds = min(args.bin, args.duration - i * args.bin)
        rows.append(
            [
                f"{i * args.bin:g}-{i * args.bin + seconds:g}",
                f"{'healthy' if slots == args.healthy_slots else 'partly failing'} ({slots})",
                per_second(result.offered[i], seconds),
                per_second(result.rejected[i], seconds),
                per_second(result.arrivals[i], seconds),
                percent(result.upstream_ok[i], result.arrivals[i]),
                per_second(result.ok[i], seconds),
                "-" if result.mode == "no throttle" else f"{result.probability[i]:.2f}",
            ]
        )
    header = [
        "time s",
        "upstream (slots)",
        "offered/s",
        "rejected locally/s",
        "arriving at upstream/s",
        "upstream success",
        "goodput/s",
        "p at end",
    ]
    print(h.table(header, rows))
    print(
        f"\n{sum(result.offered)} offered, {sum(result.sent)} sent, {result.errors} transport errors, "
        f"{result.late} sent over {LATE * 1e3:.0f} ms late"
    )


def print_summary(args: argparse.Namespace, results: list[Result]) -> None:
    """Each mode over the partly failing phase's last half (settled) and over the healed phase."""
    sixth = args.duration / 6
    spans = [("partly failing, 2nd half", args.duration / 2, args.duration - sixth)]
    spans.append(("healthy again", args.duration - sixth, args.duration))
    print("\n### summary\n")
    rows = []
    for result in results:
        for name, begin, end in spans:
            picked = [i for i in range(len(result.slots)) if begin <= i * args.bin < end]
            seconds = sum(min(args.bin, args.duration - i * args.bin) for i in picked)
            if not picked:
                continue
            arrivals = sum(result.arrivals[i] for i in picked)
            rows.append(
                [
                    result.mode,
                    name,
                    per_second(arrivals, seconds),
                    percent(sum(result.upstream_ok[i] for i in picked), arrivals),
                    per_second(sum(result.ok[i] for i in picked), seconds),
                    per_second(sum(result.rejected[i] for i in picked), seconds),
                ]
            )
    header = [
        "mode",
        "phase",
        "arriving at upstream/s",
        "upstream success",
        "goodput/s",
        "rejected locally/s",
    ]
    print(h.table(header, rows))


def print_header(args: argparse.Namespace) -> None:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print("## adaptive throttling against a partly failing upstream\n")
    print(
        f"- python {platform.python_version()} ({platform.python_implementation()}), {platform.system()} "
        f"{platform.machine()}, {cpus} CPUs usable; otelres {otelres.__version__}; "
        f"httpx {h.version_of('httpx')}"
    )
    print(
        f"- upstream: threaded http.server (HTTP/1.1 keep-alive) on loopback; {args.slots} slots while "
        f"partly failing, {args.healthy_slots} while healthy; service {args.service_ms:g} ms x "
        f"(1 + {args.slowdown:g} x occupancy); 503 at once when full; capacity while partly failing "
        f"{args.capacity:,.0f} requests/s"
    )
    print(
        f"- clients: {args.threads} threads, open loop, {args.offered:,.0f} requests/s offered "
        f"({args.overload:g}x that capacity); {args.duration:g} s a mode in {args.bin:g} s bins"
    )
    print(
        f"- throttle: one per mode, shared by the threads; k in {', '.join(f'{k:g}' for k in args.k)}; "
        f"window {args.window:g} s; min_requests {ThrottlePolicy().min_requests}, "
        f"max_rejection {ThrottlePolicy().max_rejection:g} (the defaults)"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--duration", type=float, default=30.0, help="seconds a mode (default 30)")
    parser.add_argument("--bin", type=float, default=5.0, help="seconds a row of the tables (default 5)")
    parser.add_argument("--slots", type=int, default=8, help="the upstream's slots while partly failing")
    parser.add_argument(
        "--service-ms", type=float, default=40.0, help="service time of a request at low load"
    )
    parser.add_argument("--slowdown", type=float, default=0.5, help="extra service time at full occupancy")
    parser.add_argument("--overload", type=float, default=2.0, help="load offered / capacity while failing")
    parser.add_argument("--threads", type=int, default=64, help="client threads")
    parser.add_argument(
        "--k", default="2,1.1", help="the throttle's k, one mode each, comma-separated (default 2,1.1)"
    )
    parser.add_argument(
        "--window",
        type=float,
        help="the throttle's window in s (default: a third of --duration, so that a run shows the "
        "whole cycle; otelres's default is 120)",
    )
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None:
        return args
    if not 5.0 <= args.duration <= 600.0:
        parser.error("--duration: 5 to 600 s")
    if not 0.5 <= args.bin <= args.duration:
        parser.error("--bin: 0.5 s to --duration")
    if not 1 <= args.threads <= 512 or args.slots < 1 or args.overload <= 0:
        parser.error("--threads 1 to 512, --slots >= 1, --overload > 0")
    args.k = [float(k) for k in args.k.split(",") if k.strip()]
    args.window = args.window if args.window is not None else args.duration / 3
    ThrottlePolicy(window_seconds=args.window)  # a bad window is a ConfigError now, not mid-run
    args.capacity = args.slots / (args.service_ms / 1e3 * (1 + args.slowdown))
    args.offered = args.overload * args.capacity
    args.healthy_slots = math.ceil(args.slots * max(args.overload, 1.0) * 1.5)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve is not None:
        serve(args.serve, args.service_ms / 1e3, args.slowdown)
        return 0
    started = time.perf_counter()
    print_header(args)
    results = []
    for k in [None, *args.k]:
        result = run_mode(args, k)
        print_mode(args, result)
        results.append(result)
    print_summary(args, results)
    print(f"\ntotal run time: {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
