"""The retry flow through Resilience: deadline → retry (with budget) → breaker → attempt, with
fallbacks, events and the testing mode — every behaviour on the sync and the async path alike.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
from typing import TYPE_CHECKING, Any

import pytest

import otelres
from otelres import testing
from otelres._fallback import MISSING
from otelres.testing import CapturedEvents, FakeClock, capture_events

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

NAME = "https://api.example.com:443"
NO_JITTER = otelres.RetryPolicy(jitter="none")


@pytest.fixture(params=["sync", "async", "sync+listener", "async+listener"])
def mode(request: pytest.FixtureRequest) -> str:
    """Each test that takes ``mode`` runs through call() and through acall(), each with and without a
    listener registered (the drivers take a shortcut for the first attempt when nobody listens).
    """
    if request.param.endswith("+listener"):
        otelres.add_listener(otelres.Listener())  # the autouse fixture clears listeners afterwards
    return str(request.param)


@pytest.fixture
def events() -> Iterator[CapturedEvents]:
    with capture_events() as captured:
        yield captured


class Dependency:
    """A scripted dependency: attempt n takes outcome n (the last one repeats).

    An exception class is raised as a fresh instance each attempt (kept in ``raised``); an exception
    instance is raised as it is; anything else is returned. ``cost`` seconds pass on ``clock`` per attempt.
    """

    def __init__(self, *outcomes: object, clock: FakeClock | None = None, cost: float = 0.0) -> None:
        self.outcomes = outcomes or ("ok",)
        self.clock = clock
        self.cost = cost
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        self.raised: list[BaseException] = []

    @property
    def attempts(self) -> int:
        return len(self.calls)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((args, kwargs))
        if self.clock is not None and self.cost:
            self.clock.advance(self.cost)
        outcome = self.outcomes[min(len(self.calls), len(self.outcomes)) - 1]
        if isinstance(outcome, type) and issubclass(outcome, BaseException):
            outcome = outcome(f"attempt {len(self.calls)}")
        if isinstance(outcome, BaseException):
            self.raised.append(outcome)
            raise outcome
        return outcome


def run(mode: str, res: otelres.Resilience, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call the sync ``fn`` through ``res``: directly, or as a coroutine function through acall()."""
    if mode.startswith("sync"):
        return res.call(fn, *args, **kwargs)

    async def afn(*a: Any, **k: Any) -> Any:
        return fn(*a, **k)

    return asyncio.run(res.acall(afn, *args, **kwargs))


def run_with(mode: str, res: otelres.Resilience, fn: Callable[..., Any], *, no_retry: str) -> Any:
    """call_with()/acall_with() with ``no_retry``."""
    if mode.startswith("sync"):
        return res.call_with(fn, (), {}, no_retry=no_retry)

    async def afn() -> Any:
        return fn()

    return asyncio.run(res.acall_with(afn, (), {}, no_retry=no_retry))


def kinds(events: CapturedEvents) -> list[str]:
    return [e.kind for e in events.events if e.kind != "transition"]


def the_call(events: CapturedEvents) -> dict[str, object]:
    """The fields of the one ``call`` event."""
    (call,) = events.of("call")
    return call.fields


def suppressed(events: CapturedEvents) -> list[tuple[object, object]]:
    return [(e.fields["attempt"], e.fields["reason"]) for e in events.of("retry_suppressed")]


class Response:
    """A stand-in for an HTTP response: compared by identity, with a status."""

    def __init__(self, status: int) -> None:
        self.status = status

    def __repr__(self) -> str:
        return f"Response({self.status})"


def is_5xx(result: object) -> bool:
    return isinstance(result, Response) and result.status >= 500


# -- attempts and delays -------------------------------------------------------------------------


def test_three_attempts_by_default(mode: str, clock: FakeClock) -> None:
    """The default policy makes 3 attempts in total, sleeping twice, then re-raises."""
    dep = Dependency(ConnectionError)
    res = otelres.Resilience(NAME, clock=clock)
    with pytest.raises(ConnectionError):
        run(mode, res, dep)
    assert dep.attempts == 3
    assert len(clock.sleeps) == 2


def test_default_delays_are_full_jitter_over_the_default_scale(mode: str, clock: FakeClock) -> None:
    """Default delays are random() * min(5, 0.1 * 2^(n-1)): with random() = 0.5, 0.05 s then 0.1 s."""
    res = otelres.Resilience(NAME, clock=clock, random=lambda: 0.5)
    with pytest.raises(ConnectionError):
        run(mode, res, Dependency(ConnectionError))
    assert clock.sleeps == pytest.approx([0.05, 0.1])


def test_delays_follow_the_policy(mode: str, clock: FakeClock) -> None:
    """Without jitter the delays double from base_delay and stop at max_delay."""
    policy = otelres.RetryPolicy(attempts=6, base_delay=0.5, max_delay=3.0, jitter="none")
    res = otelres.Resilience(NAME, clock=clock, retry=policy)
    with pytest.raises(ConnectionError):
        run(mode, res, Dependency(ConnectionError))
    assert clock.sleeps == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_decorrelated_delays_chain_on_the_previous_delay(mode: str, clock: FakeClock) -> None:
    """Decorrelated jitter gets the previous delay from the flow: U(base, 3 * previous) each time."""
    policy = otelres.RetryPolicy(attempts=4, jitter="decorrelated")
    res = otelres.Resilience(NAME, clock=clock, retry=policy, random=lambda: 0.5)
    with pytest.raises(ConnectionError):
        run(mode, res, Dependency(ConnectionError))
    # 0.1 + 0.5 * (0.3 - 0.1); 0.1 + 0.5 * (0.6 - 0.1); 0.1 + 0.5 * (1.05 - 0.1)
    assert clock.sleeps == pytest.approx([0.2, 0.35, 0.575])


def test_success_after_failures_returns_the_result(mode: str, clock: FakeClock) -> None:
    """Two failures then a success: the success's value is returned, after two delays."""
    result = Response(200)
    dep = Dependency(ConnectionError, TimeoutError, result)
    res = otelres.Resilience(NAME, clock=clock, retry=NO_JITTER)
    assert run(mode, res, dep, 1, key="v") is result
    assert dep.calls == [((1,), {"key": "v"})] * 3
    assert clock.sleeps == [0.1, 0.2]


def test_first_success_makes_one_attempt(mode: str, clock: FakeClock, events: CapturedEvents) -> None:
    """A call that succeeds at once makes one attempt and sleeps never."""
    dep = Dependency("ok", clock=clock, cost=0.25)
    res = otelres.Resilience(NAME, clock=clock)
    assert run(mode, res, dep) == "ok"
    assert dep.attempts == 1
    assert clock.sleeps == []
    assert kinds(events) == ["call"]
    assert the_call(events) == {"outcome": "success", "duration": 0.25, "attempts": 1}


def test_attempts_one_disables_retries(mode: str, clock: FakeClock, events: CapturedEvents) -> None:
    """RetryPolicy(attempts=1) makes one attempt, reports no retry, and adds no note."""
    dep = Dependency(ConnectionError)
    res = otelres.Resilience(NAME, clock=clock, retry=otelres.RetryPolicy(attempts=1))
    with pytest.raises(ConnectionError) as caught:
        run(mode, res, dep)
    assert dep.attempts == 1
    assert caught.value is dep.raised[0]
    assert getattr(caught.value, "__notes__", []) == []
    assert kinds(events) == ["call"]


