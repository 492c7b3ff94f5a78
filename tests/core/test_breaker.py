"""Unit tests of CircuitBreaker, driven by a FakeClock (nothing sleeps)."""

from __future__ import annotations

import asyncio
import logging
import traceback
from typing import Any

import pytest

from otelres import BreakerPolicy, CircuitBreaker, CircuitOpenError, Event, Listener, State, Transition
from otelres._breaker import REJECTED
from otelres._events import add_listener
from otelres.testing import FakeClock, capture_events


def make(clock: FakeClock, **policy: Any) -> CircuitBreaker:
    return CircuitBreaker("dep", BreakerPolicy(**policy), clock=clock)


def admit(breaker: CircuitBreaker) -> int:
    token = breaker.acquire()
    assert token != REJECTED, f"rejected in {breaker.state}"
    return token


def succeed(breaker: CircuitBreaker, clock: FakeClock, duration: float = 0.0) -> None:
    token = admit(breaker)
    started = clock.monotonic()
    clock.advance(duration)
    breaker.on_success(token, started)


def fail(breaker: CircuitBreaker, clock: FakeClock, duration: float = 0.0) -> None:
    token = admit(breaker)
    started = clock.monotonic()
    clock.advance(duration)
    breaker.on_failure(token, started)


def run(breaker: CircuitBreaker, clock: FakeClock, outcomes: str) -> None:
    """Complete one attempt per letter: S success, F failure, I ignored."""
    for letter in outcomes:
        if letter == "S":
            succeed(breaker, clock)
        elif letter == "F":
            fail(breaker, clock)
        else:
            breaker.on_ignored(admit(breaker))


def go_to(clock: FakeClock, t: float) -> None:
    clock.advance(t - clock.monotonic())


def tripped(clock: FakeClock, **policy: Any) -> CircuitBreaker:
    """A breaker that one failure has just opened."""
    breaker = make(clock, consecutive_failures=1, **policy)
    fail(breaker, clock)
    assert breaker.state is State.OPEN
    return breaker


def half_open(clock: FakeClock, **policy: Any) -> CircuitBreaker:
    """A breaker whose open period is over (the next acquire turns it half-open)."""
    breaker = tripped(clock, **policy)
    clock.advance(breaker.policy.open_seconds)
    return breaker


class Boom(ConnectionError):
    """A dependency's failure (the default failure_on counts dependency errors only)."""


def raise_(exc: BaseException) -> Any:
    raise exc


# -- the count window ------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcomes", "state"),
    [("SSF", State.CLOSED), ("SSFF", State.OPEN), ("SSSF", State.CLOSED), ("FFFF", State.OPEN)],
)
def test_count_window_trips_at_the_failure_rate(clock: FakeClock, outcomes: str, state: State) -> None:
    """Over the last N calls, a failure rate at or above failure_rate opens the breaker, below it does not."""
    breaker = make(clock, window_calls=4, minimum_calls=4, failure_rate=0.5)
    run(breaker, clock, outcomes)
    assert breaker.state is state


def test_count_window_forgets_the_oldest_call(clock: FakeClock) -> None:
    """A count window holds only the last window_calls outcomes."""
    breaker = make(clock, window_calls=3, minimum_calls=3, failure_rate=0.5)
    run(breaker, clock, "FSSSF")  # the first failure left the window: 1 of 3
    assert breaker.state is State.CLOSED
    stats = breaker.stats()
    assert (stats.window_calls, stats.window_failures) == (3, 1)


def test_no_rate_trip_before_minimum_calls(clock: FakeClock) -> None:
    """The failure rate is not acted on until minimum_calls calls are in the window."""
    breaker = make(clock, window_calls=10, minimum_calls=5, failure_rate=0.5)
    run(breaker, clock, "FFFF")
    assert breaker.state is State.CLOSED
    run(breaker, clock, "F")
    assert breaker.state is State.OPEN


def test_a_success_never_opens_the_circuit(clock: FakeClock) -> None:
    """A success reaching minimum_calls at the threshold rate does not trip; the next failure does."""
    breaker = make(clock, window_calls=10, minimum_calls=2, failure_rate=0.5)
    run(breaker, clock, "FS")  # 1 of 2 failed: at the threshold, but a success is not evaluated
    assert breaker.state is State.CLOSED
    run(breaker, clock, "F")
    assert breaker.state is State.OPEN


def test_ignored_outcomes_stay_out_of_the_window(clock: FakeClock) -> None:
    """An ignored outcome counts neither as a call nor as a failure."""
    breaker = make(clock, window_calls=10, minimum_calls=2, failure_rate=0.5)
    run(breaker, clock, "FIII")
    stats = breaker.stats()
    assert (stats.window_calls, stats.ignored, stats.state) == (1, 3, State.CLOSED)
    run(breaker, clock, "F")
    assert breaker.state is State.OPEN


