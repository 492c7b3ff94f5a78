"""The circuit breaker: a state machine that returns decisions and does no I/O.

A caller asks :meth:`CircuitBreaker.acquire` for a permit (an int token, or
``REJECTED``), makes its call *without any lock held*, and reports the outcome
with the token. Every state change bumps an epoch, and the token is the epoch it
was issued in: an outcome that arrives after the state moved on is counted in the
statistics but cannot move the new state (a call admitted while closed cannot
close a half-open breaker, nor take one of its probe permits).

The closed state admits without taking the lock (two attribute reads), and a
plain success in the closed state is recorded without it too: it bumps an
atomic tick counter (``next()`` on :func:`itertools.count` is one C call), and
the ticks are folded into the window, under the lock, by the next record that
needs the lock (a failure, a slow call, the first call of a new second) or by a
:meth:`~CircuitBreaker.stats` read. Since a success can only lower the failure
rate, the breaker evaluates its trip conditions when it records a failure or a
slow call: a success never opens a circuit. Half-open issues at most
``half_open_calls`` permits per episode, which is what makes "exactly K probes"
hold under any number of threads or tasks.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import math
import threading
import weakref
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from . import _events, _fork
from ._clock import MONOTONIC, Clock
from ._errors import CircuitOpenError
from ._names import safe_name
from ._policy import BreakerPolicy
from ._throttle import Throttle
from ._window import CountWindow, TimeWindow, Window

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from types import TracebackType

__all__ = ["REJECTED", "BreakerStats", "CircuitBreaker", "State", "Transition", "settle"]

_T = TypeVar("_T")


class State(str, enum.Enum):
    """A circuit breaker's state; the value is the name telemetry uses."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"
    DISABLED = "disabled"

    def __str__(self) -> str:
        return self.value


@dataclasses.dataclass(frozen=True, slots=True)
class Transition:
    """One state change of one breaker.

    ``seq`` numbers the breaker's transitions from 1 without gaps, so a
    consumer can order them and see that none was lost. ``failure_rate`` is
    the rate in the window when the change happened (0.0 where meaningless).
    """

    breaker: str
    from_state: State
    to_state: State
    failure_rate: float
    seq: int
    at: float


#: Called with every breaker's transitions after the listeners: shared state publishes them.
transition_hooks: list[Callable[[CircuitBreaker, Transition], None]] = []


def _report(transition: Transition, breaker: CircuitBreaker | None = None) -> None:
    """Tell the listeners about a state change (after the lock is released)."""
    if _events.listeners:
        _events.emit(_events.Event(_events.TRANSITION, transition.breaker, transition=transition))
    if breaker is not None:
        for hook in transition_hooks:
            hook(breaker, transition)


#: The token :meth:`CircuitBreaker.acquire` returns for a rejected call.
REJECTED = -1

#: How long after an attempt's failure :meth:`CircuitBreaker.troubled` stays true.
TROUBLE_SECONDS = 60.0

#: Every breaker alive in the process (the state gauge reads them; no strong refs).
LIVE: weakref.WeakSet[CircuitBreaker] = weakref.WeakSet()

_CLOSED = State.CLOSED
_OPEN = State.OPEN
_HALF_OPEN = State.HALF_OPEN
_FORCED_OPEN = State.FORCED_OPEN
_DISABLED = State.DISABLED


class FleetView(NamedTuple):
    """One breaker as its process publishes it to the fleet (:meth:`CircuitBreaker.fleet_view`)."""

    state: State
    seq: int
    stats: BreakerStats
    #: This process holds the fleet's half-open lease now.
    leased: bool
    #: A probe is in flight (half-open, a permit out).
    probing: bool
    #: A call was refused for want of the lease since the last read.
    wanted: bool