# -- what is retried ---------------------------------------------------------------------------


def test_retry_on_class_selects_exceptions(mode: str, clock: FakeClock) -> None:
    """retry_on=ConnectionError retries a ConnectionError and re-raises a ValueError after one attempt."""
    res = otelres.Resilience(NAME, clock=clock, retry=NO_JITTER.evolve(retry_on=ConnectionError))
    other = Dependency(ValueError)
    with pytest.raises(ValueError, match="attempt 1"):
        run(mode, res, other)
    assert other.attempts == 1
    assert clock.sleeps == []
    retried = Dependency(ConnectionRefusedError, "ok")  # a subclass is selected too
    assert run(mode, res, retried) == "ok"
    assert retried.attempts == 2


def test_retry_on_tuple_selects_exceptions(mode: str, clock: FakeClock) -> None:
    """retry_on=(TimeoutError, ConnectionError) retries both and nothing else."""
    res = otelres.Resilience(
        NAME, clock=clock, retry=NO_JITTER.evolve(retry_on=(TimeoutError, ConnectionError))
    )
    assert run(mode, res, Dependency(TimeoutError, ConnectionError, "ok")) == "ok"
    dep = Dependency(KeyError)
    with pytest.raises(KeyError):
        run(mode, res, dep)
    assert dep.attempts == 1


def test_retry_on_predicate_sees_each_exception(mode: str, clock: FakeClock) -> None:
    """A retry_on predicate is asked about each exception and its answer decides the retry."""
    seen: list[BaseException] = []

    def transient(exc: BaseException) -> bool:
        seen.append(exc)
        return "transient" in str(exc)

    dep = Dependency(RuntimeError("transient 1"), RuntimeError("transient 2"), RuntimeError("fatal"), "ok")
    res = otelres.Resilience(NAME, clock=clock, retry=otelres.RetryPolicy(attempts=5, retry_on=transient))
    with pytest.raises(RuntimeError, match="fatal"):
        run(mode, res, dep)
    assert dep.attempts == 3
    assert seen == dep.raised


def test_circuit_open_error_from_inside_is_never_retried(mode: str, clock: FakeClock) -> None:
    """A CircuitOpenError raised by the function (an inner breaker) is never retried, even on Exception."""
    dep = Dependency(otelres.CircuitOpenError("inner", 3.0))
    res = otelres.Resilience(NAME, clock=clock)
    with pytest.raises(otelres.CircuitOpenError):
        run(mode, res, dep)
    assert dep.attempts == 1


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
def test_base_exceptions_are_not_retried_by_default(exc: type[BaseException], clock: FakeClock) -> None:
    """KeyboardInterrupt and SystemExit are not Exceptions: never retried by the default retry_on."""
    dep = Dependency(exc)
    res = otelres.Resilience(NAME, clock=clock)
    with pytest.raises(exc):
        res.call(dep)
    assert dep.attempts == 1


def test_cancelled_error_raised_inside_is_not_retried_by_default(clock: FakeClock) -> None:
    """asyncio.CancelledError from the awaited function propagates after one attempt."""
    dep = Dependency(asyncio.CancelledError)
    res = otelres.Resilience(NAME, clock=clock)
    with pytest.raises(asyncio.CancelledError):
        run("async", res, dep)
    assert dep.attempts == 1


@pytest.mark.parametrize("exc", [KeyboardInterrupt, asyncio.CancelledError])
def test_catch_all_retry_on_never_retries_interrupts(exc: type[BaseException], clock: FakeClock) -> None:
    """retry_on=lambda e: True still never retries a KeyboardInterrupt or a cancellation."""
    dep = Dependency(exc)
    res = otelres.Resilience(NAME, clock=clock, retry=otelres.RetryPolicy(retry_on=lambda _exc: True))
    with pytest.raises(exc):
        run("async" if exc is asyncio.CancelledError else "sync", res, dep)
    assert dep.attempts == 1


def test_retry_on_result(mode: str, clock: FakeClock) -> None:
    """retry_on_result retries results it selects and returns the first one it does not."""
    ok = Response(200)
    dep = Dependency(Response(503), Response(502), ok)
    res = otelres.Resilience(NAME, clock=clock, retry=NO_JITTER.evolve(retry_on_result=is_5xx))
    assert run(mode, res, dep) is ok
    assert dep.attempts == 3
    assert clock.sleeps == [0.1, 0.2]


def test_retry_on_result_and_exceptions_mix(mode: str, clock: FakeClock) -> None:
    """Exceptions and selected results are retried in one call, sharing the attempts."""
    ok = Response(200)
    dep = Dependency(Response(503), ConnectionError, ok)
    res = otelres.Resilience(NAME, clock=clock, retry=NO_JITTER.evolve(retry_on_result=is_5xx))
    assert run(mode, res, dep) is ok


# -- exhausted -------------------------------------------------------------------------------


def test_exhausted_reraises_the_last_exception_itself(mode: str, clock: FakeClock) -> None:
    """After the last attempt the last exception object itself propagates, not a wrapper or a copy."""
    dep = Dependency(ConnectionError)
    res = otelres.Resilience(NAME, clock=clock)
    with pytest.raises(ConnectionError, match="attempt 3") as caught:
        run(mode, res, dep)
    assert caught.value is dep.raised[-1]
    assert len({id(e) for e in dep.raised}) == 3


def test_exhausted_exception_carries_an_otelres_note(mode: str, clock: FakeClock) -> None:
    """On 3.11+ the re-raised exception carries one note naming the breaker and the attempts
    (3.10 has no exception notes: the exception comes as it was).
    """
    dep = Dependency(ConnectionError)
    res = otelres.Resilience(NAME, clock=clock)
    with pytest.raises(ConnectionError) as caught:
        run(mode, res, dep)
    notes = getattr(caught.value, "__notes__", [])
    assert notes == ([f"otelres: {NAME}: gave up after 3 attempts"] if sys.version_info >= (3, 11) else [])


def test_exhausted_returns_the_last_failed_result_as_it_came(mode: str, clock: FakeClock) -> None:
    """Retrying on results, the last result is returned as it came when the attempts run out."""
    last = Response(503)
    dep = Dependency(Response(503), Response(503), last)
    res = otelres.Resilience(NAME, clock=clock, retry=NO_JITTER.evolve(retry_on_result=is_5xx))
    assert run(mode, res, dep) is last


def test_wrap_exhausted_raises_retry_error_for_exceptions(mode: str, clock: FakeClock) -> None:
    """wrap_exhausted=True raises RetryError with the attempts and the last error (also its __cause__)."""
    dep = Dependency(ConnectionError)
    res = otelres.Resilience(NAME, clock=clock, retry=NO_JITTER.evolve(wrap_exhausted=True))
    with pytest.raises(otelres.RetryError) as caught:
        run(mode, res, dep)
    error = caught.value
    assert (error.breaker, error.attempts, error.last_result) == (NAME, 3, None)
    assert error.last_error is dep.raised[-1]
    assert error.__cause__ is dep.raised[-1]


