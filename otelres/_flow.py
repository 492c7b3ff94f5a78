"""One logical call through deadline → retry (with budget) → breaker → attempt.

:class:`Flow` holds every decision of a call and does no I/O: it never calls
the protected function and never sleeps. The sync and async drivers in
:mod:`otelres._resilience` run it, and they are the only two places that call
the function and wait, so the two paths cannot drift apart.

The protocol a driver follows::

    flow = Flow(resilience, args, kwargs)
    try:
        while flow.admit():                 # False: ended without an attempt
            try: result = fn(...)
            except BaseException as exc: step = flow.failed(exc)   # RERAISE, DONE or a delay
            else: step = flow.returned(result)                     # DONE or a delay
            if step is DONE: return flow.value
            if step is RERAISE: raise
            sleep(step)
        if flow.outcome == "rejected": raise flow.rejection
        return flow.value                   # the fallback
    finally:
        flow.close()
"""

from __future__ import annotations

import contextvars
import sys
from typing import TYPE_CHECKING, Any, Final

from . import _hooks
from ._backoff import backoff_delay
from ._breaker import REJECTED
from ._deadline import _DEADLINE
from ._degrade import note_degraded
from ._errors import CircuitOpenError, RetryError
from ._fallback import MISSING
from ._hooks import State

if TYPE_CHECKING:
    from collections.abc import Hashable

    from ._resilience import Resilience

__all__ = ["DONE", "RERAISE", "Flow", "current_attempt", "testing_state"]


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