@dataclasses.dataclass(frozen=True, slots=True)
class BreakerStats:
    """A consistent snapshot of one breaker's counters since it was created.

    ``successes + failures + ignored`` are the attempts that ran and reported;
    ``rejected`` the calls refused without an attempt. ``window_*`` describe the
    sliding window as it stands (empty while not closed).
    """

    state: State
    successes: int
    failures: int
    ignored: int
    rejected: int
    transitions: int
    window_calls: int
    window_failures: int
    window_slow: int

    @property
    def failure_rate(self) -> float:
        """Failures over calls in the window (0.0 for an empty window)."""
        return self.window_failures / self.window_calls if self.window_calls else 0.0


class CircuitBreaker:
    """A per-dependency circuit breaker (thread-safe and task-safe).

    Use it through :class:`otelres.Resilience` (retries, budget, fallback,
    telemetry), with :meth:`call` / :meth:`acall`, :meth:`attempt` (``with``), or with the
    lower-level :meth:`acquire` / :meth:`record` pair.
    """

    __slots__ = (
        "__weakref__",
        "_bucket_end",
        "_bucket_start",
        "_clock",
        "_consecutive",
        "_epoch",
        "_failures",
        "_fleet",
        "_fleet_gate",
        "_fleet_lease_until",
        "_fleet_wanted",
        "_ignored",
        "_lock",
        "_minimum_calls",
        "_open_until",
        "_permits",
        "_probe_successes",
        "_rejections",
        "_rejections_read",
        "_reopens",
        "_state",
        "_successes",
        "_throttle",
        "_ticks",
        "_ticks_taken",
        "_transitions",
        "_trip_failure_rate",
        "_troubled_until",
        "_window",
        "name",
        "policy",
    )

    def __init__(
        self,
        name: str,
        policy: BreakerPolicy | None = None,
        *,
        clock: Clock | None = None,
    ) -> None:
        # Made safe here too: a breaker built by hand reaches the state gauge's labels.
        self.name = safe_name(name)
        self.policy = policy if policy is not None else BreakerPolicy()
        LIVE.add(self)
        # A count window of N calls can never see more than N: like
        # resilience4j, the minimum is capped at the window's size.
        self._minimum_calls = min(
            self.policy.minimum_calls, self.policy.window_calls or self.policy.minimum_calls
        )
        self._clock = clock if clock is not None else MONOTONIC
        self._lock = threading.Lock()
        self._state = _CLOSED
        self._epoch = 0
        self._window: Window = (
            CountWindow(self.policy.window_calls)
            if self.policy.window_calls is not None
            else TimeWindow(self.policy.window_seconds)
        )
        self._consecutive = 0
        self._open_until = 0.0
        self._reopens = 0
        self._permits = 0
        self._probe_successes = 0
        self._successes = 0
        self._failures = 0
        self._ignored = 0
        # Rejections are counted lock-free (an outage's hot path): next() on an
        # itertools.count is one C call; a stats() read takes one value itself.
        self._rejections = itertools.count()
        self._rejections_read = 0
        self._transitions = 0
        self._troubled_until = -math.inf
        #: Client-side adaptive throttling of a closed circuit's calls (policy.throttle).
        throttling = self.policy.throttle
        self._throttle = (
            Throttle(throttling, clock=self._clock) if throttling is not None and throttling.enabled else None
        )
        #: The failure rate that trips the circuit: the policy's; with a throttle, at least half-way
        #: from the rate the throttle holds a struggling dependency at (1 - 1/k of the calls it lets
        #: through fail) to 100 %. A throttle keeps a partly failing dependency at about k times what
        #: it accepts; a breaker that tripped at that rate would fight it, opening and closing while
        #: the throttle holds the load steady (k = 2 and the default 0.5 meet exactly). So the
        #: throttle answers "partly failing" and the breaker "down".
        self._trip_failure_rate = self.policy.failure_rate
        if self._throttle is not None:
            self._trip_failure_rate = max(self._trip_failure_rate, 1.0 - 0.5 / self._throttle.policy.k)
        # Shared state (otelres._fleet): the other processes' window (calls, failures,
        # slow), whether a half-open period needs the fleet's lease, until when (on
        # this breaker's clock) this process holds it, and whether a call was refused
        # for want of it since the last sync (only a process with traffic asks for it).
        self._fleet: tuple[int, int, int] | None = None
        self._fleet_gate = False
        self._fleet_lease_until = 0.0
        self._fleet_wanted = False
        # Lock-free successes: see the module docstring. They all belong to the
        # second [_bucket_start, _bucket_end); a count window has no seconds.
        self._ticks = itertools.count()
        self._ticks_taken = 0
        self._bucket_start = -math.inf
        self._bucket_end = math.inf if self.policy.window_calls is not None else -math.inf

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={self._state.value})"

    # -- reading -----------------------------------------------------------

    @property
    def state(self) -> State:
        """The current state (an open breaker whose wait is over still reads ``open``
        until the next call turns it half-open).
        """
        return self._state

    @property
    def throttle(self) -> Throttle | None:
        """The adaptive throttle beside this breaker (``BreakerPolicy(throttle=...)``), or None:
        its ``stats()`` and ``rejection_probability()`` say how hard it throttles now.
        """
        return self._throttle

    @property
    def clock(self) -> Clock:
        """The clock this breaker measures time with."""
        return self._clock

    def retry_after(self) -> float:
        """Seconds until the breaker admits a probe (0.0 when it admits calls now)."""
        state = self._state
        if state is _OPEN:
            return max(0.0, self._open_until - self._clock.monotonic())
        if state is _FORCED_OPEN:
            return self.policy.open_seconds
        return 0.0

    def troubled(self) -> bool:
        """Whether the dependency is in trouble: the circuit is open or half-open, or an
        attempt failed within the last :data:`TROUBLE_SECONDS`.

        Telemetry reads it before a call: a call in trouble gets its call span up front
        (its attempts are the span's children), a call in quiet times only once it has
        something to say (see :class:`otelres.Listener`).
        """
        state = self._state
        if state is _OPEN or state is _HALF_OPEN or state is _FORCED_OPEN:
            return True
        until = self._troubled_until
        return until > -math.inf and self._clock.monotonic() < until

    def stats(self) -> BreakerStats:
        """A consistent snapshot of the counters."""
        with self._lock:
            self._fold_ticks()
            w = self._window
            if self._state is _CLOSED:
                w.expire(self._clock.monotonic())
            return BreakerStats(
                self._state,
                self._successes,
                self._failures,
                self._ignored,
                self._rejected(),
                self._transitions,
                w.calls,
                w.failures,
                w.slow,
            )

    # -- admission -----------------------------------------------------------

    def acquire(self, retry: bool = False) -> int:
        """A permit token for one attempt, or :data:`REJECTED`.

        The token must be handed back to exactly one of :meth:`record` /
        :meth:`on_success` / :meth:`on_failure` / :meth:`on_ignored`. ``retry``: the
        attempt repeats one that failed; the throttle does not refuse it (the retry
        budget bounds retries, and a throttled retry would hide the real error).
        """
        throttle = self._throttle
        if throttle is not None and not retry and self._state is _CLOSED and not throttle.admit():
            next(self._rejections)  # throttled: a rejection with its own reason (see rejection())
            return REJECTED
        return self._acquire(retry)

    def _acquire(self, retry: bool = False) -> int:  # noqa: ARG002 - acquire()'s signature
        """:meth:`acquire` without the throttle (a :class:`~otelres.Guard` of a breaker
        without one binds this: the throttle's test stays off the hot path).
        """
        epoch = self._epoch
        state = self._state
        if state is _CLOSED:
            # Lock-free: the epoch was read first, so if the state changed in
            # between, the token is stale and its outcome cannot move the state.
            return epoch
        if state is _FORCED_OPEN or (state is _OPEN and self._clock.monotonic() < self._open_until):
            # Lock-free too: an open circuit whose wait is not over rejects whatever
            # else changes (a transition under the lock only ever ends the wait).
            next(self._rejections)
            return REJECTED
        return self._acquire_locked()

    def _rejected(self) -> int:
        """The calls rejected so far (lock held: each read takes one value of the count)."""
        value = next(self._rejections) - self._rejections_read
        self._rejections_read += 1
        return value

    def _acquire_locked(self) -> int:
        transition = None
        with self._lock:
            state = self._state
            if state is _OPEN:
                now = self._clock.monotonic()
                if now >= self._open_until:
                    if self._fleet_gate and now >= self._fleet_lease_until:
                        # Shared state: another process probes for the fleet (or will).
                        self._fleet_wanted = True
                        next(self._rejections)
                        return REJECTED
                    transition = self._move(_HALF_OPEN, 0.0)
                    state = _HALF_OPEN
            if state is _HALF_OPEN:
                # With shared state, no probe starts once this process's lease is over.
                if self._permits < self.policy.half_open_calls and (
                    not self._fleet_gate or self._clock.monotonic() < self._fleet_lease_until
                ):
                    self._permits += 1
                    token = self._epoch
                else:
                    next(self._rejections)
                    token = REJECTED
            elif state is _CLOSED or state is _DISABLED:
                token = self._epoch
            else:
                next(self._rejections)
                token = REJECTED
        if transition is not None:
            _report(transition, self)
        return token

    def rejection(self, error_class: type[CircuitOpenError] = CircuitOpenError) -> CircuitOpenError:
        """A fresh error for a rejected call (never one shared object whose
        traceback would grow with every raise), of ``error_class``: a patched
        client's rejection is also that library's own connection error.
        """
        # retry_after() inlined: this is the hot path of an outage.
        state = self._state
        if state is _OPEN:
            wait = self._open_until - self._clock.monotonic()
        elif state is _FORCED_OPEN:
            wait = self.policy.open_seconds
        elif state is _CLOSED and self._throttle is not None:
            # A closed circuit refuses only by its throttle.
            return error_class(self.name, 0.0, "throttled")
        else:
            wait = 0.0
        return error_class(self.name, wait)  # the error clamps it at 0 when read

    # -- outcomes ----------------------------------------------------------------

    def on_success(self, token: int, started: float) -> None:
        """The attempt admitted with ``token`` succeeded; it started at ``started``."""
        self.record(token, failed=False, started=started)

    def on_failure(self, token: int, started: float) -> None:
        """The attempt admitted with ``token`` failed."""
        self.record(token, failed=True, started=started)

    def on_ignored(self, token: int) -> None:
        """The attempt ended in a way that counts neither way (its permit is returned)."""
        self.record(token, None, 0.0)

    def record(self, token: int, failed: bool | None, started: float) -> None:
        """Report the outcome of the attempt admitted with ``token``.

        ``failed`` is True for a failure, False for a success and None for an
        outcome that counts neither way.
        """
        throttle = self._throttle
        if throttle is not None and failed is not None:
            throttle.record(not failed)  # the dependency answered: accepted unless it failed
        self._record(token, failed, started)

    def _record(self, token: int, failed: bool | None, started: float) -> None:
        """:meth:`record` without the throttle (what a Guard of a breaker without one binds)."""
        policy = self.policy
        slow_limit = policy.slow_call_seconds
        if (
            failed is False
            and slow_limit is None
            and self._bucket_start <= started < self._bucket_end
            and token == self._epoch
            and self._state is _CLOSED
        ):
            # The lock-free success (see the module docstring): it started in
            # the window's newest second, where the fold will count it. No
            # clock read on this path.
            next(self._ticks)
            return
        now = self._clock.monotonic()
        slow = slow_limit is not None and failed is not None and now - started >= slow_limit
        transition = None
        with self._lock:
            self._fold_ticks()
            if failed is None:
                self._ignored += 1
            elif failed:
                self._failures += 1
                self._troubled_until = now + TROUBLE_SECONDS
            else:
                self._successes += 1
            if token != self._epoch:
                return  # stale: the state this permit belonged to is gone
            state = self._state
            if state is _CLOSED:
                if failed is None:
                    return
                window = self._window
                if now >= self._bucket_end and self._bucket_end != math.inf:
                    # A new second: the ticks folded above belong to the old one.
                    self._bucket_start = float(int(now))
                    self._bucket_end = self._bucket_start + 1.0
                if failed or slow:
                    # A failure or a slow call counts when it is recorded (a
                    # call longer than the window must still count); a plain
                    # success in the second it started, as on the lock-free path.
                    window.record(now, failed, slow)
                else:
                    window.expire(now)
                    window.record(started, failed, slow)
                if failed:
                    self._consecutive += 1
                else:
                    self._consecutive = 0
                    if not slow:
                        return
                rate = self._trip_rate(window)
                if rate is not None:
                    transition = self._open(now, rate)
            elif state is _HALF_OPEN:
                if failed is None:
                    self._permits -= 1
                elif failed or slow:
                    self._reopens += 1
                    transition = self._open(now, 1.0)
                else:
                    self._probe_successes += 1
                    if self._probe_successes >= policy.half_open_calls:
                        transition = self._move(_CLOSED, 0.0)
        if transition is not None:
            _report(transition, self)

    # -- fork (see otelres._fork) ---------------------------------------------------

    def _after_fork_in_child(self) -> None:
        """Start the child with a fresh lock and no permit in flight.

        The epoch moves on, so every token handed out before the fork is stale:
        the outcomes of calls the forking thread had in flight are counted in
        the statistics but move no state, and the probe permits held by threads
        the child does not have are given back (a half-open breaker would
        otherwise wait forever for their outcomes).
        """
        self._lock = threading.Lock()
        self._epoch += 1
        self._permits = 0
        self._probe_successes = 0
        # A lease is the parent's: a child probes only with one of its own fleet member's.
        self._fleet_lease_until = 0.0
        self._fleet_wanted = False

    def _trip_rate(self, window: Window) -> float | None:
        """The failure rate to open at, or None while the trip conditions do not hold
        (lock held). With shared state the rule sees the fleet's combined window.
        """
        policy = self.policy
        calls, failures, slow = window.calls, window.failures, window.slow
        fleet = self._fleet
        if fleet is not None:
            calls += fleet[0]
            failures += fleet[1]
            slow += fleet[2]
        limit = policy.consecutive_failures
        slow_limit = policy.slow_call_seconds
        # Rates are compared as quotients: 7 / 25 >= 0.28 holds, while
        # 7 >= 0.28 * 25 (= 7.000000000000001) would not.
        if (limit is not None and self._consecutive >= limit) or (
            calls >= self._minimum_calls
            and (
                failures / calls >= self._trip_failure_rate
                or (slow_limit is not None and slow / calls >= policy.slow_call_rate)
            )
        ):
            return failures / calls if calls else 1.0
        return None

    def _fold_ticks(self) -> None:
        """Fold the lock-free successes into the counters and the window (lock held)."""
        value = next(self._ticks)  # this call takes one value itself
        count = value - self._ticks_taken
        self._ticks_taken = value + 1
        if count:
            self._successes += count
            if self._state is _CLOSED:
                self._window.add_successes(self._bucket_start, count)
                self._consecutive = 0

    # -- transitions (called with the lock held) -----------------------------------

    def _open(self, now: float, failure_rate: float) -> Transition:
        policy = self.policy
        # The exponent is clamped: after many failed probes the cap applies
        # anyway, and 2.0 ** 1024 would raise OverflowError.
        wait = policy.open_seconds * policy.open_backoff ** min(self._reopens, 64)
        self._open_until = now + min(policy.max_open_seconds, wait)
        return self._move(_OPEN, failure_rate)

    def _move(self, to: State, failure_rate: float) -> Transition:
        self._fold_ticks()
        from_state = self._state
        # The epoch moves before the state: a lock-free reader that sees the new
        # state also sees a new epoch, so no token outlives its state unnoticed.
        self._epoch += 1
        self._state = to
        self._transitions += 1
        self._permits = 0
        self._probe_successes = 0
        if to is not _HALF_OPEN:
            self._fleet_lease_until = 0.0  # a lease is for one half-open period
        # The window belongs to one closed period: it starts empty each time.
        self._window.clear()
        if self.policy.window_calls is None:
            self._bucket_start = self._bucket_end = -math.inf
        if to is _CLOSED:
            self._consecutive = 0
            self._reopens = 0
            if from_state is _HALF_OPEN and self._throttle is not None:
                # The probes proved the dependency back: the failures that opened the
                # circuit must not go on throttling it (lock order: breaker, then throttle).
                self._throttle.clear()
        return Transition(self.name, from_state, to, failure_rate, self._transitions, self._clock.monotonic())

    # -- shared state (driven by otelres._fleet's thread) --------------------------

    def fleet_view(self) -> FleetView:
        """What the fleet's thread publishes, read together (the seq first: a move after
        it shows as a changed seq when the fleet's answer is applied). Reading it takes
        the "a call was refused for want of the lease" flag.
        """
        seq = self._transitions
        stats = self.stats()
        with self._lock:
            wanted, self._fleet_wanted = self._fleet_wanted, False
            leased = self._clock.monotonic() < self._fleet_lease_until
            probing = self._state is _HALF_OPEN and self._permits > self._probe_successes
        return FleetView(self._state, seq, stats, leased, probing, wanted)

    def fleet_update(
        self, others: tuple[int, int, int] | None, *, gate: bool, lease_until: float | None = None
    ) -> None:
        """Take the other processes' window (None: deciding alone), whether a probe
        needs the fleet's lease, and (when given) until when this process holds it
        (on this breaker's clock; 0.0: it does not). A granted lease lets an open
        breaker probe on its next call; a lease withdrawn from a half-open breaker
        with no probe in flight sends it back to open (another process probes).
        """
        self._fleet = others
        self._fleet_gate = gate
        if lease_until is None:
            return
        transition = None
        with self._lock:
            now = self._clock.monotonic()
            if lease_until > now:
                self._fleet_lease_until = lease_until
                if self._state is _OPEN:
                    self._open_until = min(self._open_until, now)
            else:
                self._fleet_lease_until = 0.0
                if gate and self._state is _HALF_OPEN and self._permits <= self._probe_successes:
                    transition = self._move(_OPEN, 1.0)
                    self._open_until = now
        if transition is not None:
            _report(transition, self)

    def follow(self, state: State, remaining: float, seq: int) -> bool:
        """Move to the fleet's ``state`` (``remaining``: seconds of its open period
        left) unless this breaker has moved since ``seq`` was read (its own news
        goes out first); False when it had. An open breaker takes the fleet's end
        of the open period; a closed one opens; a half-open one probing for the
        fleet finishes its probes.
        """
        transition = None
        with self._lock:
            if self._transitions != seq:
                return False
            current = self._state
            now = self._clock.monotonic()
            if state is _OPEN:
                if current is _OPEN:
                    self._open_until = now + max(0.0, remaining)
                elif current is _CLOSED or (current is _HALF_OPEN and now >= self._fleet_lease_until):
                    transition = self._move(_OPEN, 1.0)
                    self._open_until = now + max(0.0, remaining)
            elif current is not state:
                transition = self._move(state, 0.0)
        if transition is not None:
            _report(transition, self)
        return True

    def transition_to(self, state: State | str) -> None:
        """Move to ``state`` by hand: ``forced_open`` rejects everything until
        reset, ``disabled`` admits everything and records nothing, ``closed``
        resets the window, ``open`` starts a normal open period.
        """
        target = State(state)
        with self._lock:
            if target is self._state:
                return
            if target is _OPEN:
                transition = self._open(self._clock.monotonic(), 1.0)
            else:
                transition = self._move(target, 0.0)
        _report(transition, self)

    def force_open(self) -> None:
        """Reject every call until :meth:`reset` (or another manual transition)."""
        self.transition_to(_FORCED_OPEN)

    def disable(self) -> None:
        """Admit every call and trip on nothing until :meth:`reset`."""
        self.transition_to(_DISABLED)

    def reset(self) -> None:
        """Close the breaker and forget the window and the open-duration growth."""
        self.transition_to(_CLOSED)

    # -- convenience drivers -------------------------------------------------------

    def classify(self, exc: BaseException | None, result: Any = None) -> bool | None:
        """Whether an attempt's outcome counts as a failure by this breaker's policy (None: ignored)."""
        return self.policy.judge(exc, result)

    def settle(
        self, token: int, started: float, exc: BaseException | None, result: Any = None
    ) -> bool | None:
        """Classify an attempt's outcome by this breaker's policy and record it (see :func:`settle`)."""
        return settle(self, self.policy, token, started, exc, result)

    def call(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> _T:
        """Run ``fn`` through the breaker alone (no retry); raise
        :class:`CircuitOpenError` when it rejects.
        """
        token = self.acquire()
        if token == REJECTED:
            raise self.rejection()
        started = self._clock.monotonic()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self.settle(token, started, exc)
            raise
        self.settle(token, started, None, result)
        return result

    async def acall(self, fn: Callable[..., Awaitable[_T]], /, *args: Any, **kwargs: Any) -> _T:
        """The async twin of :meth:`call`, over the same :meth:`acquire` / :meth:`record`."""
        token = self.acquire()
        if token == REJECTED:
            raise self.rejection()
        started = self._clock.monotonic()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            self.settle(token, started, exc)
            raise
        self.settle(token, started, None, result)
        return result

    def attempt(self) -> _Attempt:
        """A context manager (``with`` or ``async with``) guarding one block."""
        return _Attempt(self)


_held_at_fork: list[threading.Lock] = []


def _live_breakers() -> list[CircuitBreaker]:
    # Another thread may add a breaker while the set is copied: try again.
    for _ in range(10):
        try:
            return sorted(LIVE, key=id)
        except RuntimeError:
            continue
    return []


def _before_fork() -> None:
    """Hold every breaker's lock across the fork, so that the child copies no
    half-made update (a lock is held for a few attribute writes, never across
    I/O or user code: the wait is short; a lock not had in time is replaced in
    the child anyway).
    """
    for breaker in _live_breakers():
        lock = breaker._lock
        if lock.acquire(timeout=0.5):
            _held_at_fork.append(lock)


def _after_fork_in_parent() -> None:
    while _held_at_fork:
        _held_at_fork.pop().release()


def _after_fork_in_child() -> None:
    _held_at_fork.clear()  # the child's breakers get fresh locks instead
    for breaker in _live_breakers():
        breaker._after_fork_in_child()


_fork.at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)