def test_wrap_exhausted_raises_retry_error_for_results(mode: str, clock: FakeClock) -> None:
    """wrap_exhausted=True with results: RetryError.last_result is the last result, last_error None."""
    last = Response(503)
    dep = Dependency(Response(500), Response(502), last)
    policy = NO_JITTER.evolve(retry_on_result=is_5xx, wrap_exhausted=True)
    res = otelres.Resilience(NAME, clock=clock, retry=policy)
    with pytest.raises(otelres.RetryError) as caught:
        run(mode, res, dep)
    assert caught.value.attempts == 3
    assert caught.value.last_error is None
    assert caught.value.last_result is last


def test_wrap_exhausted_leaves_an_error_that_was_not_retried(mode: str, clock: FakeClock) -> None:
    """wrap_exhausted wraps exhausted retries only: an error not worth a retry propagates as it is."""
    dep = Dependency(ValueError)
    policy = NO_JITTER.evolve(retry_on=ConnectionError, wrap_exhausted=True)
    res = otelres.Resilience(NAME, clock=clock, retry=policy)
    with pytest.raises(ValueError) as caught:
        run(mode, res, dep)
    assert caught.value is dep.raised[0]


# -- discard -----------------------------------------------------------------------------------


def test_discard_gets_each_result_that_is_retried(mode: str, clock: FakeClock) -> None:
    """discard is called on every result that will be retried, and not on the one returned."""
    first, second, ok = Response(503), Response(502), Response(200)
    discarded: list[object] = []
    res = otelres.Resilience(
        NAME, clock=clock, retry=NO_JITTER.evolve(retry_on_result=is_5xx), discard=discarded.append
    )
    assert run(mode, res, Dependency(first, second, ok)) is ok
    assert discarded == [first, second]


def test_discard_spares_the_last_result_of_exhausted_retries(mode: str, clock: FakeClock) -> None:
    """When the attempts run out, the last result is returned, not discarded."""
    results = [Response(503), Response(503), Response(503)]
    discarded: list[object] = []
    res = otelres.Resilience(
        NAME, clock=clock, retry=NO_JITTER.evolve(retry_on_result=is_5xx), discard=discarded.append
    )
    assert run(mode, res, Dependency(*results)) is results[-1]
    assert discarded == results[:2]


def test_discard_spares_a_result_whose_retry_is_suppressed(mode: str, clock: FakeClock) -> None:
    """A result whose retry is suppressed (deadline) is returned as it came, not discarded."""
    first = Response(503)
    discarded: list[object] = []
    policy = NO_JITTER.evolve(retry_on_result=is_5xx, deadline=0.05)
    res = otelres.Resilience(NAME, clock=clock, retry=policy, discard=discarded.append)
    assert run(mode, res, Dependency(first)) is first
    assert discarded == []


def test_discard_gets_the_last_result_a_fallback_replaces(mode: str, clock: FakeClock) -> None:
    """A fallback replacing the last failed result must hand that result to discard (else it leaks)."""
    results = [Response(503), Response(503), Response(503)]
    discarded: list[object] = []
    res = otelres.Resilience(
        NAME,
        clock=clock,
        retry=NO_JITTER.evolve(retry_on_result=is_5xx),
        discard=discarded.append,
        fallback=otelres.Fallback.value("cached"),
    )
    assert run(mode, res, Dependency(*results)) == "cached"
    assert discarded == results


# -- Retry-After --------------------------------------------------------------------------------


class Throttled(ConnectionError):
    """A 429 with a Retry-After header value."""

    def __init__(self, retry_after: str) -> None:
        super().__init__(retry_after)
        self.retry_after = retry_after


def header_delay(clock: FakeClock) -> Callable[[BaseException | None, Any], float | None]:
    def delay(exc: BaseException | None, _result: Any) -> float | None:
        if isinstance(exc, Throttled):
            return otelres.parse_retry_after(exc.retry_after, now=clock.wall())
        return None

    return delay


def test_retry_after_replaces_the_backoff(mode: str, clock: FakeClock, events: CapturedEvents) -> None:
    """A delay from the retry_after hook (here a Retry-After header) is slept instead of the backoff."""
    date = "Tue, 14 Nov 2023 22:13:23 GMT"  # 3 s after the fake wall clock's start
    assert otelres.parse_retry_after(date, now=clock.wall()) == 3.0
    dep = Dependency(Throttled("7"), Throttled(date), ConnectionError, "ok")
    policy = otelres.RetryPolicy(attempts=4, jitter="none", retry_after=header_delay(clock))
    res = otelres.Resilience(NAME, clock=clock, retry=policy)
    assert run(mode, res, dep) == "ok"
    # 7 s from the header; the date is 3 s after the start, so 3 - 7 < 0 → 0; then the backoff.
    assert clock.sleeps == [7.0, 0.0, 0.4]
    assert [e.fields["delay"] for e in events.of("retry")] == [7.0, 0.0, 0.4]


def test_retry_after_hook_gets_the_exception_or_the_result(mode: str, clock: FakeClock) -> None:
    """The retry_after hook gets (exception, None) after an error and (None, result) after a result."""
    calls: list[tuple[object, object]] = []

    def hook(exc: BaseException | None, result: Any) -> float | None:
        calls.append((exc, result))
        return 1.5

    slow = Response(503)
    dep = Dependency(ConnectionError, slow, "ok")
    policy = otelres.RetryPolicy(retry_after=hook, retry_on_result=is_5xx)
    res = otelres.Resilience(NAME, clock=clock, retry=policy)
    assert run(mode, res, dep) == "ok"
    assert calls == [(dep.raised[0], None), (None, slow)]
    assert clock.sleeps == [1.5, 1.5]


def test_retry_after_at_the_cap_is_honoured(mode: str, clock: FakeClock) -> None:
    """A Retry-After equal to retry_after_cap (30 s by default) is waited for."""
    policy = otelres.RetryPolicy(retry_after=header_delay(clock))
    res = otelres.Resilience(NAME, clock=clock, retry=policy)
    assert run(mode, res, Dependency(Throttled("30"), "ok")) == "ok"
    assert clock.sleeps == [30.0]


@pytest.mark.parametrize(("header", "cap"), [("31", 30.0), ("3", 2.5), ("1" + "0" * 399, 86400.0)])
def test_retry_after_above_the_cap_ends_the_retries(
    mode: str, clock: FakeClock, events: CapturedEvents, header: str, cap: float
) -> None:
    """A Retry-After above retry_after_cap ends the call with its error: suppressed, reason retry_after."""
    dep = Dependency(Throttled(header), "ok")
    policy = otelres.RetryPolicy(retry_after=header_delay(clock), retry_after_cap=cap)
    res = otelres.Resilience(NAME, clock=clock, retry=policy)
    with pytest.raises(Throttled) as caught:
        run(mode, res, dep)
    assert caught.value is dep.raised[0]
    assert dep.attempts == 1
    assert clock.sleeps == []
    assert suppressed(events) == [(1, "retry_after")]


def test_unusable_retry_after_falls_back_to_the_backoff(mode: str, clock: FakeClock) -> None:
    """A hook returning None (a malformed header) leaves the policy's backoff in place."""
    policy = otelres.RetryPolicy(jitter="none", retry_after=header_delay(clock))
    res = otelres.Resilience(NAME, clock=clock, retry=policy)
    assert run(mode, res, Dependency(Throttled("soon"), Throttled("-1"), "ok")) == "ok"
    assert clock.sleeps == [0.1, 0.2]