def test_lock_free_successes_are_folded_into_the_window(clock: FakeClock) -> None:
    """Plain successes recorded without the lock still dilute the failure rate of the next failure."""
    breaker = make(clock, window_calls=100, minimum_calls=4, failure_rate=0.5)
    run(breaker, clock, "F" + "S" * 50 + "F")
    assert breaker.state is State.CLOSED
    stats = breaker.stats()
    assert (stats.successes, stats.failures, stats.window_calls, stats.window_failures) == (50, 2, 52, 2)


@pytest.mark.parametrize("slow", [False, True], ids=["failure_rate", "slow_call_rate"])
def test_rate_exactly_at_the_threshold_trips(clock: FakeClock, slow: bool) -> None:
    """7 bad calls of 25 reach a rate of 0.28 and trip a breaker whose threshold is 0.28."""
    rates = {"slow_call_rate": 0.28, "failure_rate": 1.0} if slow else {"failure_rate": 0.28}
    breaker = make(clock, window_calls=25, minimum_calls=25, slow_call_seconds=1.0, **rates)
    run(breaker, clock, "S" * 18)
    for _ in range(7):
        if slow:
            succeed(breaker, clock, duration=1.0)
        else:
            fail(breaker, clock)
    assert breaker.state is State.OPEN


# -- the time window ------------------------------------------------------------


def test_time_window_buckets_are_whole_seconds(clock: FakeClock) -> None:
    """A time window of N seconds holds the current second and the N-1 before it."""
    breaker = make(clock, window_seconds=2, minimum_calls=100)
    go_to(clock, 1000.75)
    fail(breaker, clock)
    go_to(clock, 1001.25)
    fail(breaker, clock)
    assert breaker.stats().window_calls == 2
    go_to(clock, 1001.875)
    assert breaker.stats().window_calls == 2
    go_to(clock, 1002.0)  # second 1000 has left the window
    assert breaker.stats().window_calls == 1
    go_to(clock, 1003.0)
    assert breaker.stats().window_calls == 0


def test_time_window_expired_failures_do_not_trip(clock: FakeClock) -> None:
    """Failures older than window_seconds no longer count towards minimum_calls or the rate."""
    breaker = make(clock, window_seconds=3, minimum_calls=3, failure_rate=0.5)
    run(breaker, clock, "FF")
    clock.advance(3.0)
    run(breaker, clock, "F")
    assert breaker.state is State.CLOSED
    assert breaker.stats().window_calls == 1


def test_time_window_recent_failures_trip(clock: FakeClock) -> None:
    """Failures within window_seconds all count towards the trip."""
    breaker = make(clock, window_seconds=3, minimum_calls=3, failure_rate=0.5)
    run(breaker, clock, "FF")
    clock.advance(2.5)
    run(breaker, clock, "F")
    assert breaker.state is State.OPEN


def test_time_window_success_counts_in_the_second_it_started(clock: FakeClock) -> None:
    """A lock-free success that ran from second 1000 into 1001 is counted in second 1000."""
    breaker = make(clock, window_seconds=2, minimum_calls=100)
    go_to(clock, 1000.25)
    fail(breaker, clock)  # a locked record: second 1000 becomes the current bucket
    go_to(clock, 1000.5)
    succeed(breaker, clock, duration=1.0)  # started in 1000, ended in 1001
    go_to(clock, 1001.875)
    assert breaker.stats().window_calls == 2
    go_to(clock, 1002.0)
    assert breaker.stats().window_calls == 0


def test_time_window_success_whose_second_has_left_is_dropped(clock: FakeClock) -> None:
    """A long success reported after its start second left the window is counted, but not in the window."""
    breaker = make(clock, window_seconds=2, minimum_calls=100)
    go_to(clock, 1000.25)
    fail(breaker, clock)
    go_to(clock, 1000.5)
    token = admit(breaker)
    go_to(clock, 1002.0)
    assert breaker.stats().window_calls == 0
    go_to(clock, 1002.25)
    breaker.on_success(token, 1000.5)
    stats = breaker.stats()
    assert (stats.successes, stats.window_calls) == (1, 0)


@pytest.mark.parametrize("case", ["locked_path", "earlier_bucket"])
def test_time_window_success_attribution_does_not_depend_on_other_calls(clock: FakeClock, case: str) -> None:
    """A success that started in second 1000 has left a 2-second window at 1002.0, on either record path."""
    breaker = make(clock, window_seconds=2, minimum_calls=100)
    token = admit(breaker)  # started at 1000.0
    if case == "earlier_bucket":
        go_to(clock, 1001.5)
        fail(breaker, clock)  # moves the current bucket to second 1001
    go_to(clock, 1001.75)
    breaker.on_success(token, 1000.0)
    go_to(clock, 1002.0)
    stats = breaker.stats()
    assert stats.window_calls - stats.window_failures == 0


