"""Where the core reports what happened, without knowing who listens.

The core (breaker, retry flow) calls the functions here; telemetry, the testing
helpers and users register a :class:`Listener`. With no listener registered a
report costs one truth test of a list, which keeps the core free of any
dependency on OpenTelemetry or structlog.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import threading

__all__ = [
    "Listener",
    "State",
    "Transition",
    "add_listener",
    "listeners",
    "remove_listener",
]

_log = logging.getLogger("otelres")


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


class Listener:
    """Receives the core's reports. Subclass it and override what you need.

    Every method is called on the thread (or task) that caused the event, after
    the breaker's lock is released; it must be quick and must not raise (an
    exception is logged and dropped, never passed to the caller's call).

    A listener with ``per_call = True`` also hears about every logical call
    (:meth:`on_call_start`, :meth:`on_call`, :meth:`on_call_end`); while one is
    registered, every call takes the full decision flow. Without one, a plain
    success takes the drivers' fast path and reports nothing, which is what
    keeps otelres's cost near zero when nobody measures it.
    """

    #: Whether this listener needs to hear about every call, not only events.
    per_call = False

    def on_call_start(self, breaker: str) -> object:  # noqa: ARG002 - the interface
        """A logical call begins (per-call listeners only); the return value comes
        back as ``scope`` in :meth:`on_call_end` (a span, say).
        """
        return None

    def on_call_end(
        self,
        breaker: str,
        scope: object,
        outcome: str,
        attempts: int,
        duration: float,
        error: BaseException | None,
    ) -> None:
        """A logical call ended (per-call listeners only), after :meth:`on_call`;
        ``error`` is the exception it ended with, if any.
        """

    def on_transition(self, transition: Transition) -> None:
        """A breaker changed state."""

    def on_rejected(self, breaker: str, retry_after: float) -> None:
        """A call was rejected by an open breaker, without an attempt."""

    def on_retry(self, breaker: str, attempt: int, delay: float, reason: str) -> None:
        """Attempt number ``attempt`` failed for ``reason``; the next follows in ``delay`` s."""

    def on_retry_suppressed(self, breaker: str, attempt: int, reason: str) -> None:
        """A retry was due after ``attempt`` but ``reason`` forbade it (budget, deadline, …)."""

    def on_exhausted(self, breaker: str, attempts: int, reason: str) -> None:
        """A call used all its ``attempts`` (more than one) and the last failed for ``reason``."""

    def on_fallback(self, breaker: str, reason: str) -> None:
        """A call returned its fallback instead of the error ``reason`` (an exception's type name)."""

    def on_degraded(self, part: str, reason: str) -> None:
        """A handler part (:func:`otelres.degrade`) answered with its fallback: a logical
        call of its own, which no flow reports (a flow's fallback comes through :meth:`on_call`).
        """

    def on_call(self, breaker: str, outcome: str, duration: float, attempts: int) -> None:
        """A logical call ended (per-call listeners only): ``outcome`` is success,
        failure, rejected or fallback.
        """


#: Every registered listener; replaced whole, never changed in place.
listeners: list[Listener] = []
#: The registered listeners with ``per_call = True``.
call_listeners: list[Listener] = []
_lock = threading.Lock()


def add_listener(listener: Listener) -> None:
    """Register ``listener`` (once; adding it again does nothing)."""
    global listeners, call_listeners  # noqa: PLW0603 - swapped whole so readers never see a list mid-change
    with _lock:
        if listener not in listeners:
            listeners = [*listeners, listener]
            call_listeners = [x for x in listeners if x.per_call]


def remove_listener(listener: Listener) -> None:
    """Unregister ``listener``; a listener not registered is ignored."""
    global listeners, call_listeners  # noqa: PLW0603
    with _lock:
        listeners = [x for x in listeners if x is not listener]
        call_listeners = [x for x in listeners if x.per_call]


def _failed(method: str, exc: Exception) -> None:
    _log.warning("otelres listener %s raised %r; dropped", method, exc)


def emit_transition(transition: Transition) -> None:
    """Tell every listener about a state change."""
    for listener in listeners:
        try:
            listener.on_transition(transition)
        except Exception as exc:  # noqa: BLE001 - a listener must never break a call
            _failed("on_transition", exc)


def emit_rejected(breaker: str, retry_after: float) -> None:
    """Tell every listener about a rejected call."""
    for listener in listeners:
        try:
            listener.on_rejected(breaker, retry_after)
        except Exception as exc:  # noqa: BLE001
            _failed("on_rejected", exc)


def emit_retry(breaker: str, attempt: int, delay: float, reason: str) -> None:
    """Tell every listener that a retry is scheduled."""
    for listener in listeners:
        try:
            listener.on_retry(breaker, attempt, delay, reason)
        except Exception as exc:  # noqa: BLE001
            _failed("on_retry", exc)


def emit_retry_suppressed(breaker: str, attempt: int, reason: str) -> None:
    """Tell every listener that a due retry was not made."""
    for listener in listeners:
        try:
            listener.on_retry_suppressed(breaker, attempt, reason)
        except Exception as exc:  # noqa: BLE001
            _failed("on_retry_suppressed", exc)


#: What :func:`emit_call_start` hands back: each per-call listener with its scope.
Scopes = list[tuple[Listener, object]]


def emit_call_start(breaker: str) -> Scopes:
    """Tell every per-call listener that a call begins."""
    scopes: Scopes = []
    for listener in call_listeners:
        try:
            scopes.append((listener, listener.on_call_start(breaker)))
        except Exception as exc:  # noqa: BLE001
            _failed("on_call_start", exc)
    return scopes


def emit_call(
    breaker: str,
    outcome: str,
    duration: float,
    attempts: int,
    scopes: Scopes,
    error: BaseException | None,
) -> None:
    """Tell the per-call listeners that heard the start that the call ended:
    ``on_call``, then ``on_call_end`` with the listener's scope, in reverse order
    of the starts (scopes nest like context managers).
    """
    for listener, scope in reversed(scopes):
        try:
            listener.on_call(breaker, outcome, duration, attempts)
            listener.on_call_end(breaker, scope, outcome, attempts, duration, error)
        except Exception as exc:  # noqa: BLE001
            _failed("on_call", exc)


def emit_exhausted(breaker: str, attempts: int, reason: str) -> None:
    """Tell every listener that a call ran out of attempts."""
    for listener in listeners:
        try:
            listener.on_exhausted(breaker, attempts, reason)
        except Exception as exc:  # noqa: BLE001
            _failed("on_exhausted", exc)


def emit_fallback(breaker: str, reason: str) -> None:
    """Tell every listener that a call returned its fallback."""
    for listener in listeners:
        try:
            listener.on_fallback(breaker, reason)
        except Exception as exc:  # noqa: BLE001
            _failed("on_fallback", exc)


def emit_degraded(part: str, reason: str) -> None:
    """Tell every listener that a degradable handler part fell back."""
    for listener in listeners:
        try:
            listener.on_degraded(part, reason)
        except Exception as exc:  # noqa: BLE001
            _failed("on_degraded", exc)
