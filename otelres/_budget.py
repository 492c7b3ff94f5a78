"""The retry budget: retries in flight may be at most a share of the calls in flight.

This is Envoy's retry budget. Counting uses two deques, whose ``append`` and
``pop`` are atomic in CPython (and internally locked on free-threaded builds),
so the hot path takes no lock and ``len()`` is the number in flight.

A forked child starts with both empty (the calls in flight were the parent's
threads'), so every pop tolerates an empty deque: the forking thread's own
call, in flight at the fork, still ends in the child.
"""

from __future__ import annotations

from collections import deque

from . import _fork
from ._policy import BudgetPolicy

__all__ = ["RetryBudget"]


class RetryBudget:
    """The calls and retries in flight against one dependency."""

    __slots__ = ("__weakref__", "_retries", "calls", "policy")

    def __init__(self, policy: BudgetPolicy | None = None) -> None:
        self.policy = policy if policy is not None else BudgetPolicy()
        #: One item per logical call in flight; ``append``/``pop`` it directly on
        #: a hot path (``call_started``/``call_ended`` are the same, spelled out).
        self.calls: deque[None] = deque()
        self._retries: deque[None] = deque()
        _fork.renew(self)

    def _after_fork_in_child(self) -> None:
        """Nothing is in flight in a new process: the calls counted were other threads'.

        Emptied in place: guards hold ``calls`` itself (their ``in_flight``).
        """
        self.calls.clear()
        self._retries.clear()

    @property
    def calls_in_flight(self) -> int:
        """Logical calls started and not yet ended."""
        return len(self.calls)

    @property
    def retries_in_flight(self) -> int:
        """Retries granted whose attempt has not ended yet."""
        return len(self._retries)

    def allowed(self) -> int:
        """How many retries may be in flight right now."""
        policy = self.policy
        return max(policy.min_retries, int(policy.ratio * len(self.calls)))

    def call_started(self) -> None:
        """A logical call began."""
        self.calls.append(None)

    def call_ended(self) -> None:
        """A logical call ended (whatever its outcome)."""
        try:  # noqa: SIM105 - a try is free on 3.11+, suppress() is a call
            self.calls.pop()
        except IndexError:  # begun before a fork, ended in the child
            pass

    def try_retry(self) -> bool:
        """Take a retry slot if the budget allows; False means the retry is suppressed.

        The slot is taken first and given back when over: two racing callers can
        both be refused near the limit, but never both admitted past it.
        """
        retries = self._retries
        retries.append(None)
        if self.policy.enabled and len(retries) > self.allowed():
            retries.pop()
            return False
        return True

    def retry_ended(self) -> None:
        """The attempt a slot was taken for has ended."""
        try:  # noqa: SIM105 - a try is free on 3.11+, suppress() is a call
            self._retries.pop()
        except IndexError:  # taken before a fork, ended in the child
            pass
