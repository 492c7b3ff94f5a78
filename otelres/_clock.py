"""Time as an injectable dependency.

Every decision otelres makes about time (window buckets, open durations,
backoff, deadlines) reads a :class:`Clock`, and the only sleeps in the library
go through one, so tests drive time with :class:`otelres.testing.FakeClock`
instead of sleeping for real.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, runtime_checkable

__all__ = ["MONOTONIC", "Clock", "MonotonicClock"]


@runtime_checkable
class Clock(Protocol):
    """A monotonic clock that can also wait."""

    def monotonic(self) -> float:
        """Seconds on a monotonic scale (only differences mean anything)."""

    def wall(self) -> float:
        """Seconds since the epoch, for HTTP dates such as ``Retry-After``."""

    def sleep(self, seconds: float) -> None:
        """Block the calling thread for ``seconds``."""

    async def asleep(self, seconds: float) -> None:
        """Suspend the calling task for ``seconds``."""


class MonotonicClock:
    """The real clock: :func:`time.monotonic`, :func:`time.sleep`, :func:`asyncio.sleep`."""

    __slots__ = ()

    monotonic = staticmethod(time.monotonic)
    wall = staticmethod(time.time)

    def sleep(self, seconds: float) -> None:
        """Sleep, but never for zero: ``time.sleep(0)`` still costs a system call."""
        if seconds > 0:
            time.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        """Sleep, but never for zero: ``asyncio.sleep(0)`` still costs a loop turn."""
        if seconds > 0:
            await asyncio.sleep(seconds)

    def __repr__(self) -> str:
        return "MonotonicClock()"


MONOTONIC = MonotonicClock()
