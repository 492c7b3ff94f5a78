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
    """

    def on_transition(self, transition: Transition) -> None:
        """A breaker changed state."""

    def on_rejected(self, breaker: str, retry_after: float) -> None:
        """A call was rejected by an open breaker, without an attempt."""

    def on_retry(self, breaker: str, attempt: int, delay: float, reason: str) -> None:
        """Attempt number ``attempt`` failed for ``reason``; the next follows in ``delay`` s."""

    def on_retry_suppressed(self, breaker: str, attempt: int, reason: str) -> None:
        """A retry was due after ``attempt`` but ``reason`` forbade it (budget, deadline, …)."""

    def on_call(self, breaker: str, outcome: str, duration: float, attempts: int) -> None:
        """A logical call ended: ``outcome`` is success, failure, rejected or fallback."""


listeners: list[Listener] = []
_lock = threading.Lock()


def add_listener(listener: Listener) -> None:
    """Register ``listener`` (once; adding it again does nothing)."""
    global listeners  # noqa: PLW0603 - swapped whole so readers never see a list mid-change
    with _lock:
        if listener not in listeners:
            listeners = [*listeners, listener]


def remove_listener(listener: Listener) -> None:
    """Unregister ``listener``; a listener not registered is ignored."""
    global listeners  # noqa: PLW0603
    with _lock:
        listeners = [x for x in listeners if x is not listener]


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


def emit_call(breaker: str, outcome: str, duration: float, attempts: int) -> None:
    """Tell every listener that a logical call ended."""
    for listener in listeners:
        try:
            listener.on_call(breaker, outcome, duration, attempts)
        except Exception as exc:  # noqa: BLE001
            _failed("on_call", exc)
