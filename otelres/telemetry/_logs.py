"""Log events for what an operator needs to read: retries, suppressed retries,
exhausted calls, transitions and (rate-limited) rejections.

Every event carries the breaker, the figures that explain it and the current
trace and span ids. Where it goes follows the application's set-up, decided
at each event (an application may configure logging after ``instrument()``):
through structlog (``structlog.get_logger("otelres")``) when the application
configured structlog, else to the standard library logger ``otelres`` as a
structured record, so that the application's ``logging`` configuration
decides level, format and destination. otelres never configures either
itself (see :func:`otelres.logging.configure`), and never prints on its own.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import structlog
from opentelemetry import trace

from otelres import _events, _fork
from otelres._breaker import State
from otelres._events import Event, Listener

from . import names

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["LogEvents", "emit", "trace_ids"]

_OPENING = (State.OPEN, State.FORCED_OPEN)

#: structlog's method for each level otelres logs at (every structlog wrapper has these).
_METHODS = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warning", logging.ERROR: "error"}


def emit(level: int, event: str, /, *, logger: str = "otelres", **fields: object) -> None:
    """Write one otelres event, the one way every otelres event is written.

    When the application configured structlog, through structlog's logger
    ``logger`` (``event`` and the fields as its key-value pairs); else as a
    record on the standard library logger ``logger``: the message is the event
    and the fields as ``key=value`` (``otelres.retry breaker=... attempt=2``),
    and the record carries ``event`` and every field as attributes (``extra=``),
    for formatters that write structured logs.
    """
    if structlog.is_configured():
        # A fresh proxy each time: it follows the configuration in force now.
        log: Any = structlog.get_logger(logger)
        getattr(log, _METHODS.get(level, "info"))(event, **fields)
        return
    stdlib = logging.getLogger(logger)
    if stdlib.isEnabledFor(level):
        text = " ".join([event, *(f"{key}={_logfmt(value)}" for key, value in fields.items())])
        stdlib.log(level, text, extra={"event": event, **fields})


def _logfmt(value: object) -> str:
    """A value as logfmt writes it: bare when it can be, else quoted."""
    text = str(value)
    if not text or any(char.isspace() or char in '"=\\' for char in text):
        return json.dumps(text)
    return text


def trace_ids() -> dict[str, str]:
    """``trace_id`` and ``span_id`` of the current span, as hex, when there is one."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {"trace_id": format(context.trace_id, "032x"), "span_id": format(context.span_id, "016x")}


class LogEvents(Listener):
    """Writes the core's events as log events (see :func:`emit`).

    Rejections come in floods during an outage: at most one
    ``otelres.call.rejected`` line per breaker per ``rejected_interval``
    seconds, carrying how many rejections it stands for.
    """

    def __init__(self, rejected_interval: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = rejected_interval
        self._clock = clock
        self._lock = threading.Lock()
        _fork.renew(self, "_lock")
        # breaker -> [time of the last line, rejections since]
        self._rejections: dict[str, list[float]] = {}

    def on_event(self, event: Event) -> None:
        """Write the event, if it is one an operator reads."""
        kind = event.kind
        if kind == _events.RETRY:
            emit(
                logging.INFO,
                names.LOG_RETRY,
                breaker=event.breaker,
                attempt=event.attempt,
                delay=round(event.delay, 6),
                reason=event.reason,
                **trace_ids(),
            )
        elif kind == _events.RETRY_SUPPRESSED:
            emit(
                logging.INFO,
                names.LOG_RETRY_SUPPRESSED,
                breaker=event.breaker,
                attempt=event.attempt,
                reason=event.reason,
                **trace_ids(),
            )
        elif kind == _events.EXHAUSTED:
            # The one WARN of a failing call (the semantic conventions' advice), not one per attempt.
            emit(
                logging.WARNING,
                names.LOG_RETRY_EXHAUSTED,
                breaker=event.breaker,
                attempts=event.attempt,
                reason=event.reason,
                **trace_ids(),
            )
        elif kind == _events.TRANSITION and event.transition is not None:
            transition = event.transition
            emit(
                logging.WARNING if transition.to_state in _OPENING else logging.INFO,
                names.LOG_CIRCUIT_TRANSITION,
                breaker=transition.breaker,
                from_state=transition.from_state.value,
                to_state=transition.to_state.value,
                failure_rate=round(transition.failure_rate, 4),
                **trace_ids(),
            )
        elif kind == _events.REJECTED:
            self._rejected(event.breaker, event.retry_after, event.reason or "circuit_open")

    def _rejected(self, breaker: str, retry_after: float, reason: str) -> None:
        now = self._clock()
        with self._lock:
            entry = self._rejections.get(breaker)
            if entry is not None and now - entry[0] < self._interval:
                entry[1] += 1
                return
            suppressed = int(entry[1]) if entry is not None else 0
            self._rejections[breaker] = [now, 0]
        emit(
            logging.WARNING,
            names.LOG_CALL_REJECTED,
            breaker=breaker,
            retry_after=round(retry_after, 3),
            reason=reason,
            suppressed=suppressed,
            **trace_ids(),
        )
