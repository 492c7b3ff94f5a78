"""One retry layer and one permit per breaker: otelres calls nested in otelres calls."""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING, Any

import pytest

import otelres
from otelres.testing import capture_events

if TYPE_CHECKING:
    from otelres.testing import FakeClock

FAST = otelres.RetryPolicy(attempts=3, jitter="none")


class Dependency:
    """Counts its attempts and raises ConnectionError on each (or returns once ``ok_after``)."""

    def __init__(self, ok_after: int | None = None) -> None:
        self.attempts = 0
        self.ok_after = ok_after

    def __call__(self) -> str:
        self.attempts += 1
        if self.ok_after is not None and self.attempts > self.ok_after:
            return "ok"
        raise ConnectionError("refused")


def test_nested_calls_never_multiply_attempts(clock: FakeClock) -> None:
    """An inner call through another breaker makes one attempt per outer attempt: 3, not 3 x 3;
    its retry is reported as suppressed (nested)."""
    outer = otelres.Resilience("outer", clock=clock, retry=FAST)
    inner = otelres.Resilience("inner", clock=clock, retry=FAST)
    dep = Dependency()
    with capture_events() as events, pytest.raises(ConnectionError):
        outer.call(lambda: inner.call(dep))
    assert dep.attempts == 3
    assert [(e.breaker, e.reason) for e in events.of("retry_suppressed")] == [("inner", "nested")] * 3
    assert [e.breaker for e in events.of("retry")] == ["outer", "outer"]


def test_nested_async_calls_and_their_tasks_never_multiply_attempts(clock: FakeClock) -> None:
    """The same for async calls, and for a task the outer attempt starts (it inherits the context)."""
    outer = otelres.Resilience("outer", clock=clock, retry=FAST)
    inner = otelres.Resilience("inner", clock=clock, retry=FAST)
    dep = Dependency()

    async def attempt() -> str:
        return dep()

    async def handler() -> Any:
        return await asyncio.gather(inner.acall(attempt), asyncio.create_task(inner.acall(attempt)))

    with pytest.raises(ConnectionError):
        asyncio.run(outer.acall(handler))
    assert dep.attempts == 6  # two inner calls per outer attempt, one attempt each, three outer attempts


def test_an_inner_verdict_not_to_repeat_binds_the_outer_call(clock: FakeClock) -> None:
    """A call the inner layer must not repeat (not_idempotent) is made once however it is wrapped:
    the outer call does not retry it either, and says why."""
    outer = otelres.Resilience("outer", clock=clock, retry=FAST)
    inner = otelres.Resilience("inner", clock=clock, retry=FAST)
    dep = Dependency()
    with capture_events() as events, pytest.raises(ConnectionError):
        outer.call(lambda: inner.call_with(dep, (), {}, no_retry="not_idempotent"))
    assert dep.attempts == 1
    assert [(e.breaker, e.reason) for e in events.of("retry_suppressed")] == [
        ("inner", "not_idempotent"),
        ("outer", "not_idempotent"),
    ]


def test_the_verdict_binds_through_an_attempts_block(clock: FakeClock) -> None:
    """attempts() is an outer layer too: one attempt per block, and no repeat of a non-idempotent call."""
    outer = otelres.Resilience("outer", clock=clock, retry=FAST)
    inner = otelres.Resilience("inner", clock=clock, retry=FAST)
    plain, post = Dependency(), Dependency()
    with pytest.raises(ConnectionError):
        for attempt in outer.attempts():
            with attempt:
                inner.call(plain)
    assert plain.attempts == 3
    with pytest.raises(ConnectionError):
        for attempt in outer.attempts():
            with attempt:
                inner.call_with(post, (), {}, no_retry="not_replayable")
    assert post.attempts == 1


def test_an_outer_call_that_does_not_retry_leaves_the_inner_retries(clock: FakeClock) -> None:
    """Only an enclosing call that will retry takes the retries over: under attempts=1 the inner retries."""
    outer = otelres.Resilience("outer", clock=clock, retry=otelres.RetryPolicy(attempts=1))
    inner = otelres.Resilience("inner", clock=clock, retry=FAST)
    dep = Dependency(ok_after=2)
    assert outer.call(lambda: inner.call(dep)) == "ok"
    assert dep.attempts == 3


