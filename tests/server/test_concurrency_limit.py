"""The concurrency limits themselves (otelres.FixedLimit, otelres.AdaptiveLimit), without a server:
Gradient2's moves on a FakeClock, the bounds, admission and its headroom, validation, threads,
fork, and a hypothesis state machine checking every admission against the limit in force.
"""

from __future__ import annotations

import gc
import math
import threading
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from limit_support import WAIT, fork_and_read

import otelres
from otelres import AdaptiveLimit, ConfigError, FixedLimit
from otelres._limit import LIVE, SHED_REASONS, LimitChange, Permit, watch
from otelres.server import asgi
from otelres.telemetry import names
from otelres.testing import FakeClock

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture(autouse=True, scope="module")
def _no_limiter_left() -> Iterator[None]:
    """After this module, no limiter of its tests is alive: the gauges read every live limiter,
    and the telemetry tests that run later count the instruments that report.
    """
    yield
    gc.collect()
    assert not list(LIVE), list(LIVE)


def run(limiter: AdaptiveLimit, clock: FakeClock, *, rtt: float, concurrency: int, seconds: float) -> None:
    """Serve batches of ``concurrency`` requests (at most the limit), each taking ``rtt`` s, for
    ``seconds`` of fake time.
    """
    end = clock.monotonic() + seconds
    while clock.monotonic() < end:
        permits = [limiter.try_acquire() for _ in range(min(concurrency, limiter.limit))]
        clock.advance(rtt)
        for permit in permits:
            assert permit is not None
            permit.release()


def busy(limiter: AdaptiveLimit, clock: FakeClock, rtt: float, seconds: float) -> None:
    """Requests keep the whole limit busy (the service, not the traffic, limits)."""
    run(limiter, clock, rtt=rtt, concurrency=1_000_000, seconds=seconds)


def test_adaptive_limit_has_gradient2s_published_defaults() -> None:
    """Initial and minimum limit 20, maximum 200, smoothing 0.2, RTT tolerance 1.5, long window 600."""
    limiter = AdaptiveLimit()
    assert (limiter.limit, limiter.min_limit, limiter.max_limit) == (20, 20, 200)
    assert (limiter.smoothing, limiter.rtt_tolerance, limiter.long_window) == (0.2, 1.5, 600)
    assert (limiter.window, limiter.window_samples, limiter.queue_size) == (1.0, 10, None)
    assert limiter.in_flight == 0
    assert limiter.shed == dict.fromkeys(SHED_REASONS, 0)


def test_the_limit_grows_while_latency_holds_and_the_limit_is_used(clock: FakeClock) -> None:
    """Steady latency with the limit in use: +smoothing x queue size (0.2 x 4) a window."""
    limiter = AdaptiveLimit(clock=clock)
    busy(limiter, clock, 0.05, 10.0)
    assert 24 <= limiter.limit <= 28
    assert limiter.rtt == pytest.approx(0.05)
    assert limiter.long_rtt == pytest.approx(0.05)


def test_the_limit_does_not_grow_while_the_traffic_limits(clock: FakeClock) -> None:
    """Fewer than half the limit in flight: nothing is learned (Gradient2's app-limited rule)."""
    limiter = AdaptiveLimit(clock=clock)
    run(limiter, clock, rtt=0.05, concurrency=9, seconds=30.0)
    assert limiter.limit == 20
    assert limiter.long_rtt == pytest.approx(0.05)


def test_the_limit_falls_when_latency_rises_past_the_tolerance_and_recovers(clock: FakeClock) -> None:
    """Latency x4 against the long-term average: the limit falls window after window; back to normal,
    it grows again.
    """
    limiter = AdaptiveLimit(min_limit=5, initial_limit=40, clock=clock)
    busy(limiter, clock, 0.05, 12.0)  # the long-term latency learns 50 ms
    high = limiter.limit
    seen = []
    for _ in range(6):
        busy(limiter, clock, 0.2, 1.0)
        seen.append(limiter.limit)
    assert seen == sorted(seen, reverse=True)
    assert seen[-1] < high * 0.75
    low = seen[-1]
    busy(limiter, clock, 0.05, 20.0)
    assert limiter.limit > low


def test_latency_within_the_tolerance_does_not_shrink_the_limit(clock: FakeClock) -> None:
    """1.4 x the long-term latency is within the 1.5 tolerance: the limit keeps growing."""
    limiter = AdaptiveLimit(clock=clock)
    busy(limiter, clock, 0.05, 12.0)
    before = limiter.limit
    busy(limiter, clock, 0.07, 5.0)
    assert limiter.limit > before


