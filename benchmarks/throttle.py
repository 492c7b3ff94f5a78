"""Breaker and adaptive throttling against a partly failing upstream: ``python benchmarks/throttle.py``.

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

Each mode runs the same timeline against a fresh upstream, the way a user guards the call:

- ``no otelres``: every thread calls ``client.get("/call")``;
- ``breaker only``: every thread calls through one ``otelres.Resilience`` (one dependency, shared
  by the threads) with otelres's default breaker, a 5xx counting as a failure, and no retry::

      res = otelres.Resilience(base_url, retry=otelres.RetryPolicy(attempts=1),
                               breaker=otelres.BreakerPolicy(failure_result=lambda r: r.status_code >= 500))
      try:
          response = res.call(client.get, "/call")
      except otelres.CircuitOpenError as exc:
          ...  # rejected locally, counted by exc.reason: circuit_open or throttled

- ``breaker + throttle k=...``: the same with ``BreakerPolicy(..., throttle=otelres.ThrottlePolicy(
  k=k, window_seconds=--window))``, one mode for each ``--k``.

Per ``--bin`` seconds it prints the load offered, the requests rejected locally by reason, the load
arriving at the upstream and its success rate (both counted by the upstream itself), the goodput
the clients see (200s a second), how long the circuit was not closed (heard from otelres's
transition events) and the throttle's rejection probability at the end of the bin; under each
table, the load arriving at the upstream a fifth of a bin at a time, and the circuit's state over
the same slices. Loopback only; every loop ends with the run (requests time out after 5 s).
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

if TYPE_CHECKING:
    from collections.abc import Iterator

#: Seconds the upstream may take to start, and a client request to be answered.
START_TIMEOUT = 10.0
REQUEST_TIMEOUT = 5.0
#: A request sent this much after its scheduled time counts as late (the load generator lagged).
LATE = 0.05
#: The upstream counts arrivals in slices of a bin (the strip under each table).
SLICES = 5


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


@dataclass(frozen=True)
class Mode:
    """What the clients call the upstream through."""

    name: str
    #: Through an ``otelres.Resilience`` with a breaker (False: the bare httpx call).
    breaker: bool
    #: The breaker's throttle's k (None: no throttle).
    k: float | None = None


def modes(args: argparse.Namespace) -> list[Mode]:
    return [
        Mode("no otelres", breaker=False),
        Mode("breaker only", breaker=True),
        *(Mode(f"breaker + throttle k={k:g}", breaker=True, k=k) for k in args.k),
    ]


def server_error(response: httpx.Response) -> bool:
    """The breaker's ``failure_result``: a 5xx (the upstream's 503) is a failure."""
    return response.status_code >= 500


def resilience(args: argparse.Namespace, mode: Mode, base: str) -> otelres.Resilience | None:
    """The mode's one ``Resilience`` for the upstream, shared by the client threads (None: no otelres)."""
    if not mode.breaker:
        return None
    throttle = None if mode.k is None else otelres.ThrottlePolicy(k=mode.k, window_seconds=args.window)
    policy = otelres.BreakerPolicy(failure_result=server_error, throttle=throttle)
    return otelres.Resilience(base, breaker=policy, retry=otelres.RetryPolicy(attempts=1))


class Transitions(otelres.Listener):
    """The circuit's state changes (otelres's transition events for one breaker), with their times."""

    def __init__(self, breaker: str) -> None:
        self.breaker = breaker
        self.seen: list[otelres.Transition] = []

    def on_event(self, event: otelres.Event) -> None:
        transition = event.transition
        if event.kind == "transition" and transition is not None and transition.breaker == self.breaker:
            self.seen.append(transition)  # list.append is atomic: threads may report at once


@dataclass
class Tally:
    """One client thread's counts, by bin (no lock: each thread has its own)."""

    bins: int
    offered: list[int] = field(init=False)
    throttled: list[int] = field(init=False)
    circuit_open: list[int] = field(init=False)
    sent: list[int] = field(init=False)
    ok: list[int] = field(init=False)
    errors: int = 0
    late: int = 0

    def __post_init__(self) -> None:
        self.offered = [0] * self.bins
        self.throttled = [0] * self.bins
        self.circuit_open = [0] * self.bins
        self.sent = [0] * self.bins
        self.ok = [0] * self.bins


