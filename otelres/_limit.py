"""Concurrency limits: how many requests a server takes on at once, fixed or adapting to latency.

A service past its capacity does not serve more by accepting more: the extra requests wait in
queues (its own, its dependency's), every request slows past its callers' timeouts, they retry,
and goodput collapses. A concurrency limit admits a request only while fewer than ``limit`` are
in flight and sheds the rest at once, which keeps the admitted ones fast.

- :class:`FixedLimit`: a limit an operator chose.
- :class:`AdaptiveLimit`: Netflix concurrency-limits' Gradient2, which finds the limit from the
  latency it measures: while the recent round-trip time stays within ``rtt_tolerance`` times its
  long-term average, the limit grows by a small queue allowance; when it rises past that, the
  limit shrinks in proportion, smoothed (by at most 10 % a window with the defaults).

Both are decisions without I/O, on an injectable :class:`~otelres.Clock`, safe under any number
of threads (one short lock, never held across user code) and across ``fork()``: a forked child
starts with nothing in flight, and a permit taken before the fork is released in the child
without effect. The server middleware (:mod:`otelres.server._shedding`) drives them.
"""

from __future__ import annotations

import inspect
import itertools
import math
import sys
import threading
import weakref
from typing import TYPE_CHECKING, NamedTuple

from . import _fork
from ._clock import MONOTONIC, Clock
from ._errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["LIVE", "SHED_REASONS", "AdaptiveLimit", "FixedLimit", "LimitChange", "Limiter", "Permit", "watch"]

#: Why a request was shed: ``limit``, a request found the limit taken; ``critical``, a critical
#: request found the limit and the headroom above it taken.
SHED_REASONS = ("limit", "critical")

#: The largest limit there is: a process serving more requests at once has other problems.
MAX_LIMIT = 1_000_000
#: Round trips shorter than this are not measured (Netflix's threshold: such a request did no work).
MIN_RTT = 1e-4

#: Every limiter alive in the process (the telemetry's gauges read them; no strong refs).
LIVE: weakref.WeakSet[Limiter] = weakref.WeakSet()


class LimitChange(NamedTuple):
    """What an adaptive limit did at the end of a sampling window, for whoever watches it."""

    from_limit: int
    to_limit: int
    #: The window's average round trip (s): the recent latency.
    rtt: float
    #: The long-term average round trip (s): the latency the limit compares it with.
    long_rtt: float
    #: The most requests in flight during the window.
    in_flight: int


def _check_int(key: str, value: object, low: int, high: int = MAX_LIMIT) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(key, value, f"a whole number from {low} to {high}")
    return value


def _check_float(key: str, value: object, low: float, high: float, *, low_open: bool = False) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not low <= value <= high  # also refuses NaN
        or (low_open and value == low)
    ):
        low_text = f"> {low:g}" if low_open else f">= {low:g}"
        raise ConfigError(key, value, f"a number {low_text} and <= {high:g}")
    return float(value)


class Permit:
    """One admitted request's place under the limit; :meth:`release` gives it back (once)."""

    __slots__ = ("_epoch", "_in_flight", "_limiter", "_released", "_start", "critical")

    def __init__(self, limiter: Limiter, start: float, in_flight: int, epoch: int, critical: bool) -> None:
        self._limiter = limiter
        self._start = start
        self._in_flight = in_flight
        self._epoch = epoch
        self._released = False
        #: Whether it was admitted into the headroom kept for critical requests.
        self.critical = critical

    @property
    def released(self) -> bool:
        """Whether :meth:`release` ran."""
        return self._released

    def release(self, *, measured: bool = True) -> None:
        """The request is over: free its place. With ``measured`` (a response that was sent in
        full), its round trip is a latency sample for an adaptive limit; a request that raised,
        was cut short by its client or failed fast on an open circuit says nothing about the
        service's latency and is not measured. A second call does nothing.
        """
        self._limiter._release(self, measured=measured)


#: Requests shed in this process by reason, over every limiter it has had: a counter must not
#: go down when a limiter that shed requests is collected. Counted lock-free (one next() per
#: shed); :func:`shed_total` reads them.
_SHED_TOTAL = {reason: itertools.count() for reason in SHED_REASONS}
_shed_reads = dict.fromkeys(SHED_REASONS, 0)
_shed_lock = threading.Lock()
_fork.renew(sys.modules[__name__], "_shed_lock")