def test_one_step_shrinks_at_most_by_half_a_smoothed_step(clock: FakeClock) -> None:
    """The gradient is clamped at 0.5: a 100 x latency spike moves the limit by at most 10 % a window."""
    limiter = AdaptiveLimit(min_limit=1, initial_limit=100, clock=clock)
    busy(limiter, clock, 0.01, 11.0)
    before = limiter.limit
    changes: list[LimitChange] = []
    watch(limiter, changes.append)
    busy(limiter, clock, 1.0, 12.0)  # windows of slow requests only (after the one that mixes both)
    slow = [change for change in changes if change.rtt == pytest.approx(1.0)]
    assert slow
    for change in slow:
        # new = 0.8 * L + 0.2 * (0.5 * L + 10): at most 10 % down (plus the queue allowance)
        assert change.from_limit * 0.9 <= change.to_limit < change.from_limit
        assert change.long_rtt < 0.5
    assert slow[0].from_limit >= before


@pytest.mark.parametrize(("rtt", "expected"), [(0.01, 25), (5.0, 10)])
def test_the_limit_stays_within_min_and_max(clock: FakeClock, rtt: float, expected: int) -> None:
    """Low latency for long: the limit stops at max_limit; very high latency: at min_limit."""
    limiter = AdaptiveLimit(min_limit=10, max_limit=25, initial_limit=15, clock=clock)
    changes: list[LimitChange] = []
    watch(limiter, changes.append)
    busy(limiter, clock, 0.01, 11.0)
    busy(limiter, clock, rtt, 200.0)
    assert limiter.limit == expected
    assert all(10 <= change.to_limit <= 25 for change in changes)


def test_a_window_needs_enough_samples(clock: FakeClock) -> None:
    """Windows of fewer than window_samples requests change nothing."""
    limiter = AdaptiveLimit(window_samples=50, clock=clock)
    busy(limiter, clock, 0.5, 30.0)  # 2 batches of 20 a window: 40 samples
    assert limiter.limit == 20
    assert limiter.rtt == 0.0


def test_requests_not_measured_and_instant_ones_teach_nothing(clock: FakeClock) -> None:
    """Released without measuring (errors, disconnects), or faster than 100 us: no sample."""
    limiter = AdaptiveLimit(clock=clock)
    for _ in range(200):
        permits = [limiter.try_acquire() for _ in range(20)]
        clock.advance(0.1)
        for permit in permits:
            assert permit is not None
            permit.release(measured=False)
    for _ in range(200):
        permits = [limiter.try_acquire() for _ in range(20)]
        clock.advance(0.00001)
        for permit in permits:
            assert permit is not None
            permit.release()
    clock.advance(2.0)
    assert (limiter.limit, limiter.rtt, limiter.in_flight) == (20, 0.0, 0)


def test_an_explicit_queue_size_is_the_growth_allowance(clock: FakeClock) -> None:
    """queue_size=0: steady latency never grows the limit; the default grows it with sqrt(limit)."""
    still = AdaptiveLimit(queue_size=0, clock=clock)
    busy(still, clock, 0.05, 30.0)
    assert still.limit == 20
    big = AdaptiveLimit(initial_limit=150, clock=clock)  # queue size sqrt(150) = 12: +2.4 a window
    busy(big, clock, 0.05, 10.0)
    assert big.limit >= 165


def test_fixed_limit_admits_up_to_the_limit_and_critical_requests_into_the_headroom() -> None:
    """FixedLimit(4, critical_headroom=0.5): 4 requests, then only critical ones, 2 more."""
    limiter = FixedLimit(4, critical_headroom=0.5)
    assert (limiter.limit, limiter.headroom) == (4, 2)
    permits = [limiter.try_acquire() for _ in range(4)]
    assert all(isinstance(p, Permit) for p in permits)
    assert limiter.try_acquire() is None
    critical = [limiter.try_acquire(critical=True) for _ in range(2)]
    assert all(p is not None and p.critical for p in critical)
    assert limiter.try_acquire(critical=True) is None
    assert limiter.in_flight == 6
    for permit in [*permits, *critical]:
        assert permit is not None
        permit.release()
        permit.release()  # a second release does nothing
        assert permit.released
    assert limiter.in_flight == 0


def test_a_critical_request_under_the_limit_is_not_counted_in_the_headroom() -> None:
    """A critical request admitted below the limit takes an ordinary place."""
    limiter = FixedLimit(2)
    permit = limiter.try_acquire(critical=True)
    assert permit is not None
    assert not permit.critical
    assert FixedLimit(1, critical_headroom=0.0).headroom == 0
    assert FixedLimit(1).headroom == 1  # ceil(0.25)