# -- deadlines ---------------------------------------------------------------------------------


def test_policy_deadline_suppresses_a_retry_that_cannot_start_in_time(
    mode: str, clock: FakeClock, events: CapturedEvents
) -> None:
    """With deadline=1 s, 0.3 s attempts and 0.2/0.4 s delays, the retry due at 1.2 s is not made."""
    dep = Dependency(ConnectionError, clock=clock, cost=0.3)
    policy = otelres.RetryPolicy(attempts=10, base_delay=0.2, jitter="none", deadline=1.0)
    res = otelres.Resilience(NAME, clock=clock, retry=policy)
    with pytest.raises(ConnectionError) as caught:
        run(mode, res, dep)
    assert dep.attempts == 2
    assert caught.value is dep.raised[-1]
    assert clock.sleeps == [0.2]
    assert suppressed(events) == [(2, "deadline")]
    assert [e.fields["attempt"] for e in events.of("retry")] == [1]


def test_a_retry_due_exactly_at_the_deadline_is_not_made(mode: str, clock: FakeClock) -> None:
    """A retry that would start exactly at the deadline cannot start before it: suppressed."""
    policy = otelres.RetryPolicy(base_delay=0.5, jitter="none", deadline=0.5)
    res = otelres.Resilience(NAME, clock=clock, retry=policy)
    dep = Dependency(ConnectionError)
    with pytest.raises(ConnectionError):
        run(mode, res, dep)
    assert dep.attempts == 1


def test_deadline_context_bounds_the_retries(mode: str, clock: FakeClock, events: CapturedEvents) -> None:
    """otelres.deadline(seconds, clock=...) bounds the retries of calls made inside it."""
    dep = Dependency(ConnectionError, clock=clock, cost=0.3)
    res = otelres.Resilience(NAME, clock=clock, retry=NO_JITTER.evolve(attempts=10, base_delay=0.2))
    with otelres.deadline(1.0, clock=clock) as limit:
        assert limit == clock.monotonic() + 1.0
        with pytest.raises(ConnectionError):
            run(mode, res, dep)
    assert dep.attempts == 2
    assert suppressed(events) == [(2, "deadline")]


def test_the_earlier_of_policy_and_context_deadlines_wins(mode: str, clock: FakeClock) -> None:
    """A context deadline shorter than the policy's bounds the call; a longer one does not extend it."""
    policy = NO_JITTER.evolve(attempts=10, base_delay=0.2, deadline=10.0)
    res = otelres.Resilience(NAME, clock=clock, retry=policy)
    short = Dependency(ConnectionError, clock=clock, cost=0.3)
    with otelres.deadline(1.0, clock=clock), pytest.raises(ConnectionError):
        run(mode, res, short)
    assert short.attempts == 2

    res = otelres.Resilience(NAME, clock=clock, retry=policy.evolve(deadline=1.0))
    long = Dependency(ConnectionError, clock=clock, cost=0.3)
    with otelres.deadline(60.0, clock=clock), pytest.raises(ConnectionError):
        run(mode, res, long)
    assert long.attempts == 2


def test_nested_deadline_never_extends_the_outer_one(mode: str, clock: FakeClock) -> None:
    """An inner deadline longer than the outer one is cut to the outer one."""
    dep = Dependency(ConnectionError, clock=clock, cost=0.3)
    res = otelres.Resilience(NAME, clock=clock, retry=NO_JITTER.evolve(attempts=10, base_delay=0.2))
    with otelres.deadline(1.0, clock=clock) as outer:
        with otelres.deadline(100.0, clock=clock) as inner:
            assert inner == outer
            assert otelres.time_left(clock) == 1.0
            with pytest.raises(ConnectionError):
                run(mode, res, dep)
        assert otelres.time_left(clock) == pytest.approx(1.0 - 0.3 - 0.2 - 0.3)
    assert otelres.time_left(clock) is None
    assert dep.attempts == 2


def test_an_expired_deadline_still_allows_the_first_attempt(mode: str, clock: FakeClock) -> None:
    """A deadline bounds retries, not the call: with none left the first attempt runs, and only it."""
    dep = Dependency(ConnectionError)
    res = otelres.Resilience(NAME, clock=clock)
    with otelres.deadline(0, clock=clock), pytest.raises(ConnectionError):
        run(mode, res, dep)
    assert dep.attempts == 1
    assert run(mode, res, Dependency("ok")) == "ok"


def test_deadline_check_applies_to_retry_after_delays(
    mode: str, clock: FakeClock, events: CapturedEvents
) -> None:
    """A Retry-After delay under the cap but past the deadline is suppressed for the deadline."""
    policy = otelres.RetryPolicy(retry_after=header_delay(clock), deadline=5.0)
    res = otelres.Resilience(NAME, clock=clock, retry=policy)
    with pytest.raises(Throttled):
        run(mode, res, Dependency(Throttled("10")))
    assert suppressed(events) == [(1, "deadline")]


def test_deadline_rejects_bad_values(clock: FakeClock) -> None:
    """otelres.deadline() takes seconds >= 0: a negative number, NaN or a bool raises ConfigError."""
    for bad in (-1, float("nan"), True, "5"):
        with pytest.raises(otelres.ConfigError), otelres.deadline(bad, clock=clock):  # type: ignore[arg-type]
            pass  # pragma: no cover - never entered


# -- the breaker -------------------------------------------------------------------------------


def test_open_circuit_rejects_without_an_attempt(mode: str, clock: FakeClock, events: CapturedEvents) -> None:
    """An open circuit raises CircuitOpenError at once: no attempt, no sleep, never retried."""
    dep = Dependency("ok")
    res = otelres.Resilience(NAME, clock=clock)
    res.breaker.transition_to("open")
    with pytest.raises(otelres.CircuitOpenError) as caught:
        run(mode, res, dep)
    assert (caught.value.breaker, caught.value.retry_after) == (NAME, 5.0)
    assert dep.attempts == 0
    assert clock.sleeps == []
    assert kinds(events) == ["rejected", "call"]
    assert events.of("rejected")[0].fields == {"retry_after": 5.0}
    assert the_call(events) == {"outcome": "rejected", "duration": 0.0, "attempts": 0}


def test_each_rejection_is_a_fresh_error(mode: str, clock: FakeClock) -> None:
    """Two rejected calls raise two distinct CircuitOpenError objects."""
    res = otelres.Resilience(NAME, clock=clock)
    res.breaker.force_open()
    errors = []
    for _ in range(2):
        with pytest.raises(otelres.CircuitOpenError) as caught:
            run(mode, res, Dependency("ok"))
        errors.append(caught.value)
    assert errors[0] is not errors[1]


def test_retries_stop_when_the_breaker_opens_mid_call(
    mode: str, clock: FakeClock, events: CapturedEvents
) -> None:
    """When an attempt opens the circuit no retry goes into it: suppressed circuit_open, real error raised."""
    dep = Dependency(ConnectionError)
    res = otelres.Resilience(
        NAME, clock=clock, retry=NO_JITTER, breaker=otelres.BreakerPolicy(consecutive_failures=2)
    )
    with pytest.raises(ConnectionError) as caught:
        run(mode, res, dep)
    assert caught.value is dep.raised[-1]
    assert dep.attempts == 2
    assert clock.sleeps == [0.1]
    assert res.breaker.state is otelres.State.OPEN
    assert suppressed(events) == [(2, "circuit_open")]
    assert the_call(events)["outcome"] == "failure"