def settle(
    breaker: CircuitBreaker,
    policy: BreakerPolicy,
    token: int,
    started: float,
    exc: BaseException | None,
    result: Any = None,
    *,
    inner_failed: bool = False,
) -> bool | None:
    """Judge an attempt's outcome by ``policy`` and record it with ``breaker``;
    returns the verdict (None: it counts neither way). ``inner_failed``: a call
    made inside the attempt through the same breaker already judged it a failure
    (it rode on this attempt, which records it once).

    The policy is the caller's: callers that share a breaker (a decorator and a
    patched client naming one dependency) each judge their own attempts. The
    permit is recorded even when a user predicate raises (as a failure, the
    cautious reading), so that a bug in a predicate can never wedge a half-open
    breaker; the predicate's error then propagates.
    """
    try:
        failed = True if inner_failed else policy.judge(exc, result)
    except BaseException:
        breaker.record(token, True, started)  # noqa: FBT003
        raise
    breaker.record(token, failed, started)
    return failed


class _Attempt:
    """One guarded block: acquires on entry, records the block's exception on exit."""

    __slots__ = ("_breaker", "_started", "_token")

    def __init__(self, breaker: CircuitBreaker) -> None:
        self._breaker = breaker
        self._token = REJECTED
        self._started = 0.0

    def __enter__(self) -> _Attempt:  # noqa: PYI034 - a slotted final helper; Self needs 3.11
        breaker = self._breaker
        token = breaker.acquire()
        if token == REJECTED:
            raise breaker.rejection()
        self._token = token
        self._started = breaker.clock.monotonic()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._breaker.settle(self._token, self._started, exc)

    async def __aenter__(self) -> _Attempt:  # noqa: PYI034
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)