def test_sheds_are_counted_by_reason() -> None:
    """record_shed counts by reason; an unknown reason is a bug."""
    limiter = FixedLimit(1)
    limiter.record_shed("limit")
    limiter.record_shed("limit")
    limiter.record_shed("critical")
    assert limiter.shed == {"limit": 2, "critical": 1}
    with pytest.raises(ValueError, match="reason"):
        limiter.record_shed("queue")


def test_shed_reasons_are_the_telemetry_names() -> None:
    """The core's reasons are the closed set the telemetry names document."""
    assert SHED_REASONS == names.SHED_REASONS


def test_limiters_are_public_and_live_for_the_gauges() -> None:
    """otelres exports both; each lives in the weak set the gauges read while it exists."""
    assert otelres.AdaptiveLimit is AdaptiveLimit
    assert otelres.FixedLimit is FixedLimit
    limiter = FixedLimit(3)
    assert limiter in set(LIVE)
    assert "FixedLimit(3" in repr(limiter)
    assert "AdaptiveLimit(limit=20" in repr(AdaptiveLimit())


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"max_limit": 0}, "max_limit"),
        ({"max_limit": -5}, "max_limit"),
        ({"max_limit": 1.5}, "max_limit"),
        ({"max_limit": True}, "max_limit"),
        ({"max_limit": "200"}, "max_limit"),
        ({"min_limit": 0}, "min_limit"),
        ({"min_limit": 50, "max_limit": 10}, "min_limit"),
        ({"initial_limit": 5}, "initial_limit"),
        ({"initial_limit": 500}, "initial_limit"),
        ({"initial_limit": math.nan}, "initial_limit"),
        ({"smoothing": 0.0}, "smoothing"),
        ({"smoothing": 1.5}, "smoothing"),
        ({"smoothing": math.nan}, "smoothing"),
        ({"rtt_tolerance": 0.9}, "rtt_tolerance"),
        ({"rtt_tolerance": math.inf}, "rtt_tolerance"),
        ({"long_window": 0}, "long_window"),
        ({"queue_size": -1}, "queue_size"),
        ({"window": 0}, "window"),
        ({"window": math.nan}, "window"),
        ({"window_samples": 0}, "window_samples"),
        ({"critical_headroom": -0.1}, "critical_headroom"),
        ({"critical_headroom": 2}, "critical_headroom"),
        ({"clock": "now"}, "clock"),
    ],
)
def test_bad_adaptive_values_are_config_errors_naming_the_key(kwargs: dict[str, Any], key: str) -> None:
    """Each bad value raises ConfigError naming the key, the value and what is allowed."""
    with pytest.raises(ConfigError) as caught:
        AdaptiveLimit(**kwargs)
    assert caught.value.key == key
    assert "allowed" in str(caught.value)


@pytest.mark.parametrize("value", [0, -1, 2.0, math.nan, True, "10", None, 10**7])
def test_bad_fixed_limits_are_config_errors(value: object) -> None:
    """FixedLimit takes a whole number from 1 to a million."""
    with pytest.raises(ConfigError, match="limit"):
        FixedLimit(value)  # type: ignore[arg-type]


def test_min_and_initial_follow_a_max_below_20() -> None:
    """AdaptiveLimit(max_limit=8): min and initial limit 8, not a ConfigError for the defaults."""
    limiter = AdaptiveLimit(max_limit=8)
    assert (limiter.min_limit, limiter.limit, limiter.max_limit) == (8, 8, 8)