@dataclass
class Result:
    """One mode's run, by bin (and by slice of a bin for the arrivals and the circuit)."""

    mode: Mode
    slots: list[int]
    offered: list[int]
    throttled: list[int]
    circuit_open: list[int]
    sent: list[int]
    ok: list[int]
    arrivals: list[int]
    upstream_ok: list[int]
    probability: list[float]
    #: Seconds of each bin the circuit was open or half-open, and how many times it opened.
    open_seconds: list[float]
    opens: list[int]
    slice_arrivals: list[int]
    slice_open: list[float]
    errors: int
    late: int
    #: The breaker's own count of rejected calls (BreakerStats.rejected), None without one.
    breaker_rejected: int | None


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
    res: otelres.Resilience | None,
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
            try:
                response = http.get("/call") if res is None else res.call(http.get, "/call")
            except otelres.CircuitOpenError as exc:
                if exc.reason == "throttled":
                    tally.throttled[index] += 1
                else:
                    tally.circuit_open[index] += 1
                continue
            except httpx.HTTPError:
                tally.sent[index] += 1
                tally.errors += 1
                continue
            tally.sent[index] += 1
            tally.ok[index] += response.status_code == 200


def phase_slots(args: argparse.Namespace, second: float) -> int:
    """The upstream's slots at ``second`` of the run: healthy, partly failing, healthy again."""
    sixth = args.duration / 6
    return args.healthy_slots if second < sixth or second >= args.duration - sixth else args.slots


def open_spans(transitions: list[otelres.Transition], start: float, end: float) -> list[tuple[float, float]]:
    """The spans (s since ``start``) the circuit was not closed: open, or half-open (one probe)."""
    spans = []
    state, since = otelres.State.CLOSED, start
    for transition in sorted(transitions, key=lambda t: t.seq):
        if state is not otelres.State.CLOSED:
            spans.append((since - start, transition.at - start))
        state, since = transition.to_state, transition.at
    if state is not otelres.State.CLOSED:
        spans.append((since - start, end - start))
    return spans


def overlap(spans: list[tuple[float, float]], width: float, count: int, duration: float) -> list[float]:
    """Seconds of each of ``count`` slices of ``width`` s covered by ``spans``."""
    out = [0.0] * count
    for i in range(count):
        low, high = i * width, min((i + 1) * width, duration)
        out[i] = sum(max(0.0, min(b, high) - max(a, low)) for a, b in spans)
    return out


