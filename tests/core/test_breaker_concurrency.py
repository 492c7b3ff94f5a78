"""CircuitBreaker under real threads and many asyncio tasks.

Nothing here sleeps to arrange timing: threads start together on a Barrier, probes hold
their permit until an Event is set, and time is a FakeClock. Timeouts on waits only turn a
hang into a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
import threading
from collections import Counter
from typing import TYPE_CHECKING, Any

import pytest

from otelres import BreakerPolicy, CircuitBreaker, CircuitOpenError, State, Transition
from otelres.testing import FakeClock, capture_events

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

THREADS = 32
TASKS = 1000
ROUNDS = 50
HANG = 30.0  # seconds before a wait that should return at once is called a hang


@pytest.fixture(autouse=True)
def _switch_threads_often() -> Iterator[None]:
    """Let the interpreter switch threads every few bytecodes, so that races get their chance."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(previous)


def half_open_breaker(clock: FakeClock, k: int) -> CircuitBreaker:
    """A breaker that one failure opened and whose open period is over."""
    breaker = CircuitBreaker(
        "hammer", BreakerPolicy(consecutive_failures=1, half_open_calls=k, open_seconds=1.0), clock=clock
    )
    breaker.on_failure(breaker.acquire(), clock.monotonic())
    clock.advance(1.0)
    return breaker


def assert_gapless_chain(transitions: list[Transition]) -> None:
    """Seq runs 1..n without gaps, and each transition starts where the previous one ended."""
    ordered = sorted(transitions, key=lambda t: t.seq)
    assert [t.seq for t in ordered] == list(range(1, len(ordered) + 1))
    state = State.CLOSED
    for t in ordered:
        assert t.from_state is state, f"seq {t.seq} leaves {t.from_state}, but the breaker was {state}"
        state = t.to_state


def run_threads(n: int, target: Callable[[int], None]) -> list[BaseException]:
    """Run ``target(i)`` on n threads released together; return what they raised."""
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            barrier.wait(timeout=HANG)
            target(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=HANG)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    return errors


def hammer_half_open(clock: FakeClock, k: int) -> None:
    """One round: THREADS threads call a fresh half-open breaker at once; check everything after."""
    counts: Counter[str] = Counter()
    settled = threading.Condition()
    release = threading.Event()

    def count(key: str) -> None:
        with settled:
            counts[key] += 1
            settled.notify_all()

    def probe() -> str:
        count("entered")
        if not release.wait(timeout=HANG):
            raise TimeoutError("never released")
        return "ok"

    def worker(_: int) -> None:
        try:
            breaker.call(probe)
        except CircuitOpenError as exc:
            count(f"rejected by {exc.breaker}")
            count("rejected")
        else:
            count("succeeded")

    with capture_events() as events:
        breaker = half_open_breaker(clock, k)
        errors: list[BaseException] = []
        runner = threading.Thread(target=lambda: errors.extend(run_threads(THREADS, worker)))
        runner.start()
        try:
            with settled:
                everyone_tried = settled.wait_for(
                    lambda: counts["entered"] + counts["rejected"] == THREADS, timeout=HANG
                )
            admitted = counts["entered"]
        finally:
            release.set()
            runner.join(timeout=HANG)
    assert everyone_tried
    assert admitted == k
    assert errors == []
    assert (counts["succeeded"], counts["rejected"]) == (k, THREADS - k)
    assert counts["rejected by hammer"] == THREADS - k
    stats = breaker.stats()
    assert stats.state is State.CLOSED
    assert (stats.successes, stats.failures, stats.rejected) == (k, 1, THREADS - k)
    assert stats.successes + stats.failures + stats.rejected == THREADS + 1  # + the tripping call
    assert_gapless_chain(events.transitions)
    assert [(t.from_state, t.to_state) for t in events.transitions] == [
        (State.CLOSED, State.OPEN),
        (State.OPEN, State.HALF_OPEN),
        (State.HALF_OPEN, State.CLOSED),
    ]


@pytest.mark.parametrize("k", [1, 3])
def test_threads_get_exactly_k_half_open_probes(clock: FakeClock, k: int) -> None:
    """32 threads at a half-open breaker: K probes run, the rest are rejected, and the breaker closes."""
    for _ in range(ROUNDS):  # a race shows in some rounds only
        hammer_half_open(clock, k)