# -- consecutive failures ------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcomes", "state"),
    [("FFF", State.OPEN), ("FFSFF", State.CLOSED), ("FFIF", State.OPEN), ("FFSFFF", State.OPEN)],
)
def test_consecutive_failures_trip(clock: FakeClock, outcomes: str, state: State) -> None:
    """consecutive_failures failures in a row trip regardless of the rate; a success breaks the run."""
    breaker = make(clock, consecutive_failures=3, minimum_calls=1000, window_calls=100)
    run(breaker, clock, outcomes)
    assert breaker.state is state


@pytest.mark.parametrize(
    ("policy", "step"),
    [
        ({"window_calls": 100}, 0.0),  # successes recorded without the lock
        ({"window_seconds": 30.0}, 1.0),  # the first success of a new second takes the lock
        ({"slow_call_seconds": 10.0}, 0.0),  # with slow calls measured, every success takes the lock
    ],
    ids=["lock_free", "new_second", "slow_calls_measured"],
)
def test_a_success_breaks_the_run_on_every_path(
    clock: FakeClock, policy: dict[str, Any], step: float
) -> None:
    """However a plain success is recorded, it resets the count of consecutive failures."""
    breaker = make(clock, consecutive_failures=3, minimum_calls=1000, **policy)
    for letter in "FFSFF":
        clock.advance(step)
        run(breaker, clock, letter)
    assert breaker.state is State.CLOSED
    run(breaker, clock, "F")
    assert breaker.state is State.OPEN


def test_slow_success_breaks_a_run_of_failures(clock: FakeClock) -> None:
    """A slow call that succeeded is a success, so F F slow-S F is not three failures in a row."""
    breaker = make(clock, consecutive_failures=3, minimum_calls=1000, slow_call_seconds=1.0)
    run(breaker, clock, "FF")
    succeed(breaker, clock, duration=1.0)
    run(breaker, clock, "F")
    assert breaker.state is State.CLOSED


# -- slow calls ----------------------------------------------------------------------


def test_slow_call_rate_trips(clock: FakeClock) -> None:
    """Slow successes at or above slow_call_rate of the window trip the breaker."""
    breaker = make(clock, window_calls=4, minimum_calls=4, slow_call_seconds=1.0, slow_call_rate=0.5)
    run(breaker, clock, "SS")
    succeed(breaker, clock, duration=1.0)
    assert breaker.state is State.CLOSED  # minimum_calls not reached
    succeed(breaker, clock, duration=2.0)
    assert breaker.state is State.OPEN
    assert breaker.stats().successes == 4


def test_slow_calls_below_the_rate_do_not_trip(clock: FakeClock) -> None:
    """One slow call in four stays below a slow_call_rate of 0.5."""
    breaker = make(clock, window_calls=4, minimum_calls=4, slow_call_seconds=1.0, slow_call_rate=0.5)
    run(breaker, clock, "SSS")
    succeed(breaker, clock, duration=5.0)
    assert breaker.state is State.CLOSED
    assert breaker.stats().window_slow == 1


def test_calls_slower_than_the_time_window_trip_on_slow_call_rate(clock: FakeClock) -> None:
    """Overlapping calls of 6 s (slow_call_seconds=2) trip slow_call_rate=0.5 even in a 5-second window."""
    breaker = make(clock, window_seconds=5, minimum_calls=3, slow_call_seconds=2.0, slow_call_rate=0.5)
    started = clock.monotonic()
    tokens = [admit(breaker) for _ in range(3)]
    clock.advance(6.0)
    for token in tokens:
        breaker.on_success(token, started)
    assert breaker.state is State.OPEN
    assert breaker.stats().successes == 3


@pytest.mark.parametrize(("duration", "slow"), [(0.75, 0), (1.0, 1), (1.5, 1)])
def test_slow_means_at_least_slow_call_seconds(clock: FakeClock, duration: float, slow: int) -> None:
    """A call is slow when it took slow_call_seconds or longer."""
    breaker = make(clock, window_calls=4, minimum_calls=100, slow_call_seconds=1.0)
    succeed(breaker, clock, duration=duration)
    assert breaker.stats().window_slow == slow


# -- open, and how long ---------------------------------------------------------------


def test_open_rejects_until_open_seconds_have_passed(clock: FakeClock) -> None:
    """An open breaker rejects for open_seconds, then turns half-open on the next acquire."""
    breaker = tripped(clock, open_seconds=5.0)
    clock.advance(4.5)
    assert breaker.acquire() == REJECTED
    assert breaker.retry_after() == pytest.approx(0.5)
    clock.advance(0.5)
    assert breaker.state is State.OPEN  # nothing moves until a call asks
    assert breaker.acquire() != REJECTED
    assert breaker.state is State.HALF_OPEN