def test_a_retry_after_the_open_period_is_the_probe(mode: str, clock: FakeClock) -> None:
    """If the circuit opens for less than the next delay, the retry goes ahead as the half-open probe."""
    dep = Dependency(ConnectionError, "ok")
    breaker = otelres.BreakerPolicy(consecutive_failures=1, open_seconds=0.05)
    res = otelres.Resilience(NAME, clock=clock, retry=NO_JITTER, breaker=breaker)
    assert run(mode, res, dep) == "ok"
    assert dep.attempts == 2
    assert res.breaker.state is otelres.State.CLOSED


class HookedClock(FakeClock):
    """A fake clock that runs ``during_sleep`` while "asleep" (sync and async alike)."""

    during_sleep: Callable[[], None] | None = None

    def sleep(self, seconds: float) -> None:
        super().sleep(seconds)
        if self.during_sleep is not None:
            self.during_sleep()


def test_a_rejection_mid_call_ends_it_at_once(mode: str, events: CapturedEvents) -> None:
    """When another caller takes the probe while this call sleeps, the next attempt is rejected: it ends."""
    clock = HookedClock()
    breaker = otelres.BreakerPolicy(consecutive_failures=1, open_seconds=0.05)
    res = otelres.Resilience(NAME, clock=clock, retry=NO_JITTER, breaker=breaker)
    probes: list[int] = []
    clock.during_sleep = lambda: probes.append(res.breaker.acquire())  # the other caller's probe
    dep = Dependency(ConnectionError, "ok")
    with pytest.raises(otelres.CircuitOpenError) as caught:
        run(mode, res, dep)
    assert caught.value.retry_after == 0.0  # half-open, its one probe taken
    assert dep.attempts == 1
    assert clock.sleeps == [0.1]
    assert res.budget.retries_in_flight == 0
    assert res.budget.calls_in_flight == 0
    assert kinds(events) == ["retry", "rejected", "call"]
    assert the_call(events)["outcome"] == "rejected"
    assert the_call(events)["attempts"] == 1
    res.breaker.on_success(probes[0], clock.monotonic())
    assert res.breaker.state is otelres.State.CLOSED


# -- no_retry ----------------------------------------------------------------------------------


@pytest.mark.parametrize("reason", ["not_idempotent", "not_replayable"])
def test_no_retry_makes_exactly_one_attempt(
    mode: str, clock: FakeClock, events: CapturedEvents, reason: str
) -> None:
    """call_with(no_retry=reason): one attempt, and the retry that was due is suppressed with that reason."""
    dep = Dependency(ConnectionError, "ok")
    res = otelres.Resilience(NAME, clock=clock)
    with pytest.raises(ConnectionError) as caught:
        run_with(mode, res, dep, no_retry=reason)
    assert caught.value is dep.raised[0]
    assert dep.attempts == 1
    assert clock.sleeps == []
    assert suppressed(events) == [(1, reason)]


def test_no_retry_reports_nothing_when_no_retry_was_due(
    mode: str, clock: FakeClock, events: CapturedEvents
) -> None:
    """A no_retry call that succeeds, or fails with an error not worth a retry, reports no suppression."""
    res = otelres.Resilience(NAME, clock=clock, retry=otelres.RetryPolicy(retry_on=ConnectionError))
    assert run_with(mode, res, Dependency("ok"), no_retry="not_idempotent") == "ok"
    with pytest.raises(ValueError):
        run_with(mode, res, Dependency(ValueError), no_retry="not_idempotent")
    assert events.of("retry_suppressed") == []


# -- fallbacks ---------------------------------------------------------------------------------


def test_fallback_value_on_open_circuit(mode: str, clock: FakeClock, events: CapturedEvents) -> None:
    """Fallback.value is returned instead of CircuitOpenError, without an attempt; the outcome is fallback."""
    dep = Dependency("fresh")
    res = otelres.Resilience(NAME, clock=clock, fallback=otelres.Fallback.value("cached"))
    res.breaker.force_open()
    assert run(mode, res, dep) == "cached"
    assert dep.attempts == 0
    assert kinds(events) == ["rejected", "fallback", "call"]
    assert the_call(events) == {"outcome": "fallback", "duration": 0.0, "attempts": 0}


def test_fallback_call_receives_the_rejection(mode: str, clock: FakeClock) -> None:
    """Fallback.call's factory receives the CircuitOpenError, with the breaker and its retry_after."""
    seen: list[BaseException] = []
    res = otelres.Resilience(
        NAME, clock=clock, fallback=otelres.Fallback.call(lambda e: seen.append(e) or "fb")
    )
    res.breaker.transition_to("open")
    clock.advance(2.0)
    assert run(mode, res, Dependency("fresh")) == "fb"
    (error,) = seen
    assert isinstance(error, otelres.CircuitOpenError)
    assert (error.breaker, error.retry_after) == (NAME, 3.0)


def test_fallback_value_on_exhausted_retries(mode: str, clock: FakeClock, events: CapturedEvents) -> None:
    """After the last failed attempt the fallback value is returned; the call reports fallback, 3 attempts."""
    dep = Dependency(ConnectionError)
    res = otelres.Resilience(NAME, clock=clock, fallback=otelres.Fallback.value("cached"))
    assert run(mode, res, dep) == "cached"
    assert dep.attempts == 3
    assert the_call(events)["outcome"] == "fallback"
    assert the_call(events)["attempts"] == 3


def test_fallback_call_receives_the_last_error(mode: str, clock: FakeClock) -> None:
    """Fallback.call's factory receives the last attempt's exception itself."""
    seen: list[BaseException] = []
    dep = Dependency(ConnectionError)
    res = otelres.Resilience(
        NAME, clock=clock, fallback=otelres.Fallback.call(lambda e: seen.append(e) or "fb")
    )
    assert run(mode, res, dep) == "fb"
    assert seen == [dep.raised[-1]]


def test_fallback_call_receives_a_retry_error_for_results(mode: str, clock: FakeClock) -> None:
    """Retrying on results, the factory receives a RetryError holding the last result."""
    seen: list[BaseException] = []
    last = Response(503)
    res = otelres.Resilience(
        NAME,
        clock=clock,
        retry=otelres.RetryPolicy(retry_on_result=is_5xx),
        fallback=otelres.Fallback.call(lambda e: seen.append(e) or "fb"),
    )
    assert run(mode, res, Dependency(Response(503), Response(503), last)) == "fb"
    (error,) = seen
    assert isinstance(error, otelres.RetryError)
    assert (error.attempts, error.last_error, error.last_result) == (3, None, last)