@pytest.mark.parametrize("k", [1, 3])
def test_tasks_get_exactly_k_half_open_probes(clock: FakeClock, k: int) -> None:
    """1,000 asyncio tasks at a half-open breaker: K probes run, the rest are rejected, and it closes."""
    counts: Counter[str] = Counter()

    async def main(breaker: CircuitBreaker) -> int:
        start, release, everyone_tried = asyncio.Event(), asyncio.Event(), asyncio.Event()

        def count(key: str) -> None:
            counts[key] += 1
            if counts["entered"] + counts["rejected"] == TASKS:
                everyone_tried.set()

        async def probe() -> str:
            count("entered")
            await release.wait()
            return "ok"

        async def worker(i: int) -> None:
            await start.wait()
            try:
                if i % 2:
                    await breaker.acall(probe)
                else:
                    async with breaker.attempt():
                        await probe()
            except CircuitOpenError:
                count("rejected")
            else:
                count("succeeded")

        tasks = [asyncio.create_task(worker(i)) for i in range(TASKS)]
        start.set()
        try:
            await asyncio.wait_for(everyone_tried.wait(), timeout=HANG)
            admitted = counts["entered"]
        finally:
            release.set()
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=HANG)
        return admitted

    with capture_events() as events:
        breaker = half_open_breaker(clock, k)
        admitted = asyncio.run(main(breaker))
    assert admitted == k
    assert (counts["succeeded"], counts["rejected"]) == (k, TASKS - k)
    stats = breaker.stats()
    assert stats.state is State.CLOSED
    assert (stats.successes, stats.failures, stats.rejected) == (k, 1, TASKS - k)
    assert stats.successes + stats.failures + stats.rejected == TASKS + 1
    assert_gapless_chain(events.transitions)
    assert [t.to_state for t in events.transitions] == [State.OPEN, State.HALF_OPEN, State.CLOSED]


class Ignored(LookupError):
    pass


def outcome_of(rng: random.Random, failure_share: float = 0.25) -> str:
    draw = rng.random()
    return "failure" if draw < failure_share else "ignored" if draw < failure_share + 0.1 else "success"


def attempt(breaker: CircuitBreaker, outcome: str) -> None:
    def body() -> None:
        if outcome == "failure":
            raise ConnectionError
        if outcome == "ignored":
            raise Ignored

    with contextlib.suppress(ConnectionError, Ignored):
        breaker.call(body)


@pytest.mark.parametrize(
    "window", [{"window_calls": 100_000}, {"window_seconds": 86_400.0}], ids=["count", "time"]
)
def test_closed_state_counts_add_up_under_threads(clock: FakeClock, window: dict[str, Any]) -> None:
    """Mixed outcomes from 32 threads (while the clock moves) are each counted once, in stats and window."""
    calls_per_thread = 500
    policy = BreakerPolicy(**window, minimum_calls=10**9, ignore=Ignored)
    breaker = CircuitBreaker("mixed", policy, clock=clock)
    made: list[Counter[str]] = [Counter() for _ in range(THREADS)]

    def worker(i: int) -> None:
        rng = random.Random(i)
        for n in range(calls_per_thread):
            if i == 0 and n % 5 == 0:
                clock.advance(1.0)  # new seconds: the lock-free successes change bucket
            outcome = outcome_of(rng)
            attempt(breaker, outcome)
            made[i][outcome] += 1

    assert run_threads(THREADS, worker) == []
    total = sum(made, Counter())
    assert total.total() == THREADS * calls_per_thread
    stats = breaker.stats()
    assert (stats.successes, stats.failures, stats.ignored) == (
        total["success"],
        total["failure"],
        total["ignored"],
    )
    assert (stats.state, stats.rejected, stats.transitions) == (State.CLOSED, 0, 0)
    assert stats.window_failures == total["failure"]
    assert stats.window_calls == total["success"] + total["failure"]


def test_tripping_and_recovering_under_threads_loses_nothing(clock: FakeClock) -> None:
    """Threads calling while the breaker trips, probes and closes: every call and transition is counted."""
    calls_per_thread = 400
    policy = BreakerPolicy(
        window_calls=20,
        minimum_calls=5,
        failure_rate=0.5,
        half_open_calls=2,
        open_seconds=1.0,
        open_backoff=1.0,
        ignore=Ignored,
    )
    breaker = CircuitBreaker("flappy", policy, clock=clock)
    made: list[Counter[str]] = [Counter() for _ in range(THREADS)]

    def worker(i: int) -> None:
        rng = random.Random(1000 + i)
        for _ in range(calls_per_thread):
            clock.advance(0.01)  # time moves with the calls, however the threads are scheduled
            outcome = outcome_of(rng, failure_share=0.5)
            try:
                attempt(breaker, outcome)
            except CircuitOpenError:
                outcome = "rejected"
            made[i][outcome] += 1

    with capture_events() as events:
        assert run_threads(THREADS, worker) == []
    total = sum(made, Counter())
    stats = breaker.stats()
    assert (stats.successes, stats.failures, stats.ignored, stats.rejected) == (
        total["success"],
        total["failure"],
        total["ignored"],
        total["rejected"],
    )
    assert total.total() == THREADS * calls_per_thread
    assert stats.transitions == len(events.transitions)
    assert_gapless_chain(events.transitions)
    seen = {t.to_state for t in events.transitions}
    assert {State.OPEN, State.HALF_OPEN, State.CLOSED} <= seen  # the scenario really flapped