def test_open_duration_grows_with_each_failed_probe_and_is_capped(clock: FakeClock) -> None:
    """Each failed probe multiplies the open period by open_backoff, capped; closing resets it."""
    breaker = tripped(clock, open_seconds=1.0, open_backoff=2.0, max_open_seconds=5.0)
    waits = [breaker.retry_after()]
    for _ in range(4):
        clock.advance(waits[-1])
        fail(breaker, clock)
        waits.append(breaker.retry_after())
    assert waits == [1.0, 2.0, 4.0, 5.0, 5.0]
    clock.advance(5.0)
    succeed(breaker, clock)
    assert breaker.state is State.CLOSED
    fail(breaker, clock)
    assert breaker.retry_after() == 1.0


def test_reset_forgets_the_open_duration_growth(clock: FakeClock) -> None:
    """After reset() the next trip opens for open_seconds again."""
    breaker = tripped(clock, open_seconds=1.0, open_backoff=3.0, max_open_seconds=60.0)
    clock.advance(1.0)
    fail(breaker, clock)
    assert breaker.retry_after() == 3.0
    breaker.reset()
    fail(breaker, clock)
    assert breaker.retry_after() == 1.0


def test_a_long_outage_does_not_overflow_the_open_duration(clock: FakeClock) -> None:
    """With the default backoff and cap, 1100 failed probes in a row keep the breaker cycling normally."""
    breaker = tripped(clock)
    for _ in range(1100):
        clock.advance(breaker.retry_after())
        fail(breaker, clock)
    assert breaker.state is State.OPEN
    assert breaker.retry_after() == 60.0


# -- half-open ------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3])
def test_half_open_admits_exactly_half_open_calls(clock: FakeClock, k: int) -> None:
    """Half-open issues half_open_calls permits and rejects everything else while they run."""
    breaker = half_open(clock, half_open_calls=k)
    tokens = [breaker.acquire() for _ in range(k + 5)]
    assert [t != REJECTED for t in tokens] == [True] * k + [False] * 5
    assert breaker.stats().rejected == 5
    assert breaker.retry_after() == 0.0


def test_half_open_closes_when_every_probe_succeeded(clock: FakeClock) -> None:
    """With half_open_calls=3 the breaker closes on the third probe success, with an empty window."""
    breaker = half_open(clock, half_open_calls=3)
    tokens = [admit(breaker) for _ in range(3)]
    breaker.on_success(tokens[0], clock.monotonic())
    breaker.on_success(tokens[1], clock.monotonic())
    assert breaker.state is State.HALF_OPEN
    breaker.on_success(tokens[2], clock.monotonic())
    assert breaker.state is State.CLOSED
    assert breaker.stats().window_calls == 0


def test_half_open_reopens_on_one_failed_probe(clock: FakeClock) -> None:
    """One failed probe reopens the breaker; a later probe success cannot close it."""
    breaker = half_open(clock, half_open_calls=3)
    a, b, c = (admit(breaker) for _ in range(3))
    breaker.on_success(a, clock.monotonic())
    breaker.on_failure(b, clock.monotonic())
    assert breaker.state is State.OPEN
    breaker.on_success(c, clock.monotonic())
    assert breaker.state is State.OPEN
    assert breaker.acquire() == REJECTED


def test_half_open_reopens_on_a_slow_probe(clock: FakeClock) -> None:
    """A probe that succeeded but took slow_call_seconds or longer reopens the breaker."""
    breaker = half_open(clock, slow_call_seconds=2.0)
    succeed(breaker, clock, duration=2.0)
    assert breaker.state is State.OPEN


def test_ignored_probe_returns_its_permit(clock: FakeClock) -> None:
    """An ignored probe gives its permit back and does not count towards closing."""
    breaker = half_open(clock, half_open_calls=2)
    first = admit(breaker)
    second = admit(breaker)
    assert breaker.acquire() == REJECTED
    breaker.on_ignored(first)
    third = admit(breaker)
    assert breaker.acquire() == REJECTED
    breaker.on_success(second, clock.monotonic())
    assert breaker.state is State.HALF_OPEN
    breaker.on_success(third, clock.monotonic())
    assert breaker.state is State.CLOSED


# -- manual states ---------------------------------------------------------------------


def test_force_open_rejects_until_reset(clock: FakeClock) -> None:
    """forced_open rejects every call however long it lasts; reset() closes it."""
    breaker = make(clock)
    breaker.force_open()
    clock.advance(10_000.0)
    assert breaker.acquire() == REJECTED
    assert breaker.state is State.FORCED_OPEN
    assert breaker.retry_after() > 0.0
    breaker.reset()
    assert breaker.state is State.CLOSED
    succeed(breaker, clock)


def test_disable_admits_everything_and_never_trips(clock: FakeClock) -> None:
    """A disabled breaker admits every call, trips on nothing, and still counts outcomes."""
    breaker = make(clock, consecutive_failures=1, window_calls=4, minimum_calls=1)
    breaker.disable()
    run(breaker, clock, "FFFFFSI")
    stats = breaker.stats()
    assert stats.state is State.DISABLED
    assert (stats.failures, stats.successes, stats.ignored, stats.rejected) == (5, 1, 1, 0)
    breaker.reset()
    assert breaker.stats().window_calls == 0


