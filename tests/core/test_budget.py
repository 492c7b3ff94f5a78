"""The retry budget: under a concurrent outage retries stay a small share of the calls in flight
(Envoy's budget, max(3, 20 %)), while a lone caller keeps all its attempts.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

import otelres
from otelres import BudgetPolicy, RetryBudget
from otelres.testing import FakeClock, capture_events

NAME = "https://flaky.example.com:443"
CALLERS = 50
#: The default budget at CALLERS calls in flight: max(3, int(0.2 * 50)).
ALLOWED_AT_PEAK = 10
#: Every wait in the concurrent test gives up after this long instead of hanging the suite.
TIMEOUT = 10.0


def tolerant_resilience(clock: FakeClock) -> otelres.Resilience:
    """One shared Resilience whose breaker never trips here, so only the budget limits retries."""
    return otelres.Resilience(
        NAME,
        clock=clock,
        breaker=otelres.BreakerPolicy(minimum_calls=10_000),
        retry=otelres.RetryPolicy(jitter="none"),
        budget=BudgetPolicy(),
    )


class HoldRefused(otelres.Listener):
    """Holds each caller whose retry the budget refuses inside its call until ``release`` is set, so that
    no call ends (and the calls in flight stay at their peak) while the others decide.
    """

    def __init__(self, release: threading.Event, decided: threading.Condition) -> None:
        self.release = release
        self.decided = decided
        self.held = 0

    def on_event(self, event: otelres.Event) -> None:
        if (
            event.kind == "retry_suppressed"
            and event.breaker == NAME
            and event.attempt == 1
            and event.reason == "budget"
            and not self.release.is_set()
        ):
            with self.decided:
                self.held += 1
                self.decided.notify_all()
            self.release.wait(TIMEOUT)


class Outage:
    """The dependency: it always raises ConnectionError. Its first attempts all meet at a barrier, so
    the callers are genuinely concurrent; a second attempt waits for ``release``, so the granted retries
    stay in flight together. Each attempt records (attempt, retries in flight, calls in flight).
    """

    def __init__(self, budget: RetryBudget, release: threading.Event, decided: threading.Condition) -> None:
        self.budget = budget
        self.release = release
        self.decided = decided
        self.first_wave = threading.Barrier(CALLERS, timeout=TIMEOUT)
        self.second_attempts = 0
        self.seen: list[tuple[int, int, int]] = []  # list.append is atomic

    def __call__(self, state: dict[str, int]) -> None:
        state["attempts"] += 1
        attempt = state["attempts"]
        self.seen.append((attempt, self.budget.retries_in_flight, self.budget.calls_in_flight))
        if attempt == 1:
            self.first_wave.wait()
        elif attempt == 2 and not self.release.is_set():
            with self.decided:
                self.second_attempts += 1
                self.decided.notify_all()
            self.release.wait(TIMEOUT)
        raise ConnectionError(f"refused (attempt {attempt})")


def storm(
    res: otelres.Resilience,
) -> tuple[Outage, HoldRefused, list[int], list[BaseException], dict[str, int]]:
    """50 concurrent calls through ``res`` against the outage, held at the moment every caller has decided
    on its first retry: returns what the callers saw and the budget as it stood at that moment.
    """
    release = threading.Event()
    decided = threading.Condition()
    outage = Outage(res.budget, release, decided)
    hold = HoldRefused(release, decided)
    attempts: list[int] = []
    errors: list[BaseException] = []
    peak: dict[str, int] = {}

    def caller() -> None:
        state = {"attempts": 0}
        try:
            res.call(outage, state)
        except BaseException as exc:
            errors.append(exc)
        attempts.append(state["attempts"])

    otelres.add_listener(hold)
    threads = [threading.Thread(target=caller) for _ in range(CALLERS)]
    try:
        for t in threads:
            t.start()
        with decided:
            everyone = decided.wait_for(lambda: outage.second_attempts + hold.held == CALLERS, TIMEOUT)
        peak.update(
            decided=int(everyone),
            granted=outage.second_attempts,
            refused=hold.held,
            retries=res.budget.retries_in_flight,
            calls=res.budget.calls_in_flight,
        )
    finally:
        release.set()
        for t in threads:
            t.join(TIMEOUT)
        otelres.remove_listener(hold)
    assert not any(t.is_alive() for t in threads)
    return outage, hold, attempts, errors, peak


def test_concurrent_outage_retries_stay_within_the_budget(clock: FakeClock) -> None:
    """50 concurrent callers of a dead dependency average 1.2-1.4 attempts, not 3: retries <= max(3, 20%)."""
    res = tolerant_resilience(clock)
    with capture_events() as events:
        outage, _hold, attempts, errors, peak = storm(res)

    # The moment every caller had decided on its first retry, with all 50 calls still in flight.
    assert peak["decided"] == 1
    assert peak["calls"] == CALLERS
    assert peak["retries"] == peak["granted"]
    assert peak["granted"] == ALLOWED_AT_PEAK  # 10 of the 50 first retries, the other 40 refused
    assert peak["refused"] == CALLERS - peak["granted"]

    # Every second attempt started while all 50 calls were in flight, within the budget for 50.
    second = [(retries, calls) for attempt, retries, calls in outage.seen if attempt == 2]
    assert len(second) == peak["granted"]
    for retries, calls in second:
        assert calls == CALLERS
        assert 1 <= retries <= max(3, int(0.2 * calls))
    # And no attempt ever saw more retries in flight than the budget allows at the peak.
    assert max(retries for _attempt, retries, _calls in outage.seen) <= ALLOWED_AT_PEAK

    # Each call failed with the dependency's own error; attempts per call stay near 1.2, far from 3.
    assert len(errors) == CALLERS
    assert all(type(e) is ConnectionError for e in errors)
    assert len(attempts) == CALLERS
    # 50 first attempts + 10 granted retries + at most 10 third attempts (granted as the refused calls
    # end and the calls in flight fall): 1.2 to 1.4 attempts a call.
    ratio = sum(attempts) / CALLERS
    assert 1.2 <= ratio <= 1.4, ratio
    assert max(attempts) <= 3

    # The refused retries were reported, as budget suppressions of the first retry.
    budget_suppressed = [e for e in events.of("retry_suppressed") if e.fields["reason"] == "budget"]
    first = [e for e in budget_suppressed if e.fields["attempt"] == 1]
    assert len(first) == peak["refused"]
    assert {e.fields["reason"] for e in events.of("retry_suppressed")} == {"budget"}

    # Afterwards nothing stays in flight, and the breaker never opened.
    assert (res.budget.calls_in_flight, res.budget.retries_in_flight) == (0, 0)
    assert res.breaker.state is otelres.State.CLOSED


def test_sequential_calls_keep_every_attempt(clock: FakeClock) -> None:
    """One call at a time against the same dead dependency: every call gets all 3 attempts (the floor)."""
    res = tolerant_resilience(clock)
    seen: list[tuple[int, int]] = []

    def dead() -> None:
        seen.append((res.budget.retries_in_flight, res.budget.calls_in_flight))
        raise ConnectionError("refused")

    with capture_events() as events:
        for _ in range(20):
            with pytest.raises(ConnectionError):
                res.call(dead)
    assert len(seen) == 60
    assert seen == [(0, 1), (1, 1), (1, 1)] * 20
    assert len(events.of("retry")) == 40
    assert events.of("retry_suppressed") == []
    assert (res.budget.calls_in_flight, res.budget.retries_in_flight) == (0, 0)


def test_sequential_calls_after_a_storm_keep_every_attempt(clock: FakeClock) -> None:
    """After a concurrent outage the budget is whole again: the next lone call makes 3 attempts."""
    res = tolerant_resilience(clock)
    storm(res)
    log: list[int] = []

    def dead() -> None:
        log.append(1)
        raise ConnectionError("refused")

    for _ in range(5):
        with pytest.raises(ConnectionError):
            res.call(dead)
    assert len(log) == 15


def test_a_budget_without_room_suppresses_every_retry(clock: FakeClock) -> None:
    """BudgetPolicy(ratio=0, min_retries=0) allows no retry: one attempt, suppressed for budget."""
    res = otelres.Resilience(NAME, clock=clock, budget=BudgetPolicy(ratio=0.0, min_retries=0))
    log: list[int] = []

    def dead() -> None:
        log.append(1)
        raise ConnectionError("refused")

    with capture_events() as events, pytest.raises(ConnectionError):
        res.call(dead)
    assert log == [1]
    assert clock.sleeps == []
    assert [(e.fields["attempt"], e.fields["reason"]) for e in events.of("retry_suppressed")] == [
        (1, "budget")
    ]


def test_a_disabled_budget_never_suppresses(clock: FakeClock) -> None:
    """BudgetPolicy(enabled=False) lets every due retry through, even with no room at all."""
    res = otelres.Resilience(NAME, clock=clock, budget=BudgetPolicy(ratio=0.0, min_retries=0, enabled=False))
    log: list[int] = []

    def dead() -> None:
        log.append(1)
        raise ConnectionError("refused")

    with pytest.raises(ConnectionError):
        res.call(dead)
    assert len(log) == 3


def test_one_budget_shared_by_two_resilience_objects(clock: FakeClock) -> None:
    """A RetryBudget passed to two Resilience objects is shared: retries of one count against the other."""
    budget = RetryBudget(BudgetPolicy(min_retries=1, ratio=0.0))
    first = otelres.Resilience("a", clock=clock, budget=budget)
    second = otelres.Resilience("b", clock=clock, budget=budget)
    assert first.budget is second.budget is budget
    log: list[str] = []

    def second_dependency() -> None:
        log.append("b")
        raise ConnectionError

    def call_second() -> None:
        with pytest.raises(ConnectionError):
            second.call(second_dependency)

    def first_dependency() -> None:
        log.append("a")
        if len(log) == 2:
            # a's retry holds the only slot while b is called, from another thread: not nested
            # in a's attempt (a nested call would not retry at all: one retry layer).
            caller = threading.Thread(target=call_second)
            caller.start()
            caller.join(TIMEOUT)
        raise ConnectionError

    with capture_events() as events, pytest.raises(ConnectionError):
        first.call(first_dependency)
    assert log == ["a", "a", "b", "a"]
    assert [(e.breaker, e.fields["reason"]) for e in events.of("retry_suppressed")] == [("b", "budget")]


def test_registered_dependencies_share_one_budget() -> None:
    """Resilience objects naming the same dependency (no private breaker) share its breaker and budget."""
    first = otelres.Resilience(NAME)
    second = otelres.Resilience(NAME)
    other = otelres.Resilience("https://other.example.com:443")
    assert first.budget is second.budget
    assert first.breaker is second.breaker
    assert other.budget is not first.budget


def test_private_breaker_gets_a_private_budget(clock: FakeClock) -> None:
    """A Resilience with its own clock (a private breaker) has its own budget too."""
    assert otelres.Resilience(NAME, clock=clock).budget is not otelres.Resilience(NAME, clock=clock).budget


# -- RetryBudget, the unit ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("calls", "allowed"),
    [(0, 3), (1, 3), (10, 3), (19, 3), (20, 4), (24, 4), (25, 5), (50, 10), (100, 20), (1000, 200)],
)
def test_allowed_is_the_floor_or_a_fifth_of_calls_in_flight(calls: int, allowed: int) -> None:
    """allowed() is max(3, int(0.2 * calls in flight)) by default."""
    budget = RetryBudget()
    for _ in range(calls):
        budget.call_started()
    assert budget.calls_in_flight == calls
    assert budget.allowed() == allowed


def test_defaults_are_the_design_defaults() -> None:
    """The default budget is ratio 0.2, floor 3, enabled."""
    assert RetryBudget().policy == BudgetPolicy(ratio=0.2, min_retries=3, enabled=True)


def test_try_retry_grants_up_to_allowed_then_refuses() -> None:
    """try_retry() takes a slot while fewer than allowed() are in flight, then refuses without taking one."""
    budget = RetryBudget()
    assert [budget.try_retry() for _ in range(5)] == [True, True, True, False, False]
    assert budget.retries_in_flight == 3


def test_retry_ended_frees_a_slot() -> None:
    """retry_ended() gives a slot back, so the next try_retry() is granted again."""
    budget = RetryBudget()
    for _ in range(3):
        assert budget.try_retry()
    assert not budget.try_retry()
    budget.retry_ended()
    assert budget.retries_in_flight == 2
    assert budget.try_retry()
    assert not budget.try_retry()


def test_more_calls_in_flight_make_room() -> None:
    """Calls starting raise the limit; calls ending lower it again for the next request."""
    budget = RetryBudget()
    for _ in range(3):
        assert budget.try_retry()
    assert not budget.try_retry()
    for _ in range(20):
        budget.call_started()
    assert budget.try_retry()  # 4 allowed at 20 calls
    assert not budget.try_retry()
    for _ in range(20):
        budget.call_ended()
    assert budget.calls_in_flight == 0
    assert budget.retries_in_flight == 4  # granted slots are kept until they end
    assert not budget.try_retry()


def test_disabled_budget_grants_everything_but_still_counts() -> None:
    """enabled=False grants every retry and still counts them in flight (for telemetry)."""
    budget = RetryBudget(BudgetPolicy(enabled=False))
    assert all(budget.try_retry() for _ in range(100))
    assert budget.retries_in_flight == 100
    for _ in range(100):
        budget.retry_ended()
    assert budget.retries_in_flight == 0


def test_zero_floor_and_ratio_refuse_everything() -> None:
    """min_retries=0 with ratio 0 refuses every retry; a ratio alone gives room only with enough calls."""
    assert not RetryBudget(BudgetPolicy(ratio=0.0, min_retries=0)).try_retry()
    budget = RetryBudget(BudgetPolicy(ratio=0.5, min_retries=0))
    budget.call_started()
    assert not budget.try_retry()  # int(0.5 * 1) == 0
    budget.call_started()
    assert budget.try_retry()  # int(0.5 * 2) == 1
    assert budget.retries_in_flight == 1


def test_try_retry_never_admits_past_the_limit_under_threads() -> None:
    """Many threads racing for slots never hold more granted retries than allowed() at once.

    The holders are counted apart from ``retries_in_flight``, which also shows, for an instant,
    the slot a refused caller takes and gives back.
    """
    budget = RetryBudget()
    start = threading.Barrier(16, timeout=TIMEOUT)
    granted: list[int] = []
    peak: list[int] = []
    lock = threading.Lock()
    holding = 0

    def racer() -> None:
        nonlocal holding
        start.wait()
        for _ in range(2000):
            if budget.try_retry():
                with lock:
                    holding += 1
                    peak.append(holding)
                granted.append(1)
                with lock:
                    holding -= 1
                budget.retry_ended()

    threads = [threading.Thread(target=racer) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert granted
    assert max(peak) <= 3
    assert budget.retries_in_flight == 0


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"ratio": 1.5}, "budget.ratio"),
        ({"ratio": -0.1}, "budget.ratio"),
        ({"ratio": float("nan")}, "budget.ratio"),
        ({"min_retries": -1}, "budget.min_retries"),
        ({"min_retries": 2.5}, "budget.min_retries"),
        ({"enabled": "yes"}, "budget.enabled"),
    ],
)
def test_budget_policy_validates(options: dict[str, Any], key: str) -> None:
    """A bad BudgetPolicy value raises ConfigError naming the key."""
    with pytest.raises(otelres.ConfigError) as caught:
        BudgetPolicy(**options)
    assert caught.value.key == key
