"""One logical call through deadline → retry (with budget) → breaker → attempt.

:class:`Guard` is what every call of one call site goes through, composed once
by the registry (the breaker and budget of the dependency, the retry policy,
the caller's verdict on failures, the fallback); it holds no per-call state.
:class:`Flow` holds every decision of one call and does no I/O: it never calls
the protected function and never sleeps. The drivers in
:mod:`otelres._resilience` run it, and they are the only places that call the
function and wait, so the sync and async paths cannot drift apart.

The protocol a driver follows::

    flow = Flow(guard, args, kwargs)
    try:
        while flow.admit():                 # False: ended without an attempt
            try: result = fn(...)
            except BaseException as exc: step = flow.failed(exc)   # RERAISE, DONE or a delay
            else: step = flow.returned(result)                     # DONE or a delay
            if step is DONE: return flow.value
            if step is RERAISE: raise
            sleep(step)
        return flow.end()                   # raises the rejection, or returns the fallback
    finally:
        flow.close()
"""

from __future__ import annotations

import contextlib
import contextvars
import random as _random
import sys
from typing import TYPE_CHECKING, Any, Final, Union

from . import _events
from ._backoff import backoff_delay
from ._breaker import REJECTED, CircuitBreaker, State, settle
from ._deadline import _DEADLINE, caused_by_caller_deadline
from ._degrade import note_degraded
from ._errors import CircuitOpenError, ConfigError, RetryError
from ._fallback import MISSING, Fallback
from ._policy import BreakerPolicy, RetryPolicy

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable

    from ._budget import RetryBudget
    from ._config import Target

__all__ = [
    "DONE",
    "ENCLOSING",
    "RERAISE",
    "Flow",
    "Guard",
    "InnerFailure",
    "current_attempt",
    "enclosing",
    "mark_no_retry",
    "testing_state",
]


class _Step:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


#: The call is over; the driver returns ``flow.value``.
DONE: Final = _Step("DONE")
#: The call is over; the driver re-raises the exception it is handling.
RERAISE: Final = _Step("RERAISE")


_ATTEMPT: contextvars.ContextVar[int] = contextvars.ContextVar("otelres_attempt", default=1)

#: The guard whose attempt is running in this context (None outside every otelres call),
#: or an :class:`InnerFailure` an inner call left there. A call made inside it reads it:
#: one retry layer (a patched client inside a ``@resilient`` function makes one attempt
#: per outer attempt) and one permit and one count per breaker (a call through the same
#: breaker rides on the outer attempt, which records the attempt once).
ENCLOSING: contextvars.ContextVar[Enclosing | None] = contextvars.ContextVar(
    "otelres_enclosing", default=None
)


class InnerFailure:
    """Left in :data:`ENCLOSING` by a call that rode on the enclosing attempt (same
    breaker) and judged its own outcome a failure (a patched client's 503 returned to a
    ``@resilient`` function as a response): the enclosing attempt records a failure,
    whatever its own predicates say of what it got back. The driver of the enclosing
    attempt reads it before it resets the variable, so it never outlives the attempt.
    """

    __slots__ = ("breaker", "guard", "retry")

    def __init__(self, guard: Guard) -> None:
        self.guard = guard
        # What a call inside reads of its enclosing attempt, as of a Guard: no type test
        # on the hot path.
        self.breaker = guard.breaker
        self.retry = guard.retry


#: What :data:`ENCLOSING` holds: the enclosing attempt's guard, or an inner failure left for it.
Enclosing = Union["Guard", InnerFailure]


def enclosing() -> Guard | None:
    """The guard of the attempt this code runs in, if any."""
    found = ENCLOSING.get()
    return found.guard if isinstance(found, InnerFailure) else found


#: The attribute an error (or a result) carries out of a call that must not be repeated:
#: the reason, which binds every enclosing otelres call too.
_NO_RETRY = "__otelres_no_retry__"