def _after_fork_in_child() -> None:
    """A forked child reports its own sheds, from zero."""
    global _SHED_TOTAL, _shed_reads  # noqa: PLW0603 - replaced whole in the child
    _SHED_TOTAL = {reason: itertools.count() for reason in SHED_REASONS}
    _shed_reads = dict.fromkeys(SHED_REASONS, 0)


def shed_total() -> dict[str, int]:
    """Requests shed in this process so far, by reason, whatever became of their limiters."""
    with _shed_lock:
        totals = {}
        for reason, counter in _SHED_TOTAL.items():
            totals[reason] = next(counter) - _shed_reads[reason]  # this read takes one value itself
            _shed_reads[reason] += 1
        return totals


def _headroom(limit: int, share: float) -> int:
    """``ceil(limit * share)``, rounded first: 100 x 0.07 is 7.000000000000001 in floats, and
    its headroom is 7, not 8.
    """
    return math.ceil(round(limit * share, 9))


class Limiter:
    """What :class:`FixedLimit` and :class:`AdaptiveLimit` share: the count of requests in flight,
    admission under the limit (and, for critical requests, the headroom above it), the count of
    requests shed by reason, and fork safety.
    """

    def __init__(self, initial: int, *, critical_headroom: float, clock: Clock | None) -> None:
        self._critical_share = _check_float("critical_headroom", critical_headroom, 0.0, 1.0)
        if clock is not None and not isinstance(clock, Clock):
            raise ConfigError("clock", clock, "an otelres.Clock (monotonic, wall, sleep, asleep) or None")
        self._clock: Clock = clock if clock is not None else MONOTONIC
        self._limit = initial
        self._in_flight = 0
        self._epoch = 0
        self._shed = dict.fromkeys(SHED_REASONS, 0)
        self._watchers: tuple[Callable[[], Callable[[LimitChange], None] | None], ...] = ()
        self._lock = threading.Lock()
        _fork.renew(self, "_lock")
        LIVE.add(self)

    def _after_fork_in_child(self) -> None:
        """Nothing is in flight in a new process: those requests were the parent's threads'.

        The permits they hold belong to an older epoch, so releasing one in the child changes
        nothing; the sheds counted were the parent's (a child reports its own, from zero).
        """
        self._epoch += 1
        self._in_flight = 0
        self._shed = dict.fromkeys(SHED_REASONS, 0)

    @property
    def clock(self) -> Clock:
        """The clock its round trips are measured on."""
        return self._clock

    @property
    def limit(self) -> int:
        """How many requests may be in flight now."""
        return self._limit

    @property
    def in_flight(self) -> int:
        """Requests admitted and not yet released."""
        return self._in_flight

    @property
    def headroom(self) -> int:
        """How many critical requests may be in flight beyond :attr:`limit`:
        ``ceil(limit * critical_headroom)``.
        """
        return _headroom(self._limit, self._critical_share)

    @property
    def shed(self) -> dict[str, int]:
        """Requests shed so far in this process, by reason (:data:`SHED_REASONS`)."""
        with self._lock:
            return dict(self._shed)

    def try_acquire(self, *, critical: bool = False) -> Permit | None:
        """A permit if a request may start now, else None (shed it: nothing was counted yet,
        see :meth:`record_shed`). A critical request may also take the headroom above the limit.
        """
        now = self._clock.monotonic()
        with self._lock:
            in_flight = self._in_flight
            bound = self._limit + _headroom(self._limit, self._critical_share) if critical else self._limit
            if in_flight >= bound:
                return None
            self._in_flight = in_flight = in_flight + 1
            return Permit(self, now, in_flight, self._epoch, critical and in_flight > self._limit)

    def record_shed(self, reason: str) -> None:
        """Count one request shed for ``reason`` (one of :data:`SHED_REASONS`)."""
        if reason not in SHED_REASONS:
            raise ValueError(f"reason must be one of {SHED_REASONS}, not {reason!r}")
        with self._lock:
            self._shed[reason] += 1
        next(_SHED_TOTAL[reason])  # the process's running total (a C call: atomic)

    def _release(self, permit: Permit, *, measured: bool) -> None:
        changed = None
        with self._lock:
            if permit._released:
                return
            permit._released = True
            if permit._epoch != self._epoch:
                return
            self._in_flight -= 1
            if measured:
                now = self._clock.monotonic()
                changed = self._sample(now, now - permit._start, permit._in_flight)
        if changed is not None:
            for ref in self._watchers:
                watcher = ref()
                if watcher is not None:
                    watcher(changed)

    def _sample(self, now: float, rtt: float, in_flight: int) -> LimitChange | None:  # noqa: ARG002
        """A request that was admitted with ``in_flight`` in flight (itself included) took
        ``rtt`` s: how the limit changes, if it does (called under the lock).
        """
        return None