class Flow:
    """The state of one logical call; see the module docstring for the protocol."""

    __slots__ = (
        "_attempt_started",
        "_attempt_token",
        "_key",
        "_previous_delay",
        "_retry_slot",
        "_scopes",
        "_token",
        "args",
        "attempts",
        "error",
        "kwargs",
        "no_retry",
        "outcome",
        "rejection",
        "res",
        "started",
        "value",
    )

    def __init__(
        self,
        res: Resilience,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        no_retry: str | None = None,
    ) -> None:
        # Only what the success path needs is set here; the rest is set when a
        # retry is first considered (this constructor is on every call's path).
        self.res = res
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
        self._scopes = _hooks.emit_call_start(res.breaker.name) if _hooks.call_listeners else None
        res.in_flight.append(None)  # the budget's calls in flight (atomic)

    # -- the steps -------------------------------------------------------------

    def admit(self) -> bool:
        """Get a permit for the next attempt.

        True: run the attempt. False: the call ended without one; the driver
        raises ``rejection`` (a fresh :class:`~otelres.CircuitOpenError`) when
        ``outcome`` is ``"rejected"``, else returns ``value`` (the fallback).
        The driver raises, not this method, so that the traceback of a
        rejection stays one frame short: an outage makes many of them.
        """
        res = self.res
        token = res.acquire()
        if token == REJECTED:
            breaker = res.breaker
            if self._retry_slot:
                self._end_retry()
            error = breaker.rejection()
            if _hooks.listeners:
                _hooks.emit_rejected(breaker.name, error.retry_after)
            self.outcome = "rejected"  # stays so if the fallback raises
            self.error = error
            if res.fallback is None or not self._fall_back(error):
                self.rejection = error
            return False
        self._token = token
        now = self._attempt_started = res.now()
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

    def resume(self, token: int, started: float, exc: BaseException) -> object:
        """Take over a call whose first attempt a driver ran on its own (admitted
        with ``token`` at ``started``) and that raised ``exc``: as :meth:`failed`.
        """
        self._token = token
        self._attempt_started = self.started = started
        self._previous_delay = 0.0
        self.attempts = 1
        return self.failed(exc)

    def failed(self, exc: BaseException) -> object:
        """The attempt raised ``exc``: DONE, RERAISE, or the delay before the next attempt."""
        res = self.res
        try:
            failed = res.breaker.settle(self._token, self._attempt_started, exc)
        finally:
            self._end_retry()
        if res.retry.should_retry(exc):
            delay = self._retry_delay(exc, None)
            if delay is not None:
                return delay
        return self._give_up(exc, failed)

    def returned(self, result: Any) -> object:
        """The attempt returned ``result``: DONE, or the delay before the next attempt."""
        res = self.res
        breaker = res.breaker
        if res.plain_results:
            # Neither breaker, retry nor fallback looks at results: the common case.
            res.record(self._token, False, self._attempt_started)  # noqa: FBT003 - hot path
            if self._retry_slot:
                self._end_retry()
            self.outcome = "success"
            self.value = result
            return DONE
        try:
            failed = bool(breaker.settle(self._token, self._attempt_started, None, result))
        finally:
            self._end_retry()
        retry_on_result = res.retry.retry_on_result
        if retry_on_result is None or not retry_on_result(result):
            self.outcome = "failure" if failed else "success"
            if not failed and res.fallback is not None and res.fallback.caches:
                res.fallback.remember(self._cache_key(), result, res.clock.monotonic())
            self.value = result
            return DONE
        delay = self._retry_delay(None, result)
        if delay is not None:
            if res.discard is not None:
                res.discard(result)
            return delay
        return self._give_up_result(result)

    def close(self) -> None:
        """Always called once the call ends, however it ends."""
        res = self.res
        if self._retry_slot:
            self._end_retry()
        if self._attempt_token is not None:
            _ATTEMPT.reset(self._attempt_token)
        res.in_flight.pop()
        if self._scopes is not None:
            started = self.started
            duration = res.clock.monotonic() - started if started >= 0 else 0.0
            _hooks.emit_call(
                res.breaker.name, self.outcome, duration, self.attempts, self._scopes, self.error
            )

    # -- decisions ----------------------------------------------------------------

    def _retry_delay(self, exc: BaseException | None, result: Any) -> float | None:
        """The delay before the next attempt, or None when no retry is made."""
        res = self.res
        policy = res.retry
        name = res.breaker.name
        attempts = policy.attempts
        cap = testing_state.attempts
        if cap is not None and cap < attempts:
            attempts = cap
        if self.attempts >= attempts:
            if attempts > 1 and _hooks.listeners:
                _hooks.emit_exhausted(name, self.attempts, policy.reason(exc, result))
            return None
        if self.no_retry is not None:
            return self._suppress(self.no_retry)
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
                res.random,
                self._previous_delay,
            )
        deadline = self._deadline()
        if deadline is not None and res.clock.monotonic() + delay >= deadline:
            return self._suppress("deadline")
        breaker = res.breaker
        if breaker.state in _OPEN_STATES and breaker.retry_after() > delay:
            # The next attempt would only be rejected: end now with the real error.
            return self._suppress("circuit_open")
        if not res.budget.try_retry():
            return self._suppress("budget")
        self._retry_slot = True
        self._previous_delay = delay
        # Until an attempt succeeds, the call has failed: a cancellation during
        # the backoff must not end it as a success.
        self.outcome = "failure"
        if _hooks.listeners:
            _hooks.emit_retry(name, self.attempts, delay, policy.reason(exc, result))
        return delay

    def _deadline(self) -> float | None:
        """The earlier of the policy's deadline for this call and the context's."""
        limit = self.res.retry.deadline
        deadline = None if limit is None else self.started + limit
        outer = _DEADLINE.get()
        if outer is not None and (deadline is None or outer < deadline):
            deadline = outer
        return deadline

    def _suppress(self, reason: str) -> float | None:
        """Report a retry that was due and not made; the delay is None."""
        if _hooks.listeners:
            _hooks.emit_retry_suppressed(self.res.breaker.name, self.attempts, reason)
        return None

    def _give_up(self, exc: BaseException, failed: bool | None) -> object:
        """No more attempts after ``exc``: fall back, wrap or re-raise.

        ``failed`` is the breaker's reading of ``exc``.
        """
        self.error = exc
        if not isinstance(exc, Exception):
            self.outcome = "failure"
            return RERAISE
        if not failed and not (isinstance(exc, CircuitOpenError) and self.res.fallback is not None):
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
            if self.res.retry.wrap_exhausted:
                self.error = RetryError(self.res.breaker.name, self.attempts, exc)
                raise self.error from exc
            if sys.version_info >= (3, 11):
                exc.add_note(f"otelres: {self.res.breaker.name}: gave up after {self.attempts} attempts")
        return RERAISE

    def _give_up_result(self, result: Any) -> object:
        """No more attempts after a result worth retrying: fall back, wrap or return it."""
        self.outcome = "failure"
        res = self.res
        error = RetryError(res.breaker.name, self.attempts, None, result)
        if self._fall_back(error):
            if res.discard is not None:
                res.discard(result)  # replaced by the fallback: release it (an HTTP response)
            return DONE
        if res.retry.wrap_exhausted and self.attempts > 1:
            self.error = error
            raise error
        self.value = result
        return DONE

    def _fall_back(self, error: BaseException) -> bool:
        fallback = self.res.fallback
        if fallback is None:
            return False
        value = fallback.resolve(self._cache_key(), error, self.res.clock.monotonic())
        if value is MISSING:
            return False
        self.value = value
        self.outcome = "fallback"
        self.error = None
        note_degraded(self.res.breaker.name)  # the current request's X-Degraded
        if _hooks.listeners:
            _hooks.emit_fallback(self.res.breaker.name, type(error).__name__)
        return True

    def _cache_key(self) -> Hashable | None:
        if self._key is None and self.res.fallback is not None:
            self._key = self.res.fallback.key(self.args, self.kwargs)
        return self._key

    def _end_retry(self) -> None:
        if self._retry_slot:
            self._retry_slot = False
            self.res.budget.retry_ended()