def mark_no_retry(outcome: object, reason: str) -> None:
    """Say on an error or result leaving a call that the call must not be repeated
    (``not_idempotent``, ``not_replayable``), so that no enclosing call retries it.
    """
    # A value without a __dict__ (an int, a slotted object) cannot carry it.
    with contextlib.suppress(AttributeError, TypeError):
        setattr(outcome, _NO_RETRY, reason)


def _no_retry_of(outcome: object) -> str | None:
    """The reason an inner call marked ``outcome`` with, if any."""
    try:
        reason = getattr(outcome, _NO_RETRY, None)
    except Exception:  # noqa: BLE001 - a result whose __getattr__ misbehaves says nothing
        return None
    return reason if isinstance(reason, str) else None


def current_attempt() -> int:
    """The number of the attempt running now (1 outside a retried call).

    An integration that marks its CLIENT spans sets ``http.request.resend_count``
    to ``current_attempt() - 1`` when that is above 0.
    """
    return _ATTEMPT.get()


class _TestingState:
    """What :func:`otelres.testing.testing_mode` switches (one per process)."""

    __slots__ = ("attempts", "sleep")

    def __init__(self) -> None:
        self.attempts: int | None = None
        self.sleep = True


testing_state = _TestingState()

_OPEN_STATES = (State.OPEN, State.FORCED_OPEN)


class Guard:
    """What every call of one call site to one dependency goes through: the
    dependency's breaker and retry budget (shared by every call site that names
    it), this call site's retry policy, its verdict on what counts as a failure
    (``judge``: a breaker policy's ``failure_on`` / ``ignore`` /
    ``failure_result``), its fallback and ``discard`` hook, and the configuration
    entry it was built from (``target``, None for a hand-built guard).

    Immutable after construction, no per-call state; the registry composes one
    (:meth:`otelres.Registry.guard`), and :class:`otelres.Resilience` and the
    integrations run calls through it.
    """

    __slots__ = (
        "acquire",
        "breaker",
        "budget",
        "clock",
        "discard",
        "enabled",
        "error_class",
        "fallback",
        "fast",
        "in_flight",
        "judge",
        "name",
        "now",
        "plain_results",
        "random",
        "record",
        "result_checks",
        "retry",
        "target",
    )

    def __init__(
        self,
        breaker: CircuitBreaker,
        budget: RetryBudget,
        retry: RetryPolicy,
        *,
        judge: BreakerPolicy | None = None,
        fallback: Fallback[Any] | None = None,
        discard: Callable[[Any], object] | None = None,
        random: Callable[[], float] | None = None,
        enabled: bool = True,
        target: Target | None = None,
        error_class: type[CircuitOpenError] = CircuitOpenError,
    ) -> None:
        if not isinstance(retry, RetryPolicy):
            raise ConfigError("retry", retry, "an otelres.RetryPolicy")
        if fallback is not None and not isinstance(fallback, Fallback):
            raise ConfigError("fallback", fallback, "an otelres.Fallback (Fallback.value(x) wraps a value)")
        self.name = breaker.name
        self.breaker = breaker
        self.budget = budget
        self.retry = retry
        self.judge = judge if judge is not None else breaker.policy
        self.fallback = fallback
        self.discard = discard
        self.clock = breaker.clock
        self.random = random if random is not None else _random.random
        self.enabled = enabled
        self.target = target
        #: What a rejection raises: CircuitOpenError, or a subclass that is also a
        #: patched library's own "could not reach the server" error.
        self.error_class = error_class
        # Bound once: the drivers and the flow call these on every call (without the
        # throttle's test when the breaker has none).
        throttled = breaker.throttle is not None
        self.acquire = breaker.acquire if throttled else breaker._acquire
        self.record = breaker.record if throttled else breaker._record
        self.now = self.clock.monotonic
        self.in_flight = budget.calls
        #: True when no policy looks at a call's result (the flow's fast path).
        self.plain_results = (
            self.judge.failure_result is None
            and retry.retry_on_result is None
            and (fallback is None or not fallback.caches)
        )
        #: The predicates that look at a result (the breaker's failure_result, the retry's
        #: retry_on_result): the drivers' fast path asks them, and hands a result any of
        #: them flags (or that makes one raise) to a Flow, which judges it in full.
        self.result_checks: tuple[Callable[[Any], object], ...] = tuple(
            check for check in (self.judge.failure_result, retry.retry_on_result) if check is not None
        )
        #: True when the drivers may run a first attempt without a Flow (a fallback, caching or
        #: not, needs one).
        self.fast = enabled and fallback is None

    def __repr__(self) -> str:
        return f"Guard({self.name!r}, state={self.breaker.state.value})"

    def rejected(self) -> CircuitOpenError:
        """The error of a call rejected without a Flow (reported to the listeners)."""
        error = self.breaker.rejection(self.error_class)
        if _events.listeners:
            event = _events.Event(
                _events.REJECTED, self.name, retry_after=error.retry_after, reason=error.reason
            )
            _events.emit(event)
        return error