def test_fallback_is_not_used_on_success(mode: str, clock: FakeClock) -> None:
    """A call that succeeds (even after retries) returns its own result, not the fallback."""
    res = otelres.Resilience(NAME, clock=clock, fallback=otelres.Fallback.value("cached"))
    assert run(mode, res, Dependency(ConnectionError, "fresh")) == "fresh"


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
def test_fallback_never_replaces_an_interrupt(exc: type[BaseException], clock: FakeClock) -> None:
    """KeyboardInterrupt and SystemExit propagate through a fallback untouched, after one attempt."""
    factory_calls: list[BaseException] = []
    dep = Dependency(exc)
    res = otelres.Resilience(NAME, clock=clock, fallback=otelres.Fallback.call(factory_calls.append))
    with pytest.raises(exc) as caught:
        res.call(dep)
    assert caught.value is dep.raised[0]
    assert factory_calls == []
    assert dep.attempts == 1


def test_fallback_never_replaces_a_cancellation(clock: FakeClock) -> None:
    """asyncio.CancelledError from the awaited function propagates through a fallback untouched."""
    factory_calls: list[BaseException] = []
    res = otelres.Resilience(NAME, clock=clock, fallback=otelres.Fallback.call(factory_calls.append))
    with pytest.raises(asyncio.CancelledError):
        run("async", res, Dependency(asyncio.CancelledError))
    assert factory_calls == []


def test_fallback_resolve_never_answers_an_interrupt() -> None:
    """Fallback.resolve() has nothing for a BaseException that is not an Exception, whatever the fallback."""
    stale = otelres.Fallback.stale(otherwise=otelres.Fallback.value("default"))
    stale.remember(("a",), "A", 0.0)
    for fallback in (otelres.Fallback.value("v"), otelres.Fallback.call(repr), stale):
        for error in (KeyboardInterrupt(), SystemExit(), asyncio.CancelledError()):
            assert fallback.resolve(("a",), error, 0.0) is MISSING
    assert stale.resolve(("a",), ConnectionError(), 0.0) == "A"


@pytest.mark.parametrize("exc", [KeyboardInterrupt, asyncio.CancelledError])
def test_interrupted_call_is_reported_as_a_failure(exc: type[BaseException], events: CapturedEvents) -> None:
    """A call whose attempt is interrupted (KeyboardInterrupt, CancelledError) ends with outcome failure."""
    res = otelres.Resilience(NAME, clock=FakeClock())
    with pytest.raises(exc):
        run("async" if exc is asyncio.CancelledError else "sync", res, Dependency(exc))
    assert the_call(events) == {"outcome": "failure", "duration": 0.0, "attempts": 1}


def stale_res(clock: FakeClock, **options: Any) -> tuple[otelres.Resilience, dict[str, object]]:
    """A Resilience with a stale fallback over a dependency whose answers the test sets per key."""
    answers: dict[str, object] = {}
    res = otelres.Resilience(NAME, clock=clock, fallback=otelres.Fallback.stale(**options))
    return res, answers


def lookup(answers: dict[str, object]) -> Callable[..., object]:
    def fn(key: str, **_kwargs: object) -> object:
        answer = answers[key]
        if isinstance(answer, type) and issubclass(answer, BaseException):
            raise answer(key)
        return answer

    return fn


def test_stale_serves_the_last_good_result_by_arguments(mode: str, clock: FakeClock) -> None:
    """Fallback.stale returns the last good result of a call with the same arguments on an open circuit."""
    res, answers = stale_res(clock)
    fn = lookup(answers)
    a1, a2, b = Response(200), Response(201), Response(202)
    answers.update(a=a1, b=b)
    assert run(mode, res, fn, "a") is a1
    answers["a"] = a2
    assert run(mode, res, fn, "a") is a2  # the newer good result replaces the older one
    assert run(mode, res, fn, "b") is b
    res.breaker.force_open()
    assert run(mode, res, fn, "a") is a2
    assert run(mode, res, fn, "b") is b
    with pytest.raises(otelres.CircuitOpenError):
        run(mode, res, fn, "c")  # never succeeded: nothing stale to serve


def test_stale_serves_on_exhausted_retries(mode: str, clock: FakeClock) -> None:
    """Fallback.stale also answers when the retries are exhausted; without an entry the error propagates."""
    res, answers = stale_res(clock)
    fn = lookup(answers)
    good = Response(200)
    answers["a"] = good
    assert run(mode, res, fn, "a") is good
    answers["a"] = answers["b"] = ConnectionError
    assert run(mode, res, fn, "a") is good
    with pytest.raises(ConnectionError):
        run(mode, res, fn, "b")


def test_stale_keys_include_keyword_arguments(mode: str, clock: FakeClock) -> None:
    """Keyword arguments are part of the stale key: another kwarg value is another entry."""
    res, answers = stale_res(clock)
    fn = lookup(answers)
    answers["a"] = "v1"
    assert run(mode, res, fn, "a", page=1) == "v1"
    res.breaker.force_open()
    assert run(mode, res, fn, "a", page=1) == "v1"
    with pytest.raises(otelres.CircuitOpenError):
        run(mode, res, fn, "a", page=2)


def test_stale_is_bounded_in_size(mode: str, clock: FakeClock) -> None:
    """Fallback.stale(max_size=2) keeps the two most recently stored results and forgets older ones."""
    res, answers = stale_res(clock, max_size=2)
    fn = lookup(answers)
    answers.update(a="A", b="B", c="C")
    for key in ("a", "b", "c"):
        run(mode, res, fn, key)
    res.breaker.force_open()
    with pytest.raises(otelres.CircuitOpenError):
        run(mode, res, fn, "a")
    assert run(mode, res, fn, "b") == "B"
    assert run(mode, res, fn, "c") == "C"


def test_stale_is_bounded_in_age(mode: str, clock: FakeClock) -> None:
    """Fallback.stale(max_age=10) serves a result up to 10 s old and never an older one."""
    res, answers = stale_res(clock, max_age=10.0)
    fn = lookup(answers)
    answers["a"] = "A"
    run(mode, res, fn, "a")
    res.breaker.force_open()
    clock.advance(10.0)
    assert run(mode, res, fn, "a") == "A"
    clock.advance(0.001)
    with pytest.raises(otelres.CircuitOpenError):
        run(mode, res, fn, "a")


def test_stale_otherwise_chains(mode: str, clock: FakeClock) -> None:
    """Fallback.stale(otherwise=...) answers with the next fallback when no fresh-enough entry exists."""
    res, answers = stale_res(clock, max_age=10.0, otherwise=otelres.Fallback.value("default"))
    fn = lookup(answers)
    answers["a"] = "A"
    run(mode, res, fn, "a")
    res.breaker.force_open()
    assert run(mode, res, fn, "a") == "A"
    assert run(mode, res, fn, "never-seen") == "default"
    clock.advance(11.0)
    assert run(mode, res, fn, "a") == "default"


def test_stale_chain_of_two_caches(mode: str, clock: FakeClock) -> None:
    """A short-lived stale cache can fall back to a longer-lived one, which remembers too."""
    long_lived = otelres.Fallback.stale(max_age=100.0)
    res, answers = stale_res(clock, max_age=1.0, otherwise=long_lived)
    fn = lookup(answers)
    answers["a"] = "A"
    run(mode, res, fn, "a")
    res.breaker.force_open()
    clock.advance(50.0)
    assert run(mode, res, fn, "a") == "A"