def test_reset_forgets_the_window(clock: FakeClock) -> None:
    """reset() empties the window and the run of failures, so old failures cannot trip."""
    breaker = make(clock, window_calls=10, minimum_calls=4, failure_rate=0.5, consecutive_failures=4)
    run(breaker, clock, "FFF")
    breaker.transition_to(State.FORCED_OPEN)
    breaker.reset()
    run(breaker, clock, "F")
    assert breaker.state is State.CLOSED
    assert breaker.stats().window_calls == 1


def test_transition_to_open_starts_a_normal_open_period(clock: FakeClock) -> None:
    """transition_to('open') opens for open_seconds, after which probes are admitted."""
    breaker = make(clock, open_seconds=2.0)
    breaker.transition_to("open")
    assert breaker.state is State.OPEN
    assert breaker.retry_after() == 2.0
    clock.advance(2.0)
    succeed(breaker, clock)
    assert breaker.state is State.CLOSED


def test_transition_to_the_current_state_does_nothing(clock: FakeClock) -> None:
    """A manual move to the state the breaker is in reports no transition and keeps the open period."""
    breaker = tripped(clock, open_seconds=2.0)
    clock.advance(1.0)
    with capture_events() as events:
        breaker.transition_to(State.OPEN)
        breaker.transition_to("open")
    assert events.transitions == []
    assert breaker.retry_after() == 1.0


def test_transition_to_rejects_an_unknown_state(clock: FakeClock) -> None:
    """An unknown state name raises ValueError and changes nothing."""
    breaker = make(clock)
    with pytest.raises(ValueError, match="ajar"):
        breaker.transition_to("ajar")
    assert breaker.state is State.CLOSED


# -- what counts as a failure --------------------------------------------------------------


def test_exceptions_outside_failure_on_count_as_successes(clock: FakeClock) -> None:
    """With failure_on=ConnectionError and others_succeed, a ValueError is re-raised but recorded as a
    success (the dependency answered)."""
    breaker = make(clock, failure_on=ConnectionError, others_succeed=True, consecutive_failures=1)
    with pytest.raises(ValueError):
        breaker.call(raise_, ValueError("bad input"))
    assert breaker.stats().successes == 1
    assert breaker.state is State.CLOSED
    with pytest.raises(ConnectionError):
        breaker.call(raise_, ConnectionError("refused"))
    assert breaker.stats().failures == 1
    assert breaker.state is State.OPEN


def test_ignore_wins_over_failure_on(clock: FakeClock) -> None:
    """An exception matched by ignore counts neither way even when failure_on matches it too."""
    breaker = make(clock, failure_on=(OSError,), ignore=lambda e: isinstance(e, FileNotFoundError))
    with pytest.raises(FileNotFoundError):
        breaker.call(raise_, FileNotFoundError("x"))
    with pytest.raises(PermissionError):
        breaker.call(raise_, PermissionError("x"))
    stats = breaker.stats()
    assert (stats.ignored, stats.failures, stats.successes) == (1, 1, 0)


@pytest.mark.parametrize(
    "exc",
    [KeyboardInterrupt(), SystemExit(1), asyncio.CancelledError(), CircuitOpenError("inner", 1.0)],
    ids=["KeyboardInterrupt", "SystemExit", "CancelledError", "CircuitOpenError"],
)
def test_cancellations_and_rejections_are_ignored(clock: FakeClock, exc: BaseException) -> None:
    """A BaseException or an inner CircuitOpenError ending a probe is ignored and returns the permit."""
    breaker = half_open(clock)
    with pytest.raises(type(exc)):
        breaker.call(raise_, exc)
    assert breaker.stats().ignored == 1
    assert breaker.state is State.HALF_OPEN
    succeed(breaker, clock)
    assert breaker.state is State.CLOSED


def test_base_exception_matched_by_failure_on_is_a_failure(clock: FakeClock) -> None:
    """A policy that names a BaseException in failure_on counts it as a failure."""
    breaker = make(clock, failure_on=BaseException, consecutive_failures=1)
    with pytest.raises(KeyboardInterrupt):
        breaker.call(raise_, KeyboardInterrupt())
    assert breaker.state is State.OPEN


def test_failure_result_marks_results_as_failures(clock: FakeClock) -> None:
    """A result that failure_result flags is returned unchanged but counted as a failure."""
    breaker = make(clock, failure_result=lambda status: status >= 500, consecutive_failures=2)
    assert breaker.call(lambda: 200) == 200
    assert breaker.call(lambda: 503) == 503
    assert breaker.state is State.CLOSED
    assert breaker.call(lambda: 502) == 502
    assert breaker.state is State.OPEN
    stats = breaker.stats()
    assert (stats.successes, stats.failures) == (1, 2)


