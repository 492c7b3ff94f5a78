"""Client-side adaptive throttling: a struggling dependency sees its load fall smoothly.

A circuit breaker is all or nothing: closed, every call goes out; open, none does. A dependency
that is slow or partly failing (overloaded, one replica of four down) is better served by less
load than by none: the throttle of Google's SRE book ("Handling Overload", client-side
throttling) rejects each request locally, before it reaches the network, with probability::

    p = max(0, (requests - k * accepts) / (requests + 1))

where ``requests`` counts the requests of the window, the ones rejected here included (as in the
book), and ``accepts`` the ones the dependency accepted (any answer that was not an overload or
failure signal). While the dependency accepts more than ``1 / k`` of them, nothing is rejected;
past that, it receives about ``k`` times what it accepts, so that it still sees enough traffic
to show when it recovers. ``k`` = 2 (the book's choice) tolerates up to half of the requests
failing before throttling starts; a ``k`` near 1 throttles sooner and harder, and recovers more
slowly (each window lets through only ``k`` times what the previous one saw accepted).

A request sent is counted when its answer is recorded, as gRPC's adaptive throttler does, not
when it is admitted: a burst of concurrent requests whose answers have not come back yet (a
process starting, the first traffic after a quiet spell) is not mistaken for failures. Two
guards from peer implementations: no rejection before ``min_requests`` were counted in the
window (a handful of failures says little), and the probability never exceeds ``max_rejection``
(failsafe-go's ``maxRejectionRate``, Envoy's ``max_rejection_probability``), so some requests
always probe the dependency.

The counts live in a fixed ring of buckets (one a second for the default two minutes), so
memory does not grow with traffic. Decisions without I/O, on an injectable clock and random
source; one short lock, renewed in a forked child, which starts with an empty window.
"""

from __future__ import annotations

import random as _random
import threading
from typing import TYPE_CHECKING, NamedTuple

from . import _fork
from ._clock import MONOTONIC, Clock
from ._errors import ConfigError
from ._policy import THROTTLE_MAX_BUCKETS as MAX_BUCKETS
from ._policy import ThrottlePolicy

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["MAX_BUCKETS", "AdaptiveThrottle", "Throttle", "ThrottlePolicy", "ThrottleStats"]


class ThrottleStats(NamedTuple):
    """What a throttle's window holds now."""

    #: Requests of the window: answered (see :meth:`Throttle.record`) or rejected locally.
    requests: int
    #: Requests the dependency accepted in the window.
    accepts: int
    #: Requests rejected locally in the window (never sent).
    rejected: int
    #: The probability that the next request is rejected locally.
    probability: float