def test_a_call_through_the_same_breaker_rides_on_the_outer_permit(clock: FakeClock) -> None:
    """Two layers naming one dependency share its breaker: in half-open the inner call is not refused
    for want of a second permit, the probe goes through, and the circuit closes after the outage."""
    policy = otelres.BreakerPolicy(consecutive_failures=1, open_seconds=5.0)
    breaker = otelres.CircuitBreaker("http://api:80", policy, clock=clock)
    outer = otelres.Resilience("http://api:80", breaker=breaker, retry=FAST)
    inner = otelres.Resilience("http://api:80", breaker=breaker, retry=FAST)
    down = Dependency()
    with pytest.raises(ConnectionError):
        outer.call(lambda: inner.call(down))
    assert breaker.state is otelres.State.OPEN
    assert down.attempts == 1  # opened by the first failure; the retry is not made into an open circuit
    clock.advance(5.0)
    assert outer.call(lambda: inner.call(lambda: "back")) == "back"
    assert breaker.state is otelres.State.CLOSED
    assert breaker.stats().rejected == 0


def test_the_gave_up_note_is_added_once(clock: FakeClock) -> None:
    """An exception that leaves several layers, or is raised again, carries one 'gave up' note
    (none before Python 3.11, which has no notes)."""
    outer = otelres.Resilience("outer", clock=clock, retry=FAST)
    error = ConnectionError("refused")

    def fail() -> None:
        raise error

    for _ in range(3):
        with pytest.raises(ConnectionError):
            outer.call(fail)
    notes = [note for note in getattr(error, "__notes__", []) if note.startswith("otelres")]
    assert notes == (["otelres: outer: gave up after 3 attempts"] if sys.version_info >= (3, 11) else [])


def test_a_riding_call_passes_its_failure_verdict_to_the_enclosing_attempt(clock: FakeClock) -> None:
    """An inner call through the same breaker whose own predicates call a returned value a failure
    (a 503 response) makes the enclosing attempt count as a failure, once: the circuit opens on the
    configured number of such calls, not on half of it."""
    policy = otelres.BreakerPolicy(consecutive_failures=3)
    breaker = otelres.CircuitBreaker("http://api:80", policy, clock=clock)
    outer = otelres.Resilience("http://api:80", breaker=breaker, retry=otelres.RetryPolicy(attempts=1))
    inner = otelres.Resilience(
        "http://api:80",
        breaker=breaker.policy.evolve(failure_result=lambda status: status >= 500),
        clock=clock,
    )
    inner_guard = otelres.Guard(breaker, inner.budget, otelres.RetryPolicy(), judge=inner.guard.judge)
    from otelres._resilience import run  # noqa: PLC0415 - the driver, with a guard of its own

    for calls in range(1, 4):
        assert outer.call(lambda: run(inner_guard, lambda: 503, (), {})) == 503
        assert breaker.stats().failures == calls
    assert breaker.state is otelres.State.OPEN


def test_a_raising_predicate_leaks_no_budget_slot(clock: FakeClock) -> None:
    """A retry predicate that raises on the fast path's failure still ends the call's budget count."""

    def broken(exc: BaseException) -> bool:
        raise RuntimeError("predicate bug")

    res = otelres.Resilience("dep", clock=clock, retry=otelres.RetryPolicy(retry_on=broken))
    for _ in range(5):
        with pytest.raises(RuntimeError, match="predicate bug"):
            res.call(Dependency())
    assert res.budget.calls_in_flight == 0


def test_a_fallback_runs_outside_the_attempt(clock: FakeClock) -> None:
    """A fallback that calls another dependency is not inside the failed attempt: its own retries run."""
    backup = otelres.Resilience("backup", clock=clock, retry=FAST)
    backup_dep = Dependency(ok_after=2)
    primary = otelres.Resilience(
        "primary",
        clock=clock,
        retry=otelres.RetryPolicy(attempts=1),
        fallback=otelres.Fallback.call(lambda _error: backup.call(backup_dep)),
    )
    assert primary.call(Dependency()) == "ok"
    assert backup_dep.attempts == 3


def test_leaving_an_attempts_loop_before_its_block_hands_the_probe_back(clock: FakeClock) -> None:
    """A half-open probe admitted for an attempts() block that never ran (the loop was left) is
    handed back: the next call probes, and closes the circuit."""
    res = otelres.Resilience(
        "dep", clock=clock, breaker=otelres.BreakerPolicy(consecutive_failures=1, open_seconds=5.0)
    )
    with pytest.raises(ConnectionError):
        res.call(Dependency())
    clock.advance(5.0)
    for _attempt in res.attempts():
        break  # admitted (the probe), never entered
    assert res.call(lambda: "back") == "back"
    assert res.breaker.state is otelres.State.CLOSED