def test_threads_never_take_more_than_the_limit_and_its_headroom() -> None:
    """8 threads acquire and release 2000 times each: at no time are more than limit + headroom
    permits out (counted by the test), and none is left in flight.
    """
    limiter = FixedLimit(5, critical_headroom=0.4)
    out = 0
    most = 0
    lock = threading.Lock()
    start = threading.Barrier(8)

    def hammer(critical: bool) -> None:
        nonlocal out, most
        start.wait(WAIT)
        for _ in range(2000):
            permit = limiter.try_acquire(critical=critical)
            if permit is None:
                continue
            with lock:
                out += 1
                most = max(most, out)
            with lock:
                out -= 1
            permit.release()

    threads = [threading.Thread(target=hammer, args=(i % 2 == 0,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 3)
    assert most <= 5 + 2
    assert limiter.in_flight == 0


def test_a_forked_child_starts_with_nothing_in_flight(clock: FakeClock) -> None:
    """Another thread holds a permit (and the lock) at the fork: the child has 0 in flight, a free
    lock, the limit learned, its own shed counts; the parent's permit releases there without effect.
    """
    limiter = AdaptiveLimit(clock=clock)
    busy(limiter, clock, 0.05, 12.0)
    learned = limiter.limit
    held = limiter.try_acquire()
    assert held is not None
    limiter.record_shed("limit")
    locked = threading.Event()
    release = threading.Event()

    def hold_lock() -> None:
        with limiter._lock:
            locked.set()
            release.wait(WAIT)

    holder = threading.Thread(target=hold_lock, daemon=True)
    holder.start()
    try:
        assert locked.wait(WAIT)

        def child() -> str:
            before = limiter.in_flight
            held.release()
            permit = limiter.try_acquire()
            assert permit is not None
            during = limiter.in_flight
            permit.release()
            return f"{before} {limiter.in_flight} {during} {limiter.limit} {limiter.shed['limit']}"

        answer = fork_and_read(child)
    finally:
        release.set()
        holder.join(WAIT)
    assert answer == f"0 0 1 {learned} 0", answer
    assert limiter.in_flight == 1
    held.release()
    assert limiter.in_flight == 0


class Admissions(RuleBasedStateMachine):
    """Random admissions (plain and critical), releases (measured or not, in any order, some
    twice) and clock moves: every admission happens below the limit in force (plus the headroom for
    a critical request), the count in flight is the permits held, never negative.
    """

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.held: list[Permit] = []
        self.limiter: FixedLimit | AdaptiveLimit = FixedLimit(1)

    @initialize(
        adaptive=st.booleans(),
        low=st.integers(1, 6),
        span=st.integers(0, 10),
        headroom=st.sampled_from([0.0, 0.25, 0.5, 1.0]),
    )
    def make(self, adaptive: bool, low: int, span: int, headroom: float) -> None:
        if adaptive:
            self.limiter = AdaptiveLimit(
                min_limit=low,
                max_limit=low + span,
                window=0.5,
                window_samples=1,
                critical_headroom=headroom,
                clock=self.clock,
            )
        else:
            self.limiter = FixedLimit(low + span, critical_headroom=headroom, clock=self.clock)

    @rule(critical=st.booleans())
    def acquire(self, critical: bool) -> None:
        limiter = self.limiter
        before, limit = limiter.in_flight, limiter.limit
        bound = limit + (limiter.headroom if critical else 0)
        permit = limiter.try_acquire(critical=critical)
        if permit is None:
            assert before >= bound
        else:
            assert before < bound
            assert limiter.in_flight == before + 1
            self.held.append(permit)

    @precondition(lambda self: self.held)
    @rule(index=st.integers(0, 1000), measured=st.booleans(), twice=st.booleans())
    def release(self, index: int, measured: bool, twice: bool) -> None:
        permit = self.held.pop(index % len(self.held))
        permit.release(measured=measured)
        if twice:
            permit.release(measured=measured)

    @rule(seconds=st.sampled_from([0.0, 0.001, 0.05, 0.3, 2.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @invariant()
    def in_flight_is_the_permits_held(self) -> None:
        limiter = self.limiter
        assert limiter.in_flight == len(self.held) >= 0
        if isinstance(limiter, AdaptiveLimit):
            assert limiter.min_limit <= limiter.limit <= limiter.max_limit


Admissions.TestCase.settings = settings(
    max_examples=150, stateful_step_count=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_admissions_stay_under_the_limit_in_force = Admissions.TestCase


def test_an_infinite_or_nan_round_trip_teaches_nothing() -> None:
    """A clock gone wrong (an infinite or NaN sample) must not poison the long-term average: the
    limit would then only ever grow."""
    clock = FakeClock()
    limiter = otelres.AdaptiveLimit(window=1.0, window_samples=1, clock=clock)
    for bad in (math.inf, math.nan):
        permit = limiter.try_acquire()
        assert permit is not None
        permit._start = clock.monotonic() - bad
        clock.advance(1.0)
        permit.release()
    assert math.isfinite(limiter.rtt)
    assert math.isfinite(limiter.long_rtt)


def test_the_headroom_is_rounded_before_its_ceiling() -> None:
    """100 x 0.07 is 7.000000000000001 in floats: the headroom is 7 requests, not 8."""
    assert otelres.FixedLimit(100, critical_headroom=0.07).headroom == 7


def test_an_async_critical_predicate_is_refused() -> None:
    """Its result would be a coroutine, never awaited, and always true: every request critical."""

    async def critical(scope: object) -> bool:
        return True

    with pytest.raises(otelres.ConfigError) as info:
        asgi.ResilienceMiddleware(object(), limit=2, critical=critical)  # type: ignore[arg-type]
    assert info.value.key == "critical"
