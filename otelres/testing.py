"""Tools for testing code that uses otelres: a fake clock, a testing mode,
forced breaker states and captured events — each a context manager that
restores what it changed.

Nothing here sleeps for real: :class:`FakeClock` advances its own time when
asked to sleep, so a test of a 5 s open period runs in microseconds and is
deterministic.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
from typing import TYPE_CHECKING

from . import _events, _fork
from ._breaker import CircuitBreaker, State, Transition
from ._events import Event, Listener
from ._flow import testing_state
from ._registry import default_registry

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "CapturedEvents",
    "Event",
    "FakeClock",
    "capture_events",
    "forced_state",
    "in_trouble",
    "testing_mode",
]


class FakeClock:
    """A clock that moves only when told: :meth:`advance`, or a sleep.

    ``sleeps`` records every delay slept, in order, for assertions on backoff.
    Thread-safe. ``asleep`` yields to the event loop once (without waiting) so
    that concurrent tasks interleave as they would with a real sleep.
    """

    def __init__(self, start: float = 1000.0, wall: float = 1_700_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall - start
        self._lock = threading.Lock()
        _fork.renew(self, "_lock")
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        """The fake monotonic time."""
        return self._now

    def wall(self) -> float:
        """The fake wall-clock time, moving with the monotonic one."""
        return self._now + self._wall_offset

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``."""
        if seconds < 0:
            raise ValueError(f"a clock cannot go back ({seconds!r} s)")
        with self._lock:
            self._now += seconds

    def sleep(self, seconds: float) -> None:
        """Record the delay and advance time by it, without waiting."""
        with self._lock:
            self.sleeps.append(seconds)
            self._now += max(0.0, seconds)

    async def asleep(self, seconds: float) -> None:
        """Record the delay, advance time, and let other tasks run once."""
        self.sleep(seconds)
        await asyncio.sleep(0)

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now!r})"


@contextlib.contextmanager
def testing_mode(*, attempts: int | None = None, sleep: bool = False) -> Iterator[None]:
    """Within the block, retries do not sleep (unless ``sleep``) and every policy
    makes at most ``attempts`` attempts (when given). Restores the previous mode.
    """
    if attempts is not None and (isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1):
        raise ValueError(f"attempts must be an integer >= 1, not {attempts!r}")
    previous = (testing_state.attempts, testing_state.sleep)
    testing_state.attempts, testing_state.sleep = attempts, sleep
    try:
        yield
    finally:
        testing_state.attempts, testing_state.sleep = previous


@contextlib.contextmanager
def forced_state(breaker: CircuitBreaker | str, state: State | str) -> Iterator[CircuitBreaker]:
    """Hold a breaker (or the registered breaker of that name) in ``state`` for the
    block, then put it back in the state it had (closed, open and half-open come
    back as closed or open: their window and timers are not restored).
    """
    target = breaker if isinstance(breaker, CircuitBreaker) else default_registry().get(breaker)
    before = target.state
    target.transition_to(state)
    try:
        yield target
    finally:
        target.transition_to(State.OPEN if before is State.HALF_OPEN else before)


@contextlib.contextmanager
def in_trouble(breaker: CircuitBreaker | str) -> Iterator[CircuitBreaker]:
    """Treat a breaker's dependency (or the registered breaker of that name) as in trouble
    for the block (:meth:`~otelres.CircuitBreaker.troubled`), without touching its state or
    counts: every call through it then gets its call span up front, so a test can assert
    the span picture of a retried call with every attempt a child of the call span.
    """
    target = breaker if isinstance(breaker, CircuitBreaker) else default_registry().get(breaker)
    before = target._troubled_until  # the breaker's own test hook
    target._troubled_until = math.inf
    try:
        yield target
    finally:
        target._troubled_until = before


# Its name starts with "test": keep pytest from collecting it where it is imported.
testing_mode.__test__ = False  # type: ignore[attr-defined]


class CapturedEvents(Listener):
    """The events reported while :func:`capture_events` was active, in order:
    the core's own :class:`~otelres.Event` records (``kind``, ``breaker``, the
    figures; ``fields`` gives them by name).

    It listens per call, so every call takes the full flow while it is active.
    """

    per_call = True

    def __init__(self) -> None:
        self._lock = threading.Lock()
        _fork.renew(self, "_lock")
        self.events: list[Event] = []
        self.transitions: list[Transition] = []

    def on_event(self, event: Event) -> None:  # noqa: D102 - see Listener
        with self._lock:
            self.events.append(event)
            if event.transition is not None:
                self.transitions.append(event.transition)

    def of(self, kind: str) -> list[Event]:
        """The events of one kind."""
        return [e for e in self.events if e.kind == kind]


@contextlib.contextmanager
def capture_events() -> Iterator[CapturedEvents]:
    """Capture every event the core reports within the block."""
    captured = CapturedEvents()
    _events.add_listener(captured)
    try:
        yield captured
    finally:
        _events.remove_listener(captured)