@pytest.mark.parametrize("where", ["failure_result", "failure_on"])
def test_a_raising_predicate_does_not_leak_the_probe_permit(clock: FakeClock, where: str) -> None:
    """A probe whose classifying predicate raised counts as a failure, so the breaker reopens and recovers."""
    breaker = half_open(clock, **{where: lambda _: 1 / 0})
    args = (raise_, Boom()) if where == "failure_on" else (int,)
    with pytest.raises(ZeroDivisionError):
        breaker.call(*args)
    assert breaker.state is State.OPEN
    assert breaker.stats().failures == 2
    clock.advance(breaker.policy.max_open_seconds)
    assert breaker.acquire() != REJECTED


def test_a_raising_predicate_in_an_attempt_block_records_a_failure(clock: FakeClock) -> None:
    """`with breaker.attempt()` records a failure when failure_on raises, then lets that error out."""
    breaker = half_open(clock, failure_on=lambda _: 1 / 0)
    with pytest.raises(ZeroDivisionError), breaker.attempt():
        raise Boom
    assert breaker.state is State.OPEN


@pytest.mark.parametrize(
    ("exc", "result", "expected"),
    [(None, 200, False), (None, 503, True), (Boom(), None, True), (ValueError(), None, False)],
)
def test_settle_classifies_and_records(
    clock: FakeClock, exc: BaseException | None, result: int | None, expected: bool
) -> None:
    """settle() classifies an outcome like call() does, records it and returns the verdict."""
    breaker = make(clock, failure_on=Boom, failure_result=lambda status: status >= 500, others_succeed=True)
    token = admit(breaker)
    assert breaker.settle(token, clock.monotonic(), exc, result) is expected
    stats = breaker.stats()
    assert (stats.failures, stats.successes) == (int(expected), int(not expected))


# -- stale tokens --------------------------------------------------------------------------


def test_a_closed_token_cannot_close_a_half_open_breaker(clock: FakeClock) -> None:
    """Outcomes admitted while closed and reported after the trip neither close nor free a probe permit."""
    breaker = make(clock, consecutive_failures=1, open_seconds=1.0)
    old_success, old_ignored = admit(breaker), admit(breaker)
    fail(breaker, clock)
    clock.advance(1.0)
    probe = admit(breaker)
    assert breaker.state is State.HALF_OPEN
    breaker.on_success(old_success, clock.monotonic())
    assert breaker.state is State.HALF_OPEN
    breaker.on_ignored(old_ignored)
    assert breaker.acquire() == REJECTED
    breaker.on_success(probe, clock.monotonic())
    assert breaker.state is State.CLOSED
    stats = breaker.stats()
    assert (stats.successes, stats.ignored) == (2, 1)


def test_a_stale_failure_cannot_trip_the_new_state(clock: FakeClock) -> None:
    """A probe failure reported after a reset is counted but does not enter the new window."""
    breaker = half_open(clock)
    probe = admit(breaker)
    breaker.reset()
    breaker.on_failure(probe, clock.monotonic())
    stats = breaker.stats()
    assert stats.state is State.CLOSED
    assert (stats.failures, stats.window_calls) == (2, 0)


def test_a_stale_success_stays_out_of_the_new_window(clock: FakeClock) -> None:
    """A success admitted before a trip and reported after a reset stays out of the window and the run."""
    breaker = make(clock, consecutive_failures=2, window_calls=10, minimum_calls=1000)
    old = admit(breaker)
    run(breaker, clock, "FF")
    assert breaker.state is State.OPEN
    breaker.reset()
    run(breaker, clock, "F")
    breaker.on_success(old, clock.monotonic())
    stats = breaker.stats()
    assert (stats.successes, stats.window_calls) == (1, 1)
    run(breaker, clock, "F")
    assert breaker.state is State.OPEN


def test_a_stale_probe_cannot_move_a_reopened_breaker(clock: FakeClock) -> None:
    """Outcomes of an earlier half-open episode neither lengthen the open period nor free a probe permit."""
    breaker = half_open(clock, half_open_calls=3, open_seconds=1.0, open_backoff=2.0, max_open_seconds=8.0)
    a, b, c = admit(breaker), admit(breaker), admit(breaker)
    breaker.on_failure(a, clock.monotonic())
    breaker.on_failure(b, clock.monotonic())
    assert breaker.retry_after() == 2.0  # one reopen, not two
    clock.advance(2.0)
    probes = [admit(breaker)]
    breaker.on_ignored(c)
    probes += [admit(breaker), admit(breaker)]
    assert breaker.acquire() == REJECTED
    for probe in probes:
        breaker.on_success(probe, clock.monotonic())
    assert breaker.state is State.CLOSED


# -- reading ----------------------------------------------------------------------------------