class Throttle:
    """Client-side adaptive throttling for one dependency (see the module's docstring).

    Call :meth:`admit` before each request: False means do not send it (fail it fast; it is
    counted as a request and as rejected). Call :meth:`record` once for each request sent, with
    whether the dependency accepted it. A request admitted and never recorded counts neither
    way: leave unrecorded one that ended for reasons of the caller's own (a cancellation, a bad
    argument), since it says nothing about the dependency.

    ``random`` returns a float in [0, 1) (default :func:`random.random`); ``clock`` is an
    :class:`~otelres.Clock` (default the monotonic clock): both are for tests. Thread-safe.
    """

    __slots__ = (
        "__weakref__",
        "_accepts",
        "_clock",
        "_head",
        "_lock",
        "_random",
        "_rejected",
        "_requests",
        "_ring_accepts",
        "_ring_rejected",
        "_ring_requests",
        "_width",
        "policy",
    )

    def __init__(
        self,
        policy: ThrottlePolicy | None = None,
        *,
        clock: Clock | None = None,
        random: Callable[[], float] | None = None,
    ) -> None:
        if policy is None:
            policy = ThrottlePolicy()
        elif not isinstance(policy, ThrottlePolicy):
            raise ConfigError("throttle", policy, "an otelres ThrottlePolicy or None")
        if clock is not None and not isinstance(clock, Clock):
            raise ConfigError(
                "throttle.clock", clock, "an otelres.Clock (monotonic, wall, sleep, asleep) or None"
            )
        if random is not None and not callable(random):
            raise ConfigError("throttle.random", random, "a callable returning a float in [0, 1), or None")
        #: The policy it throttles by.
        self.policy = policy
        self._clock: Clock = clock if clock is not None else MONOTONIC
        self._random: Callable[[], float] = random if random is not None else _random.random
        size = policy.buckets
        self._width = policy.window_seconds / size
        # Three parallel rings: bucket i holds the counts of the bucket index b with b % size == i;
        # _head is the index of the newest bucket (None before the first request).
        self._ring_requests = [0] * size
        self._ring_accepts = [0] * size
        self._ring_rejected = [0] * size
        self._head: int | None = None
        self._requests = self._accepts = self._rejected = 0
        self._lock = threading.Lock()
        _fork.renew(self, "_lock")

    def _after_fork_in_child(self) -> None:
        """A forked child starts with an empty window: the parent's requests were its own, and
        the responses to those in flight at the fork go to the parent's threads.
        """
        self._clear()

    def clear(self) -> None:
        """Forget the window's counts (a breaker does when its probes close the circuit)."""
        with self._lock:
            self._clear()

    def _clear(self) -> None:
        size = len(self._ring_requests)
        self._ring_requests = [0] * size
        self._ring_accepts = [0] * size
        self._ring_rejected = [0] * size
        self._head = None
        self._requests = self._accepts = self._rejected = 0

    def _advance(self) -> int:
        """Drop the buckets that left the window as of now; the ring slot of now's bucket.
        Called under the lock (the clock is read there too, so the buckets only move forward).
        """
        index = int(self._clock.monotonic() // self._width)
        size = len(self._ring_requests)
        head = self._head
        if head is None:
            self._head = index
            return index % size
        if index <= head:
            # The same bucket; or a clock that went back (not a monotonic one): count in the
            # newest bucket rather than in one that may already hold another time's counts.
            return head % size
        requests, accepts, rejected = self._ring_requests, self._ring_accepts, self._ring_rejected
        for b in range(head + 1, head + 1 + min(index - head, size)):
            i = b % size
            self._requests -= requests[i]
            self._accepts -= accepts[i]
            self._rejected -= rejected[i]
            requests[i] = accepts[i] = rejected[i] = 0
        self._head = index
        return index % size

    def _probability(self) -> float:
        """The rejection probability from the window's counts (called under the lock)."""
        requests = self._requests
        if requests < self.policy.min_requests:
            return 0.0
        p = (requests - self.policy.k * self._accepts) / (requests + 1)
        return min(max(p, 0.0), self.policy.max_rejection)

    def admit(self) -> bool:
        """Whether to send the next request: rejects it with the current probability, and counts
        a rejected one as a request at once (one let through is counted by :meth:`record`). The
        random draw happens only when the probability is above zero, so a healthy dependency
        costs no random numbers.
        """
        with self._lock:
            i = self._advance()
            p = self._probability()
            if p > 0.0 and self._random() < p:
                self._ring_requests[i] += 1
                self._ring_rejected[i] += 1
                self._requests += 1
                self._rejected += 1
                return False
            return True

    def record(self, accepted: bool) -> None:
        """The dependency answered a request :meth:`admit` let through: count it, as accepted
        unless the answer was an overload or failure signal (a 503, a 429, a timeout, a refused
        connection).
        """
        with self._lock:
            i = self._advance()
            self._ring_requests[i] += 1
            self._requests += 1
            if accepted:
                self._ring_accepts[i] += 1
                self._accepts += 1

    def rejection_probability(self) -> float:
        """The probability that :meth:`admit` rejects the next request, in [0, max_rejection]."""
        with self._lock:
            self._advance()
            return self._probability()

    def stats(self) -> ThrottleStats:
        """The window's counts and the rejection probability, read together."""
        with self._lock:
            self._advance()
            return ThrottleStats(self._requests, self._accepts, self._rejected, self._probability())

    def __repr__(self) -> str:
        return (
            f"Throttle(k={self.policy.k:g}, window_seconds={self.policy.window_seconds:g}, "
            f"requests={self._requests}, accepts={self._accepts}, rejected={self._rejected})"
        )


#: The public name (``otelres.AdaptiveThrottle``): a throttle of one's own, for code that is not a
#: call through a breaker (a breaker's own comes from ``BreakerPolicy(throttle=...)``).
AdaptiveThrottle = Throttle
