"""The demo: workers call the flaky upstream through otelres; a live view prints
each second what the breaker and the retries did, and every transition as it
happens.

The workload uses only the standard library's ``urllib`` wrapped by an explicit
:class:`otelres.Resilience`, so that the demo shows the core at work with
nothing else installed.
"""

from __future__ import annotations

import collections
import contextlib
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any, TextIO

from otelres import _hooks
from otelres._backoff import parse_retry_after
from otelres._hooks import Listener, Transition
from otelres._policy import BreakerPolicy, RetryPolicy
from otelres._resilience import Resilience
from otelres.demo._upstream import PHASES, FlakyUpstream, Phase

__all__ = ["run_demo"]


class _Tally(Listener):
    """Counts what the core reports, per second and in total."""

    def __init__(self, out: TextIO) -> None:
        self._lock = threading.Lock()
        self._out = out
        self.second: collections.Counter[str] = collections.Counter()
        self.total: collections.Counter[str] = collections.Counter()

    def _count(self, key: str) -> None:
        with self._lock:
            self.second[key] += 1
            self.total[key] += 1

    def take_second(self) -> collections.Counter[str]:
        with self._lock:
            second, self.second = self.second, collections.Counter()
        return second

    def on_transition(self, transition: Transition) -> None:
        rate = f" (failure rate {transition.failure_rate:.0%})" if transition.failure_rate else ""
        self._out.write(f"  >> circuit {transition.from_state} -> {transition.to_state}{rate}\n")
        self._count("transitions")

    def on_retry(self, breaker: str, attempt: int, delay: float, reason: str) -> None:
        self._count("retries")

    def on_retry_suppressed(self, breaker: str, attempt: int, reason: str) -> None:
        self._count(f"suppressed:{reason}")

    def on_call(self, breaker: str, outcome: str, duration: float, attempts: int) -> None:
        self._count(outcome)


def _retry_after(exc: BaseException | None, result: object) -> float | None:
    if isinstance(exc, urllib.error.HTTPError):
        return parse_retry_after(exc.headers.get("Retry-After"), now=time.time())
    return None


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=2.0) as response:  # noqa: S310 - our own loopback server
        body: bytes = response.read()
        return body


def _status_of(exc: BaseException) -> bool:
    """Failures for the breaker: server errors and connection trouble (a 404 is the caller's)."""
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code >= 500 or exc.code == 429
    return isinstance(exc, OSError)


def _reason(exc: BaseException | None, result: object) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"status_{exc.code}"
    return "timeout" if isinstance(exc, TimeoutError) else "connect"


def _line(phase: Phase, state: str, second: collections.Counter[str]) -> str:
    suppressed = sum(v for k, v in second.items() if k.startswith("suppressed:"))
    return (
        f"{phase.name:<10} upstream fails {phase.failure_rate:>4.0%} | circuit {state:<9} | "
        f"ok {second['success']:>3}  failed {second['failure']:>3}  rejected {second['rejected']:>3}  "
        f"retries {second['retries']:>3}  suppressed {suppressed:>2}"
    )


def run_demo(
    *, duration: float | None = None, workers: int = 4, rate: float = 40.0, out: TextIO | None = None
) -> dict[str, Any]:
    """Run the demo for ``duration`` seconds (the upstream's whole script by default).

    Returns the totals, so that a test can check the story it told.
    """
    out = out if out is not None else sys.stdout
    upstream = FlakyUpstream().start()
    tally = _Tally(out)
    _hooks.add_listener(tally)
    # Tighter than the defaults so that the story fits in half a minute.
    res = Resilience(
        upstream.url.rstrip("/"),
        breaker=BreakerPolicy(
            failure_rate=0.5,
            minimum_calls=10,
            window_seconds=5,
            open_seconds=2,
            max_open_seconds=8,
            failure_on=_status_of,
        ),
        retry=RetryPolicy(
            attempts=3, base_delay=0.05, max_delay=0.5, retry_after=_retry_after, reason=_reason
        ),
    )
    total_seconds = duration if duration is not None else sum(p.seconds for p in PHASES)
    stop = threading.Event()

    def work() -> None:
        pause = workers / rate
        while not stop.is_set():
            with contextlib.suppress(Exception):  # the tally already counted it
                res.call(_fetch, upstream.url)
            stop.wait(pause)

    threads = [threading.Thread(target=work, name=f"demo-worker-{i}", daemon=True) for i in range(workers)]
    out.write(
        f"otelres demo: {workers} workers call a flaky upstream at {upstream.url} for {total_seconds:.0f} s\n"
    )
    out.write(
        f"breaker {res.name}: trips at 50% failures over 5 s (>= 10 calls), opens 2 s doubling to 8 s\n\n"
    )
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + total_seconds
        while time.monotonic() < deadline:
            time.sleep(1.0)
            out.write(_line(upstream.phase(), res.breaker.state.value, tally.take_second()) + "\n")
            out.flush()
    except KeyboardInterrupt:
        out.write("interrupted\n")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=5)
        _hooks.remove_listener(tally)
        upstream.stop()
    totals = dict(tally.total)
    out.write(
        f"\ntotal: {totals.get('success', 0)} ok, {totals.get('failure', 0)} failed, "
        f"{totals.get('rejected', 0)} rejected without touching the upstream, "
        f"{totals.get('retries', 0)} retries, "
        f"{totals.get('transitions', 0)} transitions; the upstream saw {upstream.requests} requests\n"
    )
    return totals