class Flow:
    """The state of one logical call; see the module docstring for the protocol."""

    __slots__ = (
        "_admitted",
        "_attempt_started",
        "_attempt_token",
        "_key",
        "_pending",
        "_previous_delay",
        "_retry_slot",
        "_scopes",
        "_token",
        "args",
        "attempts",
        "error",
        "guard",
        "kwargs",
        "no_retry",
        "outcome",
        "outer",
        "rejection",
        "started",
        "value",
    )

    def __init__(
        self,
        guard: Guard,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        no_retry: str | None = None,
        outer: Enclosing | None = None,
        *,
        resumed: bool = False,
        up_front: bool = False,
    ) -> None:
        # Only what the success path needs is set here; the rest is set when a
        # retry is first considered (this constructor is on every call's path).
        self.guard = guard
        # True between an admission and its outcome: a permit to hand back if the call ends
        # in between (an attempts() loop left before its block ran).
        self._admitted = False
        #: The enclosing call's guard, when this call runs inside another otelres call.
        self.outer = outer
        self.args = args
        self.kwargs = kwargs
        self.no_retry = no_retry
        self.attempts = 0
        self.outcome = "success"
        self.started = -1.0  # the first attempt's start, set by admit()
        self._retry_slot = False
        self._key: Hashable | None = None
        self.error: BaseException | None = None
        self._attempt_token: contextvars.Token[int] | None = None
        # Per-call listeners: the eager ones hear the start now; the on-demand ones when
        # the call first has something to say (see _speak), or now while the dependency
        # is in trouble or when the driver asks (``up_front``: an attempts() loop, whose
        # body may open spans of its own around each attempt), unless a driver ran the
        # first attempt already (``resumed``).
        self._scopes: _events.Scopes | None = None
        self._pending: tuple[_events.Listener, ...] = ()
        if _events.call_listeners:
            eager = _events.eager_listeners
            pending = _events.on_demand_listeners
            if pending and not resumed and (up_front or guard.breaker.troubled()):
                eager, pending = _events.call_listeners, ()
            self._scopes = _events.start_call(guard.name, eager) if eager else []
            self._pending = pending
        guard.in_flight.append(None)  # the budget's calls in flight (atomic)

    # -- the steps -------------------------------------------------------------

    def admit(self) -> bool:
        """Get a permit for the next attempt.

        True: run the attempt. False: the call ended without one; the driver
        raises ``rejection`` (a fresh :class:`~otelres.CircuitOpenError`) when
        ``outcome`` is ``"rejected"``, else returns ``value`` (the fallback).
        The driver raises, not this method, so that the traceback of a
        rejection stays one frame short: an outage makes many of them.
        """
        guard = self.guard
        token = guard.acquire(self.attempts > 0)  # a retry is not the throttle's to refuse
        if token == REJECTED:
            return self.refuse()
        self._token = token
        self._admitted = True
        now = self._attempt_started = guard.now()
        if not self.attempts:
            self.started = now
            self._previous_delay = 0.0
        self.attempts += 1
        if self.attempts > 1:
            # The attempt number for whoever marks the attempt's CLIENT span
            # (http.request.resend_count); reset to the caller's at close().
            reset = _ATTEMPT.set(self.attempts)
            if self._attempt_token is None:
                self._attempt_token = reset
        return True

    def refuse(self) -> bool:
        """The breaker refused the next attempt: as :meth:`admit` saying False (a
        driver that asked the breaker itself hands a refusal over here).
        """
        guard = self.guard
        if self._retry_slot:
            self._end_retry()
        if self._pending:
            self._speak()
        error = guard.rejected()
        self.outcome = "rejected"  # stays so if the fallback raises
        self.error = error
        if guard.fallback is None or not self._fall_back(error):
            self.rejection = error
        return False

    def end(self) -> Any:
        """After :meth:`admit` said False: raise the rejection, or return the fallback."""
        if self.outcome == "rejected":
            raise self.rejection
        return self.value

    def resume(
        self,
        token: int,
        started: float,
        exc: BaseException | None,
        inner_failed: bool = False,
        result: Any = None,
    ) -> object:
        """Take over a call whose first attempt a driver ran on its own (admitted
        with ``token`` at ``started``): it raised ``exc`` (as :meth:`failed`), or
        returned ``result`` while a call inside judged it a failure (as :meth:`returned`,
        a call with something to say).
        """
        self._token = token
        self._attempt_started = self.started = started
        self._previous_delay = 0.0
        self.attempts = 1
        if exc is None:
            if self._pending:
                self._speak()
            return self.returned(result, inner_failed)
        return self.failed(exc, inner_failed)

    def failed(self, exc: BaseException, inner_failed: bool = False) -> object:
        """The attempt raised ``exc``: DONE, RERAISE, or the delay before the next attempt.
        ``inner_failed``: a call inside the attempt, through the same breaker, judged it a failure.
        """
        self._admitted = False
        guard = self.guard
        if self._pending:
            # A failure is something to say: the span starts before the breaker records it,
            # so that a transition it causes lands on the span (a predicate that raises reads
            # as a failure, as settle() reads it).
            try:
                failing = inner_failed or bool(guard.judge.judge(exc, None))
            except Exception:  # noqa: BLE001
                failing = True
            if failing:
                self._speak()
        try:
            failed = settle(
                guard.breaker, guard.judge, self._token, self._attempt_started, exc, inner_failed=inner_failed
            )
        finally:
            self._end_retry()
        if guard.retry.should_retry(exc):
            delay = self._retry_delay(exc, None)
            if delay is not None:
                return delay
        return self._give_up(exc, failed)

    def returned(self, result: Any, inner_failed: bool = False) -> object:
        """The attempt returned ``result``: DONE, or the delay before the next attempt."""
        self._admitted = False
        guard = self.guard
        if guard.plain_results:
            # Neither breaker, retry nor fallback looks at results: the common case.
            guard.record(self._token, inner_failed, self._attempt_started)
            if self._retry_slot:
                self._end_retry()
            self.outcome = "success"
            self.value = result
            return DONE
        try:
            failed = bool(
                settle(
                    guard.breaker,
                    guard.judge,
                    self._token,
                    self._attempt_started,
                    None,
                    result,
                    inner_failed=inner_failed,
                )
            )
        finally:
            self._end_retry()
        retry_on_result = guard.retry.retry_on_result
        if retry_on_result is None or not retry_on_result(result):
            self.outcome = "failure" if failed else "success"
            if not failed and guard.fallback is not None and guard.fallback.caches:
                guard.fallback.remember(self._cache_key(), result, guard.now())
            self.value = result
            return DONE
        delay = self._retry_delay(None, result)
        if delay is not None:
            if guard.discard is not None:
                guard.discard(result)
            return delay
        return self._give_up_result(result)

    def close(self) -> None:
        """Always called once the call ends, however it ends."""
        guard = self.guard
        if self._admitted:
            self._admitted = False
            guard.record(self._token, None, 0.0)  # its permit comes back; it counts neither way
        if self._retry_slot:
            self._end_retry()
        if self._attempt_token is not None:
            _ATTEMPT.reset(self._attempt_token)
        try:  # noqa: SIM105 - a try is free on 3.11+, suppress() is a call
            guard.in_flight.pop()
        except IndexError:  # begun before a fork, ended in the child (otelres._budget)
            pass
        if self._scopes is not None:
            if self._pending and (self.outcome != "success" or self.attempts > 1):
                self._speak()  # a failure, or a success after retries: worth a span
            started = self.started
            duration = guard.now() - started if started >= 0 else 0.0
            event = _events.Event(
                _events.CALL,
                guard.name,
                attempt=self.attempts,
                outcome=self.outcome,
                duration=duration,
                error=self.error,
            )
            _events.end_call(event, self._scopes, self._pending)

    def _speak(self) -> None:
        """The call has something to say: the on-demand per-call listeners hear its start
        now (a call span begins, back-dated to the call's start, and is current for the
        attempts that follow).
        """
        pending, self._pending = self._pending, ()
        started = self.started
        elapsed = self.guard.now() - started if started >= 0 else 0.0
        _events.start_call(self.guard.name, pending, elapsed, self._scopes)

    # -- decisions ----------------------------------------------------------------

    def _retry_delay(self, exc: BaseException | None, result: Any) -> float | None:
        """The delay before the next attempt, or None when no retry is made."""
        guard = self.guard
        policy = guard.retry
        name = guard.name
        attempts = policy.attempts
        cap = testing_state.attempts
        if cap is not None and cap < attempts:
            attempts = cap
        if self._pending:
            self._speak()  # a retry, or a retry due and not made, is something to say
        if self.attempts >= attempts:
            if attempts > 1 and _events.listeners:
                reason = policy.reason(exc, result)
                _events.emit(_events.Event(_events.EXHAUSTED, name, attempt=self.attempts, reason=reason))
            return None
        if self.no_retry is None:
            # An inner call's verdict that it must not be repeated binds this one too.
            self.no_retry = _no_retry_of(exc if exc is not None else result)
        if self.no_retry is not None:
            return self._suppress(self.no_retry)
        outer = self.outer
        if outer is not None and outer.retry.attempts > 1:
            # One retry layer: the enclosing call repeats this one as a whole.
            return self._suppress("nested")
        delay = None
        if policy.retry_after is not None:
            delay = policy.retry_after(exc, result)
            if delay is not None and not delay >= 0.0:
                delay = None  # NaN or negative from a hook: ignored, like a malformed header
            if delay is not None and delay > policy.retry_after_cap:
                # The server asked for more patience than the policy has: stop
                # rather than come back early.
                return self._suppress("retry_after")
        if delay is None:
            delay = backoff_delay(
                policy.jitter,
                self.attempts,
                policy.base_delay,
                policy.max_delay,
                guard.random,
                self._previous_delay,
            )
        deadline = self._deadline()
        if deadline is not None and guard.now() + delay >= deadline:
            return self._suppress("deadline")
        breaker = guard.breaker
        if breaker.state in _OPEN_STATES and breaker.retry_after() > delay:
            # The next attempt would only be rejected: end now with the real error.
            return self._suppress("circuit_open")
        if not guard.budget.try_retry():
            return self._suppress("budget")
        self._retry_slot = True
        self._previous_delay = delay
        # Until an attempt succeeds, the call has failed: a cancellation during
        # the backoff must not end it as a success.
        self.outcome = "failure"
        if _events.listeners:
            reason = policy.reason(exc, result)
            _events.emit(
                _events.Event(_events.RETRY, name, attempt=self.attempts, delay=delay, reason=reason)
            )
        return delay

    def _deadline(self) -> float | None:
        """The earlier of the policy's deadline for this call and the context's."""
        limit = self.guard.retry.deadline
        deadline = None if limit is None else self.started + limit
        outer = _DEADLINE.get()
        if outer is not None and (deadline is None or outer < deadline):
            deadline = outer
        return deadline

    def _suppress(self, reason: str) -> float | None:
        """Report a retry that was due and not made; the delay is None."""
        if _events.listeners:
            event = _events.Event(
                _events.RETRY_SUPPRESSED, self.guard.name, attempt=self.attempts, reason=reason
            )
            _events.emit(event)
        return None

    def _give_up(self, exc: BaseException, failed: bool | None) -> object:
        """No more attempts after ``exc``: fall back, wrap or re-raise.

        ``failed`` is the breaker's reading of ``exc``.
        """
        self.error = exc
        if self.no_retry is not None:
            mark_no_retry(exc, self.no_retry)
        if not isinstance(exc, Exception):
            self.outcome = "failure"
            return RERAISE
        guard = self.guard
        if caused_by_caller_deadline(exc):
            # The call failed, for the caller (its deadline ran out: a fallback may answer),
            # though the breaker counted it neither way; the suppressed retry says "deadline".
            failed = True
        if not failed and not (isinstance(exc, CircuitOpenError) and guard.fallback is not None):
            # The dependency answered; the error is the caller's own (a bad
            # argument, a 404): no fallback hides it, and it does not count as a
            # failure of the dependency. A circuit open further down (a patched
            # client's breaker for the same dependency) is no verdict on this
            # breaker, but it is the case a fallback is for.
            return RERAISE
        self.outcome = "failure"
        if self._fall_back(exc):
            return DONE
        if self.attempts > 1:
            if guard.retry.wrap_exhausted:
                self.error = RetryError(guard.name, self.attempts, exc)
                raise self.error from exc
            if sys.version_info >= (3, 11) and not any(
                isinstance(note, str) and note.startswith("otelres: ")
                for note in getattr(exc, "__notes__", ())
            ):
                # Once: an exception re-raised through nested calls, or raised again, keeps one note.
                exc.add_note(f"otelres: {guard.name}: gave up after {self.attempts} attempts")
        return RERAISE

    def _give_up_result(self, result: Any) -> object:
        """No more attempts after a result worth retrying: fall back, wrap or return it."""
        self.outcome = "failure"
        guard = self.guard
        if self.no_retry is not None:
            mark_no_retry(result, self.no_retry)
        error = RetryError(guard.name, self.attempts, None, result)
        if self._fall_back(error):
            if guard.discard is not None:
                guard.discard(result)  # replaced by the fallback: release it (an HTTP response)
            return DONE
        if guard.retry.wrap_exhausted and self.attempts > 1:
            self.error = error
            raise error
        self.value = result
        return DONE

    def _fall_back(self, error: BaseException) -> bool:
        guard = self.guard
        fallback = guard.fallback
        if fallback is None:
            return False
        value = fallback.resolve(self._cache_key(), error, guard.now())
        if value is MISSING:
            return False
        if self._pending:
            self._speak()
        self.value = value
        self.outcome = "fallback"
        self.error = None
        note_degraded(guard.name)  # the current request's X-Degraded
        if _events.listeners:
            _events.emit(_events.Event(_events.FALLBACK, guard.name, reason=type(error).__name__))
        return True

    def _cache_key(self) -> Hashable | None:
        fallback = self.guard.fallback
        if self._key is None and fallback is not None:
            self._key = fallback.key(self.args, self.kwargs)
        return self._key

    def _end_retry(self) -> None:
        if self._retry_slot:
            self._retry_slot = False
            self.guard.budget.retry_ended()
