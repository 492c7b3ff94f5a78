"""A real CircuitBreaker driven by hypothesis and checked step by step against a reference model.

The model below is the breaker's contract written the obvious way (lists instead of rings,
no lock-free paths, no epochs shared with the implementation). The state machine acquires
permits and keeps them outstanding, so probes overlap, completes them in any order as a
success, a failure, a slow success or an ignored outcome, moves a FakeClock, and makes the
manual transitions; after every step the breaker's state, admissions, open period and
reported transitions must match the model, and its counters must match the calls made.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from otelres import BreakerPolicy, CircuitBreaker, State, add_listener, remove_listener
from otelres._breaker import REJECTED
from otelres.testing import CapturedEvents, FakeClock

CLOSED, OPEN, HALF_OPEN = State.CLOSED, State.OPEN, State.HALF_OPEN
FORCED_OPEN, DISABLED = State.FORCED_OPEN, State.DISABLED


class Model:
    """What a breaker with ``policy`` should do, one call at a time."""

    def __init__(self, policy: BreakerPolicy) -> None:
        self.policy = policy
        self.state = CLOSED
        self.episode = 0  # bumped by every state change: outcomes of an older one are stale
        # Window entries: (second, failed, slow); a count window keeps the last N entries.
        self.entries: list[tuple[int, bool, bool]] = []
        self.run = 0  # failures in a row
        self.open_until = 0.0
        self.failed_probes = 0  # since the breaker last closed
        self.permits = 0  # probe permits out in this half-open episode
        self.probe_successes = 0
        self.successes = self.failures = self.ignored = self.rejected = 0
        self.transitions: list[tuple[State, State, float]] = []

    # -- the window --

    def window(self, now: float) -> tuple[int, int, int]:
        """(calls, failures, slow calls) in the window as seen at ``now``."""
        if self.policy.window_calls is not None:
            entries = self.entries[-self.policy.window_calls :]
        else:
            seconds = max(1, math.ceil(self.policy.window_seconds))
            entries = [e for e in self.entries if e[0] > int(now) - seconds]
        return len(entries), sum(e[1] for e in entries), sum(e[2] for e in entries)

    def should_trip(self, now: float) -> tuple[bool, float]:
        policy = self.policy
        calls, failures, slow = self.window(now)
        rate = failures / calls if calls else 1.0
        if policy.consecutive_failures is not None and self.run >= policy.consecutive_failures:
            return True, rate
        # The minimum is capped at a count window's size (a window of N never sees more).
        if calls < min(policy.minimum_calls, policy.window_calls or policy.minimum_calls):
            return False, rate
        slow_tripped = policy.slow_call_seconds is not None and slow / calls >= policy.slow_call_rate
        return rate >= policy.failure_rate or slow_tripped, rate

    # -- state changes --

    def move(self, to: State, rate: float) -> None:
        self.transitions.append((self.state, to, rate))
        self.state = to
        self.episode += 1
        self.permits = self.probe_successes = 0
        if to is CLOSED:
            self.entries = []
            self.run = 0
            self.failed_probes = 0

    def open(self, now: float, rate: float) -> None:
        policy = self.policy
        wait = policy.open_seconds * policy.open_backoff**self.failed_probes
        self.open_until = now + min(policy.max_open_seconds, wait)
        self.move(OPEN, rate)

    def manual(self, target: State, now: float) -> None:
        if target is self.state:
            return
        if target is OPEN:
            self.open(now, 1.0)
        else:
            self.move(target, 0.0)

    # -- calls --

    def acquire(self, now: float) -> bool:
        if self.state is OPEN and now >= self.open_until:
            self.move(HALF_OPEN, 0.0)
        if self.state is HALF_OPEN and self.permits < self.policy.half_open_calls:
            self.permits += 1
            return True
        if self.state in (CLOSED, DISABLED):
            return True
        self.rejected += 1
        return False

    def record(self, episode: int, outcome: str, started: float, now: float) -> None:
        """``outcome`` is success, failure or ignored; slowness comes from the times."""
        policy = self.policy
        if outcome == "ignored":
            self.ignored += 1
        elif outcome == "failure":
            self.failures += 1
        else:
            self.successes += 1
        if episode != self.episode:
            return
        failed = outcome == "failure"
        slow = (
            outcome != "ignored"
            and policy.slow_call_seconds is not None
            and now - started >= policy.slow_call_seconds
        )
        if self.state is CLOSED and outcome != "ignored":
            # A plain success counts in the second its attempt started; a failure or a slow
            # call in the second it was reported (a call longer than the window still counts).
            self.entries.append((int(now) if failed or slow else int(started), failed, slow))
            self.run = self.run + 1 if failed else 0
            if failed or slow:  # a success can only lower the failure rate
                trip, rate = self.should_trip(now)
                if trip:
                    self.open(now, rate)
        elif self.state is HALF_OPEN:
            if outcome == "ignored":
                self.permits -= 1
            elif failed or slow:
                self.failed_probes += 1
                self.open(now, 1.0)
            else:
                self.probe_successes += 1
                if self.probe_successes == policy.half_open_calls:
                    self.move(CLOSED, 0.0)

    def retry_after(self, now: float) -> float:
        return max(0.0, self.open_until - now) if self.state is OPEN else 0.0


@dataclasses.dataclass
class Permit:
    token: int
    episode: int
    started: float


@st.composite
def policies(draw: st.DrawFn, *, time_window: bool) -> BreakerPolicy:
    """Small random policies. Times are quarter seconds, so that "slow" lands exactly on the limit."""
    window: dict[str, Any] = (
        {"window_seconds": draw(st.sampled_from([1.0, 2.0, 3.0, 5.0]))}
        if time_window
        else {"window_calls": draw(st.integers(1, 6))}
    )
    consecutive = draw(st.none() | st.integers(1, 4))
    slow = draw(st.none() | st.sampled_from([0.25, 0.5, 1.0, 2.0]))
    open_seconds = draw(st.sampled_from([0.25, 1.0, 2.0, 5.0]))
    rates = st.sampled_from([0.1, 0.25, 0.3, 0.5, 0.6, 0.75, 1.0])
    return BreakerPolicy(
        **window,
        minimum_calls=draw(st.integers(1, 6)),
        failure_rate=draw(rates),
        consecutive_failures=consecutive,
        slow_call_seconds=slow,
        slow_call_rate=draw(st.sampled_from([0.2, 0.5, 1.0])),
        half_open_calls=draw(st.integers(1, 3)),
        open_seconds=open_seconds,
        open_backoff=draw(st.sampled_from([1.0, 1.5, 2.0, 3.0])),
        max_open_seconds=open_seconds * draw(st.sampled_from([1, 2, 4, 10])),
    )


class BreakerMachine(RuleBasedStateMachine):
    """Drives one CircuitBreaker and its Model side by side; machine() adds the policy to start with."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.events = CapturedEvents()
        add_listener(self.events)
        self.outstanding: list[Permit] = []
        self.completed = 0
        self.refused = 0

    def setup(self, policy: BreakerPolicy) -> None:
        self.breaker = CircuitBreaker("model", policy, clock=self.clock)
        self.model = Model(policy)

    def teardown(self) -> None:
        remove_listener(self.events)

    # -- rules --

    @rule()
    def acquire(self) -> None:
        now = self.clock.monotonic()
        token = self.breaker.acquire()
        admitted = self.model.acquire(now)
        assert (token != REJECTED) == admitted, f"admitted={token != REJECTED}, model says {admitted}"
        if admitted:
            self.outstanding.append(Permit(token, self.model.episode, now))
        else:
            self.refused += 1

    @rule(n=st.integers(2, 4))
    def acquire_several(self, n: int) -> None:
        for _ in range(n):
            self.acquire()

    @precondition(lambda self: self.outstanding)
    @rule(pick=st.integers(0, 1000), outcome=st.sampled_from(["success", "failure", "slow", "ignored"]))
    def complete(self, pick: int, outcome: str) -> None:
        permit = self.outstanding.pop(pick % len(self.outstanding))
        slow_limit = self.breaker.policy.slow_call_seconds
        if outcome == "slow":
            outcome = "success"
            if slow_limit is not None:
                self.clock.advance(max(0.0, permit.started + slow_limit - self.clock.monotonic()))
        now = self.clock.monotonic()
        if outcome == "success":
            self.breaker.on_success(permit.token, permit.started)
        elif outcome == "failure":
            self.breaker.on_failure(permit.token, permit.started)
        else:
            self.breaker.on_ignored(permit.token)
        self.model.record(permit.episode, outcome, permit.started, now)
        self.completed += 1

    @precondition(lambda self: self.outstanding)
    @rule(n=st.integers(2, 4), outcome=st.sampled_from(["success", "failure", "slow", "ignored"]))
    def complete_several(self, n: int, outcome: str) -> None:
        for _ in range(min(n, len(self.outstanding))):
            self.complete(0, outcome)

    @rule(seconds=st.sampled_from([0.25, 0.5, 0.75, 1.0, 2.0, 5.0, 30.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @precondition(lambda self: self.model.state is OPEN)
    @rule()
    def wait_out_the_open_period(self) -> None:
        self.clock.advance(self.model.retry_after(self.clock.monotonic()))

    @rule(to=st.sampled_from([CLOSED, FORCED_OPEN, DISABLED, OPEN, HALF_OPEN]), how=st.integers(0, 9))
    def manual(self, to: State, how: int) -> None:
        if how < 8:
            return  # manual moves stay occasional
        if to is CLOSED:
            self.breaker.reset()
        elif to is FORCED_OPEN:
            self.breaker.force_open()
        elif to is DISABLED:
            self.breaker.disable()
        else:
            self.breaker.transition_to(to.value)
        self.model.manual(to, self.clock.monotonic())

    @rule()
    def check_stats(self) -> None:
        stats = self.breaker.stats()
        model = self.model
        assert stats.state is model.state
        assert (stats.successes, stats.failures, stats.ignored) == (
            model.successes,
            model.failures,
            model.ignored,
        )
        assert stats.successes + stats.failures + stats.ignored == self.completed
        assert stats.rejected == model.rejected == self.refused
        assert stats.transitions == len(model.transitions)
        window = (stats.window_calls, stats.window_failures, stats.window_slow)
        assert window == (model.window(self.clock.monotonic()) if stats.state is CLOSED else (0, 0, 0))

    # -- after every step --

    @invariant()
    def matches_the_model(self) -> None:
        model = self.model
        assert self.breaker.state is model.state
        if model.state is not FORCED_OPEN:
            assert self.breaker.retry_after() == model.retry_after(self.clock.monotonic())
        if model.state is HALF_OPEN:
            probes = sum(p.episode == model.episode for p in self.outstanding)
            assert probes <= self.breaker.policy.half_open_calls
        seen = self.events.transitions
        assert [t.seq for t in seen] == list(range(1, len(seen) + 1))
        assert [(t.from_state, t.to_state, t.failure_rate) for t in seen] == model.transitions


def machine(policy_strategy: st.SearchStrategy[BreakerPolicy]) -> type[BreakerMachine]:
    class Machine(BreakerMachine):
        @initialize(policy=policy_strategy)
        def start(self, policy: BreakerPolicy) -> None:
            self.setup(policy)

    return Machine


def replay(policy: BreakerPolicy, steps: list[tuple[Any, ...]]) -> None:
    """Run one fixed sequence of the machine's rules, checking the model after each step."""
    state = BreakerMachine()
    try:
        state.setup(policy)
        state.matches_the_model()
        for name, *args in steps:
            getattr(state, name)(*args)
            state.matches_the_model()
    finally:
        state.teardown()


MAIN = settings(
    max_examples=300,
    stateful_step_count=50,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_model_count_window() -> None:
    """A breaker with a count window behaves like the reference model in every reachable state."""
    run_state_machine_as_test(machine(policies(time_window=False)), settings=MAIN)


def test_model_time_window() -> None:
    """A breaker with a time window behaves like the reference model in every reachable state."""
    run_state_machine_as_test(machine(policies(time_window=True)), settings=MAIN)


# Two disagreements the machines found (shrunk), kept as fixed examples.


def test_model_slow_success_breaks_a_run_of_failures() -> None:
    """Failure, slow success, failure is not two failures in a row (consecutive_failures=2)."""
    policy = BreakerPolicy(window_calls=6, minimum_calls=6, consecutive_failures=2, slow_call_seconds=0.25)
    replay(
        policy,
        [
            ("acquire",),
            ("acquire",),
            ("acquire",),
            ("advance", 0.25),
            ("complete", 0, "failure"),
            ("complete", 0, "success"),  # slow: it ran 0.25 s
            ("complete", 0, "failure"),
        ],
    )


@pytest.mark.parametrize("slow_call_seconds", [None, 2.0])
def test_model_time_window_success_counts_in_its_start_second(slow_call_seconds: float | None) -> None:
    """A (not slow) success that ran from second 1000 into 1001 is not in a one-second window at 1001."""
    policy = BreakerPolicy(window_seconds=1.0, minimum_calls=1, slow_call_seconds=slow_call_seconds)
    replay(policy, [("acquire",), ("advance", 1.0), ("complete", 0, "success"), ("check_stats",)])