def test_stale_ignores_unhashable_arguments(mode: str, clock: FakeClock) -> None:
    """A call with unhashable arguments is neither cached nor served stale, and does not fail for it."""
    res = otelres.Resilience(
        NAME, clock=clock, fallback=otelres.Fallback.stale(otherwise=otelres.Fallback.value("default"))
    )
    assert run(mode, res, len, {"a": 1}) == 1
    res.breaker.force_open()
    assert run(mode, res, len, {"a": 1}) == "default"


def test_stale_custom_key(mode: str, clock: FakeClock) -> None:
    """A custom key function decides which calls share a stale entry."""
    res = otelres.Resilience(
        NAME,
        clock=clock,
        fallback=otelres.Fallback.stale(key=lambda args, _kwargs: args[0]["id"]),
    )
    assert run(mode, res, lambda req: f"user {req['id']}", {"id": 7, "trace": "x"}) == "user 7"
    res.breaker.force_open()
    assert run(mode, res, lambda _req: "unused", {"id": 7, "trace": "y"}) == "user 7"


def test_stale_does_not_remember_failed_results(mode: str, clock: FakeClock) -> None:
    """A result the breaker counts as a failure (a 503) is not remembered as a good result."""
    res = otelres.Resilience(
        NAME,
        clock=clock,
        breaker=otelres.BreakerPolicy(failure_result=is_5xx),
        fallback=otelres.Fallback.stale(),
    )
    assert run(mode, res, lambda: Response(503)).status == 503
    res.breaker.force_open()
    with pytest.raises(otelres.CircuitOpenError):
        run(mode, res, lambda: Response(200))


def test_rejected_call_whose_fallback_raises_is_rejected(mode: str, clock: FakeClock) -> None:
    """When the fallback itself raises on an open circuit, its error propagates and the call is rejected."""

    def broken(_error: BaseException) -> str:
        raise LookupError("no default configured")

    res = otelres.Resilience(NAME, clock=clock, fallback=otelres.Fallback.call(broken))
    res.breaker.force_open()
    with capture_events() as events, pytest.raises(LookupError):
        run(mode, res, Dependency("ok"))
    assert the_call(events)["outcome"] == "rejected"
    assert the_call(events)["attempts"] == 0


# -- cancellation ------------------------------------------------------------------------------


class BlockingClock(FakeClock):
    """A fake clock whose async sleep records the delay, signals, and then waits until cancelled."""

    def __init__(self) -> None:
        super().__init__()
        self.sleeping: asyncio.Event | None = None

    async def asleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        assert self.sleeping is not None
        self.sleeping.set()
        await asyncio.Event().wait()


def test_cancellation_during_backoff_leaves_the_counters_balanced() -> None:
    """Cancelling a call in its backoff sleep propagates CancelledError and returns its budget slots."""
    clock = BlockingClock()
    factory_calls: list[BaseException] = []
    res = otelres.Resilience(NAME, clock=clock, fallback=otelres.Fallback.call(factory_calls.append))
    dep = Dependency(ConnectionError, "ok")
    during: list[tuple[int, int]] = []

    async def afn() -> object:
        return dep()

    async def main() -> None:
        clock.sleeping = asyncio.Event()
        task = asyncio.create_task(res.acall(afn))
        await clock.sleeping.wait()
        during.append((res.budget.calls_in_flight, res.budget.retries_in_flight))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert during == [(1, 1)]
    assert (res.budget.calls_in_flight, res.budget.retries_in_flight) == (0, 0)
    assert dep.attempts == 1
    assert factory_calls == []
    assert res.breaker.state is otelres.State.CLOSED


def test_cancellation_during_an_attempt_leaves_everything_balanced(clock: FakeClock) -> None:
    """Cancelling a call in its attempt propagates, counts neither way in the breaker and frees the budget."""
    factory_calls: list[BaseException] = []
    res = otelres.Resilience(NAME, clock=clock, fallback=otelres.Fallback.call(factory_calls.append))
    attempts = 0

    async def hang() -> None:
        nonlocal attempts
        attempts += 1
        await asyncio.Event().wait()

    async def main() -> None:
        task = asyncio.create_task(res.acall(hang))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert attempts == 1
    assert factory_calls == []
    assert (res.budget.calls_in_flight, res.budget.retries_in_flight) == (0, 0)
    stats = res.breaker.stats()
    assert (stats.successes, stats.failures, stats.ignored) == (0, 0, 1)


def test_call_cancelled_in_its_backoff_is_a_failure(events: CapturedEvents) -> None:
    """A call cancelled in its backoff sleep (after a failed attempt) reports outcome failure, not success."""
    clock = BlockingClock()
    res = otelres.Resilience(NAME, clock=clock)

    async def afn() -> object:
        raise ConnectionError

    async def main() -> None:
        clock.sleeping = asyncio.Event()
        task = asyncio.create_task(res.acall(afn))
        await clock.sleeping.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert the_call(events)["outcome"] == "failure"
    assert the_call(events)["attempts"] == 1


# -- testing mode ------------------------------------------------------------------------------


def test_testing_mode_attempts_one(mode: str, clock: FakeClock) -> None:
    """testing_mode(attempts=1) makes every call a single attempt, without a sleep."""
    dep = Dependency(ConnectionError, "ok")
    res = otelres.Resilience(NAME, clock=clock)
    with testing.testing_mode(attempts=1), pytest.raises(ConnectionError):
        run(mode, res, dep)
    assert dep.attempts == 1
    assert clock.sleeps == []


def test_testing_mode_keeps_attempts_without_sleeps(
    mode: str, clock: FakeClock, events: CapturedEvents
) -> None:
    """testing_mode() keeps the 3 attempts and reports the retries, but sleeps none of the delays."""
    dep = Dependency(ConnectionError)
    res = otelres.Resilience(NAME, clock=clock, retry=NO_JITTER)
    with testing.testing_mode(), pytest.raises(ConnectionError):
        run(mode, res, dep)
    assert dep.attempts == 3
    assert clock.sleeps == []
    assert clock.monotonic() == 1000.0
    assert [e.fields["delay"] for e in events.of("retry")] == [0.1, 0.2]


# -- events ------------------------------------------------------------------------------------


def test_retry_events_carry_attempt_delay_and_reason(
    mode: str, clock: FakeClock, events: CapturedEvents
) -> None:
    """Each retry reports the attempt that failed, the delay before the next and a short reason."""
    dep = Dependency(ConnectionError, TimeoutError, ValueError, Response(503), "ok")
    policy = otelres.RetryPolicy(attempts=5, jitter="none", retry_on=Exception, retry_on_result=is_5xx)
    res = otelres.Resilience(NAME, clock=clock, retry=policy)
    assert run(mode, res, dep) == "ok"
    assert [e.fields for e in events.of("retry")] == [
        {"attempt": 1, "delay": 0.1, "reason": "connect"},
        {"attempt": 2, "delay": 0.2, "reason": "timeout"},
        {"attempt": 3, "delay": 0.4, "reason": "error"},
        {"attempt": 4, "delay": 0.8, "reason": "result"},
    ]
    assert all(e.breaker == NAME for e in events.events)