def test_retry_after_counts_down_to_zero(clock: FakeClock) -> None:
    """retry_after() is the time left in the open period, and 0.0 while calls are admitted."""
    breaker = make(clock, consecutive_failures=1, open_seconds=5.0)
    assert breaker.retry_after() == 0.0
    fail(breaker, clock)
    assert breaker.retry_after() == 5.0
    clock.advance(2.0)
    assert breaker.retry_after() == 3.0
    clock.advance(4.0)
    assert breaker.retry_after() == 0.0
    admit(breaker)
    assert breaker.retry_after() == 0.0


def test_stats_counts_every_outcome(clock: FakeClock) -> None:
    """stats() reports successes, failures, ignored, rejected, transitions and the window."""
    breaker = make(clock, window_calls=10, minimum_calls=6, failure_rate=0.5)
    run(breaker, clock, "SSFIS")
    stats = breaker.stats()
    assert stats == type(stats)(State.CLOSED, 3, 1, 1, 0, 0, 4, 1, 0)
    assert stats.failure_rate == 0.25
    run(breaker, clock, "FF")
    assert breaker.state is State.OPEN
    assert breaker.acquire() == REJECTED
    assert breaker.acquire() == REJECTED
    stats = breaker.stats()
    assert (stats.successes, stats.failures, stats.ignored) == (3, 3, 1)
    assert (stats.rejected, stats.transitions) == (2, 1)


def test_stats_failure_rate_of_an_empty_window_is_zero(clock: FakeClock) -> None:
    """An empty window reads a failure rate of 0.0 rather than dividing by zero."""
    assert make(clock).stats().failure_rate == 0.0


def test_stats_window_is_empty_while_not_closed(clock: FakeClock) -> None:
    """BreakerStats documents window_* as empty while the breaker is not closed."""
    breaker = make(clock, window_calls=10, minimum_calls=2, failure_rate=0.5)
    run(breaker, clock, "FF")
    stats = breaker.stats()
    assert stats.state is State.OPEN
    assert (stats.window_calls, stats.window_failures) == (0, 0)


# -- drivers --------------------------------------------------------------------------------------


def test_call_returns_the_result_and_reraises(clock: FakeClock) -> None:
    """call() passes arguments through, returns the result, and re-raises the same exception object."""
    breaker = make(clock)
    assert breaker.call(lambda a, b=0: a + b, 1, b=2) == 3
    error = Boom("x")
    with pytest.raises(Boom) as caught:
        breaker.call(raise_, error)
    assert caught.value is error
    stats = breaker.stats()
    assert (stats.successes, stats.failures) == (1, 1)


def test_call_measures_slowness_with_the_breaker_clock(clock: FakeClock) -> None:
    """call() times the attempt with the breaker's clock, so a call that advanced it is slow."""
    breaker = make(clock, slow_call_seconds=1.0, window_calls=5, minimum_calls=5)
    breaker.call(clock.advance, 1.0)
    breaker.call(clock.advance, 0.5)
    stats = breaker.stats()
    assert (stats.window_calls, stats.window_slow) == (2, 1)


def test_acall_runs_a_coroutine_through_the_breaker(clock: FakeClock) -> None:
    """acall() awaits the function, returns its result and records failures like call()."""
    breaker = make(clock, consecutive_failures=2)

    async def echo(value: int) -> int:
        await asyncio.sleep(0)
        return value

    async def broken() -> None:
        await asyncio.sleep(0)
        raise Boom

    async def main() -> None:
        assert await breaker.acall(echo, 7) == 7
        for _ in range(2):
            with pytest.raises(Boom):
                await breaker.acall(broken)
        with pytest.raises(CircuitOpenError):
            await breaker.acall(echo, 8)

    asyncio.run(main())
    stats = breaker.stats()
    assert (stats.successes, stats.failures, stats.rejected, stats.state) == (1, 2, 1, State.OPEN)


def test_acall_cancelled_probe_returns_its_permit(clock: FakeClock) -> None:
    """A half-open probe whose task is cancelled mid-call is ignored and frees its permit."""
    breaker = half_open(clock)

    async def main() -> None:
        entered = asyncio.Event()
        never = asyncio.Event()

        async def hang() -> None:
            entered.set()
            await never.wait()

        task = asyncio.create_task(breaker.acall(hang))
        await entered.wait()
        assert breaker.acquire() == REJECTED
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert breaker.stats().ignored == 1
    succeed(breaker, clock)
    assert breaker.state is State.CLOSED


def test_attempt_guards_a_with_block(clock: FakeClock) -> None:
    """`with breaker.attempt()` records the block's exception or success and rejects when open."""
    breaker = make(clock, consecutive_failures=1)
    with breaker.attempt():
        pass
    with pytest.raises(Boom), breaker.attempt():
        raise Boom
    assert breaker.state is State.OPEN
    entered = False
    with pytest.raises(CircuitOpenError), breaker.attempt():
        entered = True
    assert not entered
    stats = breaker.stats()
    assert (stats.successes, stats.failures, stats.rejected) == (1, 1, 1)