def watch(limiter: Limiter, watcher: Callable[[LimitChange], None]) -> None:
    """Call ``watcher`` with each :class:`LimitChange` of ``limiter`` (on the thread that released
    the request ending the window, outside the lock; it must be quick and must not raise).

    A bound method is held weakly: the middleware that watches its limiter and holds it makes no
    reference cycle, so both go as soon as the middleware does (and the telemetry's gauges, which
    read every live limiter, stop reading it then, not at the next cyclic collection).
    """
    ref: Callable[[], Callable[[LimitChange], None] | None]
    if inspect.ismethod(watcher):
        ref = weakref.WeakMethod(watcher)
    else:

        def ref() -> Callable[[LimitChange], None]:
            return watcher

    with limiter._lock:
        limiter._watchers = (*(w for w in limiter._watchers if w() is not None), ref)


class FixedLimit(Limiter):
    """At most ``limit`` requests in flight, and ``ceil(limit * critical_headroom)`` more for
    critical requests. ``ResilienceMiddleware(app, limit=50)`` makes one.
    """

    def __init__(self, limit: int, *, critical_headroom: float = 0.25, clock: Clock | None = None) -> None:
        super().__init__(_check_int("limit", limit, 1), critical_headroom=critical_headroom, clock=clock)

    def __repr__(self) -> str:
        return f"FixedLimit({self._limit}, in_flight={self._in_flight})"


class _ExpAverage:
    """Netflix's ``ExpAvgMeasurement``: the plain mean of the first ``warmup`` samples, then an
    exponential average with the weight of a ``window``-sample moving average (2 / (window + 1)).
    """

    __slots__ = ("count", "factor", "total", "value", "warmup")

    def __init__(self, window: int, warmup: int = 10) -> None:
        self.factor = 2.0 / (window + 1)
        self.warmup = warmup
        self.count = 0
        self.total = 0.0
        self.value = 0.0

    def add(self, sample: float) -> float:
        if self.count < self.warmup:
            self.count += 1
            self.total += sample
            self.value = self.total / self.count
        else:
            self.value += (sample - self.value) * self.factor
        return self.value