def run_mode(args: argparse.Namespace, mode: Mode) -> Result:
    bins = math.ceil(args.duration / args.bin)
    slices = bins * SLICES
    width = args.bin / SLICES
    tallies = [Tally(bins) for _ in range(args.threads)]
    interval = args.threads / args.offered
    probability = [0.0] * bins
    slots = [phase_slots(args, i * args.bin) for i in range(bins)]
    with upstream_process(args) as base, httpx.Client(base_url=base, timeout=REQUEST_TIMEOUT) as control:
        res = resilience(args, mode, base)
        throttle = None if res is None else res.breaker.throttle
        transitions = Transitions(res.breaker.name if res is not None else "")
        otelres.add_listener(transitions)
        try:
            start = Start(threading.Barrier(args.threads + 1))
            pool = [
                threading.Thread(
                    target=client,
                    args=(base, res, tally, start, (i + 0.5) * interval / args.threads, interval, args),
                    daemon=True,
                )
                for i, tally in enumerate(tallies)
            ]
            for thread in pool:
                thread.start()
            start.ready.wait(START_TIMEOUT)
            start.at = time.monotonic() + 0.5
            params = {"slots": phase_slots(args, 0.0), "bin": width, "delay": start.at - time.monotonic()}
            control.post("/_reset", params=params)
            start.go.set()
            # The timeline: the upstream's slots at each phase change, the probability at each bin's end.
            changes = sorted({args.duration / 6, args.duration - args.duration / 6})
            ends = [min((i + 1) * args.bin, args.duration) for i in range(bins)]
            events = [(t, "bin", i) for i, t in enumerate(ends)]
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
        finally:
            otelres.remove_listener(transitions)
    # The upstream's slices; a request that arrived a little before the start or after the end
    # (sent on schedule, read late) counts in the first or the last slice.
    slice_arrivals, slice_ok = [0] * slices, [0] * slices
    for name, into in (("arrivals", slice_arrivals), ("ok", slice_ok)):
        for key, count in stats[name].items():
            into[min(max(int(key), 0), slices - 1)] += count

    def per_bin(values: list[Any]) -> list[Any]:
        return [sum(values[i * SLICES : (i + 1) * SLICES]) for i in range(bins)]

    def column(name: str) -> list[int]:
        return [sum(getattr(t, name)[i] for t in tallies) for i in range(bins)]

    spans = open_spans(transitions.seen, start.at, start.at + args.duration)
    opened = [t.at - start.at for t in transitions.seen if t.to_state is otelres.State.OPEN]
    result = Result(
        mode=mode,
        slots=slots,
        offered=column("offered"),
        throttled=column("throttled"),
        circuit_open=column("circuit_open"),
        sent=column("sent"),
        ok=column("ok"),
        arrivals=per_bin(slice_arrivals),
        upstream_ok=per_bin(slice_ok),
        probability=probability,
        open_seconds=overlap(spans, args.bin, bins, args.duration),
        opens=[
            sum(1 for at in opened if min(max(int(at // args.bin), 0), bins - 1) == i) for i in range(bins)
        ],
        slice_arrivals=slice_arrivals,
        slice_open=overlap(spans, width, slices, args.duration),
        errors=sum(t.errors for t in tallies),
        late=sum(t.late for t in tallies),
        breaker_rejected=None if res is None else res.breaker.stats().rejected,
    )
    # Every request the clients sent arrived (the upstream may count one at a bin's edge in the next).
    if abs(sum(result.sent) - sum(slice_arrivals)) > args.threads:
        raise SystemExit(
            f"{mode.name}: clients sent {sum(result.sent)}, the upstream saw {sum(slice_arrivals)}"
        )
    rejected = sum(result.throttled) + sum(result.circuit_open)
    if result.breaker_rejected is not None and result.breaker_rejected != rejected:
        raise SystemExit(
            f"{mode.name}: {rejected} CircuitOpenError caught, the breaker counted {result.breaker_rejected}"
        )
    return result


# -- report ------------------------------------------------------------------------------------------------


def per_second(count: float, seconds: float) -> str:
    return f"{count / seconds:,.0f}"


def percent(part: float, whole: float) -> str:
    return f"{100.0 * part / whole:.0f} %" if whole else "-"


def circuit_cell(result: Result, i: int) -> str:
    if not result.mode.breaker:
        return "-"
    if not result.open_seconds[i] and not result.opens[i]:
        return "closed"
    return f"{result.open_seconds[i]:.1f} s ({result.opens[i]})"


def slice_state(seconds: float, width: float) -> str:
    """A slice of the run as one letter: C closed throughout, O open (or half-open) throughout, o both."""
    if seconds <= 0.001 * width:
        return "C"
    return "O" if seconds >= 0.999 * width else "o"


def print_mode(args: argparse.Namespace, result: Result) -> None:
    print(f"\n### {result.mode.name}\n")
    rows = []
    for i, slots in enumerate(result.slots):
        seconds = min(args.bin, args.duration - i * args.bin)
        rows.append(
            [
                f"{i * args.bin:g}-{i * args.bin + seconds:g}",
                f"{'healthy' if slots == args.healthy_slots else 'partly failing'} ({slots})",
                per_second(result.offered[i], seconds),
                per_second(result.throttled[i], seconds),
                per_second(result.circuit_open[i], seconds),
                per_second(result.arrivals[i], seconds),
                percent(result.upstream_ok[i], result.arrivals[i]),
                per_second(result.ok[i], seconds),
                circuit_cell(result, i),
                "-" if result.mode.k is None else f"{result.probability[i]:.2f}",
            ]
        )
    header = [
        "time s",
        "upstream (slots)",
        "offered/s",
        "rejected: throttled/s",
        "rejected: circuit open/s",
        "arriving at upstream/s",
        "upstream success",
        "goodput/s",
        "circuit open s (opens)",
        "p at end",
    ]
    print(h.table(header, rows))
    width = args.bin / SLICES
    bins = len(result.slots)

    def strip(cells: list[str]) -> str:
        return " / ".join(" ".join(cells[i * SLICES : (i + 1) * SLICES]) for i in range(bins))

    print(
        f"\n- arriving at upstream/s, {width:g} s at a time: "
        + strip([per_second(n, width) for n in result.slice_arrivals])
    )
    if result.mode.breaker:
        print(
            f"- circuit, {width:g} s at a time (C closed, O open or half-open, o both): "
            + strip([slice_state(s, width) for s in result.slice_open])
        )
    rejected = sum(result.throttled) + sum(result.circuit_open)
    counted = "" if result.breaker_rejected is None else f"; the breaker counted {result.breaker_rejected}"
    print(
        f"- {sum(result.offered)} offered, {sum(result.throttled)} throttled and {sum(result.circuit_open)} "
        f"rejected by the open circuit ({rejected} CircuitOpenError{counted}), {sum(result.sent)} sent, "
        f"{result.errors} transport errors, {result.late} sent over {LATE * 1e3:.0f} ms late"
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
            open_seconds = sum(result.open_seconds[i] for i in picked)
            rows.append(
                [
                    result.mode.name,
                    name,
                    per_second(arrivals, seconds),
                    percent(sum(result.upstream_ok[i] for i in picked), arrivals),
                    per_second(sum(result.ok[i] for i in picked), seconds),
                    per_second(sum(result.throttled[i] for i in picked), seconds),
                    per_second(sum(result.circuit_open[i] for i in picked), seconds),
                    percent(open_seconds, seconds) if result.mode.breaker else "-",
                ]
            )
    header = [
        "mode",
        "phase",
        "arriving at upstream/s",
        "upstream success",
        "goodput/s",
        "rejected: throttled/s",
        "rejected: circuit open/s",
        "circuit open",
    ]
    print(h.table(header, rows))


def print_header(args: argparse.Namespace) -> None:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    breaker = otelres.BreakerPolicy()
    throttle = otelres.ThrottlePolicy()
    print("## breaker and adaptive throttling against a partly failing upstream\n")
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
        "- otelres: one `Resilience(base_url, breaker=BreakerPolicy(failure_result=status >= 500[, "
        "throttle=...]), retry=RetryPolicy(attempts=1))` a mode, shared by the threads; a "
        "`CircuitOpenError` is a local rejection, counted by its `reason`"
    )
    print(
        f"- breaker: otelres's defaults: opens at {breaker.failure_rate:.0%} failures over "
        f"{breaker.window_seconds:g} s once {breaker.minimum_calls} calls were seen, stays open "
        f"{breaker.open_seconds:g} s (x {breaker.open_backoff:g} a failed probe, at most "
        f"{breaker.max_open_seconds:g} s), then closes after {breaker.half_open_calls} successful probe(s)"
    )
    print(
        f"- throttle: k in {', '.join(f'{k:g}' for k in args.k) or 'none'}; window {args.window:g} s; "
        f"min_requests {throttle.min_requests}, max_rejection {throttle.max_rejection:g} (the defaults)"
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
        "--k",
        default="2,1.1",
        help="the throttle's k beside the breaker, one mode each, comma-separated (default 2,1.1; "
        "'' for none)",
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
    for k in args.k:  # a bad k or window is a ConfigError now, not mid-run
        otelres.ThrottlePolicy(k=k, window_seconds=args.window)
    otelres.ThrottlePolicy(window_seconds=args.window)
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
    for mode in modes(args):
        result = run_mode(args, mode)
        print_mode(args, result)
        results.append(result)
    print_summary(args, results)
    print(f"\ntotal run time: {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
