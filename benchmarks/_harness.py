"""Timing helpers shared by the benchmarks: calibration, interleaved rounds, tables.

A contender is a ``run(n)`` callable that makes ``n`` calls through one
library. Each is calibrated once to take about ``target_s`` per run; then every
round runs every contender once, in a freshly shuffled order, so that machine
noise (another process, a frequency change, a GC of the whole heap) hits all
contenders of a round alike. A contender's figure is the median of its rounds.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib
import importlib.metadata
import statistics
import threading
import time
from itertools import repeat
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import ModuleType

__all__ = [
    "Contender",
    "calibrate",
    "fmt_ns",
    "fmt_ratio",
    "measure",
    "optional_import",
    "spread",
    "table",
    "threads_run",
    "version_of",
]

BASELINE = "baseline"
OTELRES = "otelres"
PEER = "peer"
#: A figure of a library otelres builds on (the OpenTelemetry SDK), for reference.
REFERENCE = "reference"


@dataclasses.dataclass
class Contender:
    """One row of a table: a library's way of making the call under test.

    ``run`` is None when the library is missing or could not be set up; ``note``
    then says why. ``kind`` is ``otelres``, ``peer``, ``baseline`` (the bare
    call, for reference: it shows the floor and is never "the fastest peer") or
    ``reference`` (a figure to compare with, never a peer).
    ``before_round`` runs before each of its runs and ``after_round`` after
    each, both outside the timing: a contender that needs process-wide state
    (telemetry switched on) sets it up and tears it down there, so that no
    other contender runs with it. Calibration counts as one run.
    """

    name: str
    kind: str
    run: Callable[[int], Any] | None
    note: str = ""
    after_round: Callable[[], Any] | None = None
    before_round: Callable[[], Any] | None = None
    n: int = 0
    samples: list[float] = dataclasses.field(default_factory=list)

    @property
    def available(self) -> bool:
        return self.run is not None

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")

    @property
    def best(self) -> float:
        """The fastest round: the figure least disturbed by other work on the machine."""
        return min(self.samples) if self.samples else float("nan")


def optional_import(name: str) -> ModuleType | None:
    """The module, or None when it is not installed."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def version_of(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _timed(run: Callable[[int], Any], n: int) -> int:
    """Nanoseconds ``run(n)`` took."""
    start = time.perf_counter_ns()
    run(n)
    return time.perf_counter_ns() - start


def calibrate(run: Callable[[int], Any], target_s: float) -> int:
    """The number of calls for one run of about ``target_s`` (after a warm-up)."""
    target_ns = target_s * 1e9
    n = 16
    while True:
        elapsed = _timed(run, n)
        if elapsed >= target_ns / 8 or n >= 1 << 26:
            break
        n *= 8 if elapsed < target_ns / 64 else 2
    # One more run at the estimated size, now that caches and branch predictors are warm.
    n = max(1, round(n * target_ns / max(elapsed, 1)))
    elapsed = _timed(run, n)
    return max(1, round(n * target_ns / max(elapsed, 1)))


def measure(contenders: list[Contender], rounds: int, target_s: float, seed: int) -> None:
    """Fill each available contender's ``samples`` with ns/call, one per round, interleaved."""
    import random  # noqa: PLC0415 - only the shuffle needs it

    rng = random.Random(seed)
    live = [c for c in contenders if c.available]
    for c in live:
        assert c.run is not None
        if c.before_round is not None:
            c.before_round()
        c.n = calibrate(c.run, target_s)
        if c.after_round is not None:
            c.after_round()
    for _ in range(rounds):
        order = live[:]
        rng.shuffle(order)
        for c in order:
            assert c.run is not None
            if c.before_round is not None:
                c.before_round()
            gc.collect()
            elapsed = _timed(c.run, c.n)
            c.samples.append(elapsed / c.n)
            if c.after_round is not None:
                c.after_round()


def threads_run(call: Callable[[], Any], threads: int, calls_each: int) -> float:
    """Seconds for ``threads`` threads, started together, to make ``calls_each`` calls each.

    Thread creation is outside the timing: the clock starts when all threads
    are past a barrier and stops when the last one is joined.
    """
    barrier = threading.Barrier(threads + 1)

    def worker() -> None:
        barrier.wait()
        for _ in repeat(None, calls_each):
            call()

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    gc.collect()
    barrier.wait()
    start = time.perf_counter()
    for t in pool:
        t.join()
    return time.perf_counter() - start


def spread(samples: list[float]) -> float:
    """The interquartile range of the rounds, relative to their median."""
    if len(samples) < 4:
        return (max(samples) - min(samples)) / statistics.median(samples) if samples else float("nan")
    q1, _, q3 = statistics.quantiles(samples, n=4)
    return (q3 - q1) / statistics.median(samples)


def fmt_ns(ns: float) -> str:
    return f"{ns:,.0f}"


def fmt_ratio(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table, columns padded so that it also reads well as plain text."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        padded = [
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = "| " + " | ".join("-" * (w - 1) + (":" if i else "-") for i, w in enumerate(widths)) + " |"
    return "\n".join([line(header), rule, *(line(r) for r in rows)])