class AdaptiveLimit(Limiter):
    """A concurrency limit that follows the latency it measures: Netflix concurrency-limits'
    Gradient2 (``Gradient2Limit`` in a 1 s ``WindowedLimit``), with its published defaults.

    Every ``window`` seconds with at least ``window_samples`` measured requests, the window's
    average round trip (``rtt``) is compared with the long-term one (``long_rtt``, an exponential
    average over ``long_window`` windows)::

        gradient = clamp(rtt_tolerance * long_rtt / rtt, 0.5, 1.0)
        new      = limit * gradient + queue_size
        limit    = clamp(limit * (1 - smoothing) + new * smoothing, min_limit, max_limit)

    While latency stays within ``rtt_tolerance`` times the long-term average, the limit grows by
    ``smoothing * queue_size`` a window; past it, it shrinks in proportion to how far. The limit
    does not grow while fewer than half of it were in flight (the traffic, not the service, is
    what limits), and the long-term average falls faster (x0.95 a window) while the recent
    latency is under half of it, so that the limit recovers after an overload ends.

    ``queue_size`` is the growth allowance: by default 4, or the square root of the limit past 16
    (Netflix's ``SquareRootFunction`` with a floor of 4). ``min_limit`` and ``initial_limit``
    default to 20, or ``max_limit`` when that is lower. ``critical_headroom`` is the share of the
    limit critical requests may take beyond it. ``clock`` is for tests (a FakeClock).
    """

    def __init__(
        self,
        *,
        initial_limit: int | None = None,
        min_limit: int | None = None,
        max_limit: int = 200,
        smoothing: float = 0.2,
        rtt_tolerance: float = 1.5,
        long_window: int = 600,
        queue_size: int | None = None,
        window: float = 1.0,
        window_samples: int = 10,
        critical_headroom: float = 0.25,
        clock: Clock | None = None,
    ) -> None:
        self.max_limit = _check_int("max_limit", max_limit, 1)
        self.min_limit = min(20, max_limit) if min_limit is None else _check_int("min_limit", min_limit, 1)
        if self.min_limit > self.max_limit:
            raise ConfigError("min_limit", min_limit, f"a whole number from 1 to max_limit ({max_limit})")
        if initial_limit is None:
            initial = max(self.min_limit, min(20, self.max_limit))
        else:
            initial = _check_int("initial_limit", initial_limit, self.min_limit, self.max_limit)
        self.smoothing = _check_float("smoothing", smoothing, 0.0, 1.0, low_open=True)
        self.rtt_tolerance = _check_float("rtt_tolerance", rtt_tolerance, 1.0, 100.0)
        self.long_window = _check_int("long_window", long_window, 1, 1_000_000)
        self.queue_size = None if queue_size is None else _check_int("queue_size", queue_size, 0)
        self.window = _check_float("window", window, 0.0, 3600.0, low_open=True)
        self.window_samples = _check_int("window_samples", window_samples, 1, 1_000_000)
        super().__init__(initial, critical_headroom=critical_headroom, clock=clock)
        self._estimate = float(initial)
        self._long = _ExpAverage(self.long_window)
        self._rtt = 0.0
        self._new_window(None)

    def _new_window(self, end: float | None) -> None:
        self._window_end = end
        self._window_total = 0.0
        self._window_count = 0
        self._window_in_flight = 0

    def _after_fork_in_child(self) -> None:
        """As :class:`Limiter`, and the window under way starts again: its samples were counted
        against in-flight figures of the parent's threads. The limit and the long-term latency
        learned are kept.
        """
        super()._after_fork_in_child()
        self._new_window(None)

    @property
    def rtt(self) -> float:
        """The last full window's average round trip, in seconds (0.0 before the first)."""
        return self._rtt

    @property
    def long_rtt(self) -> float:
        """The long-term average round trip, in seconds (0.0 before the first window)."""
        return self._long.value

    def _queue(self, limit: int) -> float:
        if self.queue_size is not None:
            return float(self.queue_size)
        return float(max(4, math.isqrt(limit)))

    def _sample(self, now: float, rtt: float, in_flight: int) -> LimitChange | None:
        if not (rtt >= MIN_RTT and math.isfinite(rtt)):  # also NaN or inf, from a clock gone wrong
            return None
        if self._window_end is None:
            self._window_end = now + self.window
        self._window_total += rtt
        self._window_count += 1
        self._window_in_flight = max(self._window_in_flight, in_flight)
        if now < self._window_end:
            return None
        count, total, most = self._window_count, self._window_total, self._window_in_flight
        self._new_window(now + self.window)
        if count < self.window_samples:
            return None
        return self._update(total / count, most)

    def _update(self, rtt: float, in_flight: int) -> LimitChange | None:
        """Gradient2's step, once a window."""
        estimate = self._estimate
        queue = self._queue(int(estimate))
        self._rtt = rtt
        long_rtt = self._long.add(rtt)
        if long_rtt / rtt > 2:  # the overload is over: let the long-term latency come down faster
            self._long.value *= 0.95
        if in_flight < estimate / 2:  # the traffic limits, not the service: nothing learned
            return None
        gradient = max(0.5, min(1.0, self.rtt_tolerance * long_rtt / rtt))
        new = estimate * gradient + queue
        new = estimate * (1 - self.smoothing) + new * self.smoothing
        new = max(float(self.min_limit), min(float(self.max_limit), new))
        self._estimate = new
        before, after = self._limit, int(new)
        if after == before:
            return None
        self._limit = after
        return LimitChange(before, after, rtt, long_rtt, in_flight)

    def __repr__(self) -> str:
        return (
            f"AdaptiveLimit(limit={self._limit}, in_flight={self._in_flight}, "
            f"min_limit={self.min_limit}, max_limit={self.max_limit})"
        )