def test_attempt_guards_an_async_with_block(clock: FakeClock) -> None:
    """`async with breaker.attempt()` records like the sync form and frees a probe on cancellation."""
    breaker = half_open(clock, half_open_calls=1)

    async def main() -> None:
        with pytest.raises(asyncio.CancelledError):
            async with breaker.attempt():
                raise asyncio.CancelledError
        async with breaker.attempt():
            await asyncio.sleep(0)

    asyncio.run(main())
    stats = breaker.stats()
    assert (stats.ignored, stats.successes, stats.state) == (1, 1, State.CLOSED)


def test_attempt_rejection_in_async_with(clock: FakeClock) -> None:
    """`async with breaker.attempt()` raises CircuitOpenError on entry when the breaker is open."""
    breaker = tripped(clock)

    async def main() -> bool:
        entered = False
        with pytest.raises(CircuitOpenError):
            async with breaker.attempt():
                entered = True
        return entered

    assert asyncio.run(main()) is False
    assert breaker.stats().rejected == 1


def test_rejections_raise_a_fresh_error_each_time(clock: FakeClock) -> None:
    """Each rejection raises a new CircuitOpenError with the breaker name and retry_after."""
    breaker = tripped(clock, open_seconds=5.0)
    errors = []
    for _ in range(3):
        with pytest.raises(CircuitOpenError) as caught:
            breaker.call(lambda: None)
        errors.append(caught.value)
        clock.advance(1.0)
    assert len({id(e) for e in errors}) == 3
    assert [e.breaker for e in errors] == ["dep"] * 3
    assert [e.retry_after for e in errors] == [5.0, 4.0, 3.0]
    depths = {len(traceback.extract_tb(e.__traceback__)) for e in errors}
    assert len(depths) == 1  # a shared error object would collect one more frame per raise


def test_half_open_rejection_says_retry_now(clock: FakeClock) -> None:
    """A call refused because every probe permit is taken carries retry_after 0.0."""
    breaker = half_open(clock)
    admit(breaker)
    with pytest.raises(CircuitOpenError) as caught:
        breaker.call(lambda: None)
    assert caught.value.retry_after == 0.0


# -- transitions ---------------------------------------------------------------------------------


def test_transitions_are_reported_in_order_with_gapless_seq(clock: FakeClock) -> None:
    """Every state change reaches on_transition as a Transition numbered 1, 2, 3, ... with its time."""
    breaker = make(clock, window_calls=4, minimum_calls=4, failure_rate=0.5, open_seconds=1.0)
    with capture_events() as events:
        run(breaker, clock, "SSFF")  # closed -> open at 2/4
        clock.advance(1.0)
        fail(breaker, clock)  # -> half_open -> open
        clock.advance(2.0)
        succeed(breaker, clock)  # -> half_open -> closed
        breaker.force_open()
        breaker.disable()
        breaker.reset()
    chain = [(t.from_state, t.to_state) for t in events.transitions]
    assert chain == [
        (State.CLOSED, State.OPEN),
        (State.OPEN, State.HALF_OPEN),
        (State.HALF_OPEN, State.OPEN),
        (State.OPEN, State.HALF_OPEN),
        (State.HALF_OPEN, State.CLOSED),
        (State.CLOSED, State.FORCED_OPEN),
        (State.FORCED_OPEN, State.DISABLED),
        (State.DISABLED, State.CLOSED),
    ]
    assert [t.seq for t in events.transitions] == list(range(1, 9))
    assert {t.breaker for t in events.transitions} == {"dep"}
    assert [t.at for t in events.transitions[:3]] == [1000.0, 1001.0, 1001.0]
    assert events.transitions[0].failure_rate == 0.5
    assert all(isinstance(t, Transition) for t in events.transitions)
    assert breaker.stats().transitions == 8


def test_a_raising_listener_never_breaks_a_call(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    """A listener raising on a transition is logged and dropped; the call and the transition go on."""

    class Broken(Listener):
        def on_event(self, event: Event) -> None:
            assert event.transition is not None
            raise RuntimeError(event.transition.to_state)

    add_listener(Broken())
    breaker = make(clock, consecutive_failures=1)
    with caplog.at_level(logging.WARNING, logger="otelres"), pytest.raises(Boom):
        breaker.call(raise_, Boom())
    assert breaker.state is State.OPEN
    assert "Broken.on_event raised RuntimeError(<State.OPEN: 'open'>)" in caplog.text


def test_minimum_calls_is_capped_at_a_count_window_size(clock: FakeClock) -> None:
    """A count window of 10 trips on its failure rate although minimum_calls (20) exceeds its size."""
    breaker = CircuitBreaker("capped", BreakerPolicy(window_calls=10), clock=clock)
    for _ in range(10):
        breaker.on_failure(breaker.acquire(), clock.monotonic())
    assert breaker.state is State.OPEN
