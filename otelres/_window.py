"""Sliding windows of call outcomes: the figures a breaker trips on.

Two shapes, one interface: the last N calls (a ring of outcomes) or the last N
seconds (one bucket per second, each cleared when time wraps around to it).
Totals are kept incrementally so that reading the failure rate is O(1). Not
thread-safe on its own: the breaker calls it under its lock.
"""

from __future__ import annotations

import math

__all__ = ["CountWindow", "TimeWindow", "Window"]

# Outcome flags stored per call in the count window.
_FAILED = 1
_SLOW = 2


class CountWindow:
    """The outcomes of the last ``size`` calls."""

    __slots__ = ("_next", "_ring", "calls", "failures", "slow")

    def __init__(self, size: int) -> None:
        self._ring: list[int | None] = [None] * size
        self._next = 0
        self.calls = 0
        self.failures = 0
        self.slow = 0

    def record(self, now: float, failed: bool, slow: bool) -> None:  # noqa: ARG002 - the Window interface
        """Add one outcome, evicting the oldest once the ring is full."""
        ring = self._ring
        i = self._next
        old = ring[i]
        if old is not None:
            self.calls -= 1
            self.failures -= old & _FAILED
            self.slow -= (old & _SLOW) >> 1
        ring[i] = (_FAILED if failed else 0) | (_SLOW if slow else 0)
        self.calls += 1
        self.failures += failed
        self.slow += slow
        self._next = i + 1 if i + 1 < len(ring) else 0

    def add_successes(self, now: float, count: int) -> None:
        """Add ``count`` successes at once (the breaker's lock-free ones)."""
        for _ in range(min(count, len(self._ring))):
            self.record(now, failed=False, slow=False)

    def expire(self, now: float) -> None:
        """A count window never ages out."""

    def clear(self) -> None:
        """Forget every outcome."""
        self._ring = [None] * len(self._ring)
        self._next = 0
        self.calls = self.failures = self.slow = 0


class TimeWindow:
    """The outcomes of the last ``seconds`` seconds, in one-second buckets."""

    __slots__ = ("_buckets", "_head", "calls", "failures", "slow")

    def __init__(self, seconds: float) -> None:
        size = max(1, math.ceil(seconds))
        # Each bucket is [calls, failures, slow]; _head is the absolute second
        # of the newest bucket, so bucket i holds second s where s % size == i.
        self._buckets = [[0, 0, 0] for _ in range(size)]
        self._head: int | None = None
        self.calls = 0
        self.failures = 0
        self.slow = 0

    def expire(self, now: float) -> None:
        """Drop the buckets older than the window, as seen at ``now``."""
        second = int(now)
        head = self._head
        if head is None:
            self._head = second
            return
        if second <= head:
            return
        buckets = self._buckets
        size = len(buckets)
        for s in range(head + 1, head + 1 + min(second - head, size)):
            bucket = buckets[s % size]
            if bucket[0]:
                self.calls -= bucket[0]
                self.failures -= bucket[1]
                self.slow -= bucket[2]
                bucket[0] = bucket[1] = bucket[2] = 0
        self._head = second

    def record(self, now: float, failed: bool, slow: bool) -> None:
        """Add one outcome to the bucket of ``now``."""
        self.expire(now)
        second = int(now)
        head = self._head
        size = len(self._buckets)
        if head is not None and second <= head - size:
            # Its second has left the window. A success (placed by the second
            # it started in) is simply no longer in it; a failure (placed by the
            # clock read just before the lock) raced with a later record, and
            # counts as now rather than be lost.
            if not failed:
                return
            second = head
        bucket = self._buckets[second % size]
        bucket[0] += 1
        bucket[1] += failed
        bucket[2] += slow
        self.calls += 1
        self.failures += failed
        self.slow += slow

    def add_successes(self, now: float, count: int) -> None:
        """Add ``count`` successes at once to the bucket of ``now``."""
        self.expire(now)
        second = int(now)
        head = self._head
        size = len(self._buckets)
        if head is not None and second <= head - size:
            return  # their second has already left the window
        self._buckets[second % size][0] += count
        self.calls += count

    def clear(self) -> None:
        """Forget every outcome."""
        for bucket in self._buckets:
            bucket[0] = bucket[1] = bucket[2] = 0
        self._head = None
        self.calls = self.failures = self.slow = 0


Window = CountWindow | TimeWindow