def test_custom_reason_labels_retries(mode: str, clock: FakeClock, events: CapturedEvents) -> None:
    """RetryPolicy(reason=...) names the retries (e.g. status_503)."""

    def reason(exc: BaseException | None, result: Any) -> str:
        return f"status_{result.status}" if exc is None else type(exc).__name__

    policy = otelres.RetryPolicy(retry_on_result=is_5xx, reason=reason)
    res = otelres.Resilience(NAME, clock=clock, retry=policy)
    run(mode, res, Dependency(Response(503), BrokenPipeError, "ok"))
    assert [e.fields["reason"] for e in events.of("retry")] == ["status_503", "BrokenPipeError"]


def test_call_event_reports_outcome_duration_and_attempts(
    mode: str, clock: FakeClock, events: CapturedEvents
) -> None:
    """The call event reports outcome, attempts and the duration from the first attempt, sleeps included."""
    res = otelres.Resilience(NAME, clock=clock, retry=NO_JITTER)
    run(mode, res, Dependency(ConnectionError, ConnectionError, "ok", clock=clock, cost=0.5))
    with pytest.raises(ConnectionError):
        run(mode, res, Dependency(ConnectionError, clock=clock, cost=0.5))
    assert [e.fields for e in events.of("call")] == [
        {"outcome": "success", "duration": pytest.approx(1.8), "attempts": 3},
        {"outcome": "failure", "duration": pytest.approx(1.8), "attempts": 3},
    ]


def test_failed_result_reports_failure(mode: str, clock: FakeClock, events: CapturedEvents) -> None:
    """A returned result that the breaker counts as a failure makes the call's outcome failure."""
    res = otelres.Resilience(NAME, clock=clock, breaker=otelres.BreakerPolicy(failure_result=is_5xx))
    run(mode, res, Dependency(Response(503)))
    assert the_call(events) == {"outcome": "failure", "duration": 0.0, "attempts": 1}


# -- decorator ---------------------------------------------------------------------------------


def test_decorator_preserves_the_function(clock: FakeClock) -> None:
    """@resilient keeps __name__, __qualname__, __doc__ and __wrapped__ of a sync function."""

    def fetch_user(user_id: int) -> str:
        """Fetch a user."""
        return f"user {user_id}"

    wrapped = otelres.resilient(NAME, clock=clock)(fetch_user)
    assert wrapped.__name__ == "fetch_user"
    assert wrapped.__qualname__ == fetch_user.__qualname__
    assert wrapped.__doc__ == "Fetch a user."
    assert wrapped.__wrapped__ is fetch_user  # type: ignore[attr-defined]
    assert not inspect.iscoroutinefunction(wrapped)
    assert wrapped(7) == "user 7"


def test_decorator_on_an_async_function(clock: FakeClock, events: CapturedEvents) -> None:
    """@resilient on an async function gives a coroutine function that retries through the async path."""
    dep = Dependency(ConnectionError, "ok")

    @otelres.resilient(NAME, clock=clock, retry=NO_JITTER)
    async def fetch(key: str) -> object:
        """Fetch asynchronously."""
        await asyncio.sleep(0)
        return dep(key)

    assert inspect.iscoroutinefunction(fetch)
    assert fetch.__name__ == "fetch"
    assert fetch.__doc__ == "Fetch asynchronously."
    assert asyncio.run(fetch("k")) == "ok"
    assert dep.calls == [(("k",), {})] * 2
    assert clock.sleeps == [0.1]
    assert the_call(events)["attempts"] == 2


def test_resilient_with_a_function_decorates_it_at_once(clock: FakeClock) -> None:
    """resilient(name, fn, **options) returns the decorated function directly."""
    dep = Dependency(ConnectionError, "ok")
    wrapped = otelres.resilient(NAME, dep, clock=clock)
    assert wrapped() == "ok"
    assert dep.attempts == 2
    assert isinstance(otelres.resilient(NAME, clock=clock), otelres.Resilience)


def test_decorated_functions_share_one_policy(clock: FakeClock) -> None:
    """Two functions decorated by one Resilience share its breaker: one opening rejects the other."""
    res = otelres.Resilience(NAME, clock=clock, breaker=otelres.BreakerPolicy(consecutive_failures=1))

    @res
    def first() -> None:
        raise ConnectionError

    @res
    def second() -> str:
        return "never"

    with pytest.raises(ConnectionError):
        first()
    with pytest.raises(otelres.CircuitOpenError):
        second()


def test_decorated_bound_method_keeps_self(mode: str, clock: FakeClock) -> None:
    """A decorated method receives self, and the wrapper is still a descriptor."""

    class Client:
        res = otelres.Resilience(NAME, clock=clock)

        def __init__(self) -> None:
            self.dep = Dependency(ConnectionError, "ok")

        @res
        def get(self, path: str) -> object:
            return self.dep(path)

    client = Client()
    assert client.get("/x") == "ok"
    assert client.dep.calls == [(("/x",), {})] * 2
    assert Client.get.__name__ == "get"


# -- disabled ----------------------------------------------------------------------------------


def disable() -> None:
    otelres.configure(otelres.load_settings({"OTELRES_ENABLED": "false"}))


def test_disabled_passes_calls_straight_through(mode: str, events: CapturedEvents) -> None:
    """With OTELRES_ENABLED=false a call is made once, errors propagate, no breaker or event is involved."""
    disable()
    res = otelres.Resilience(NAME)
    otelres.default_registry().get(NAME).force_open()
    dep = Dependency(ConnectionError)
    with pytest.raises(ConnectionError) as caught:
        run(mode, res, dep)
    assert caught.value is dep.raised[0]
    assert dep.attempts == 1
    assert run(mode, res, Dependency("ok")) == "ok"  # an open circuit does not reject either
    assert kinds(events) == []


def test_disabled_ignores_a_private_clock_and_breaker(mode: str, clock: FakeClock) -> None:
    """Disabled applies to Resilience objects with their own breaker too: no retry, no sleep, no fallback."""
    disable()
    res = otelres.Resilience(NAME, clock=clock, fallback=otelres.Fallback.value("fb"))
    dep = Dependency(ConnectionError)
    with pytest.raises(ConnectionError):
        run(mode, res, dep)
    assert dep.attempts == 1
    assert clock.sleeps == []


def test_disabled_decorator_keeps_async_functions_async(clock: FakeClock) -> None:
    """With otelres disabled, a decorated async function stays a coroutine function, awaited once."""
    disable()
    dep = Dependency(ConnectionError, "ok")

    @otelres.resilient(NAME, clock=clock)
    async def fetch() -> object:
        return dep()

    assert inspect.iscoroutinefunction(fetch)
    with pytest.raises(ConnectionError):
        asyncio.run(fetch())
    assert dep.attempts == 1


# -- budget and counters -----------------------------------------------------------------------


def test_counters_return_to_zero_after_every_kind_of_call(mode: str, clock: FakeClock) -> None:
    """After successes, exhausted retries and rejections, no call or retry stays counted in flight."""
    res = otelres.Resilience(NAME, clock=clock, breaker=otelres.BreakerPolicy(consecutive_failures=3))
    run(mode, res, Dependency("ok"))
    run(mode, res, Dependency(ConnectionError, "ok"))
    with pytest.raises(ConnectionError):
        run(mode, res, Dependency(ConnectionError))
    with pytest.raises(otelres.CircuitOpenError):
        run(mode, res, Dependency("ok"))
    assert (res.budget.calls_in_flight, res.budget.retries_in_flight) == (0, 0)
