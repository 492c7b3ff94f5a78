"""structlog events for what an operator needs to read: retries, suppressed
retries, exhausted calls, transitions and (rate-limited) rejections.

Every event carries the breaker, the figures that explain it and the current
trace and span ids. otelres logs through ``structlog.get_logger("otelres")``
and so follows whatever configuration the application gave structlog; it never
configures structlog itself (see :func:`otelres.logging.configure`).
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

import structlog
from opentelemetry import trace

from otelres import _events
from otelres._breaker import State
from otelres._events import Event, Listener

from . import names

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["LogEvents", "trace_ids"]

_OPENING = (State.OPEN, State.FORCED_OPEN)


def trace_ids() -> dict[str, str]:
    """``trace_id`` and ``span_id`` of the current span, as hex, when there is one."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {"trace_id": format(context.trace_id, "032x"), "span_id": format(context.span_id, "016x")}


class LogEvents(Listener):
    """Writes the core's events as structlog events.

    Rejections come in floods during an outage: at most one
    ``otelres.call.rejected`` line per breaker per ``rejected_interval``
    seconds, carrying how many rejections it stands for.
    """

    def __init__(self, rejected_interval: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._log: Any = structlog.get_logger("otelres")
        self._interval = rejected_interval
        self._clock = clock
        self._lock = threading.Lock()
        # breaker -> [time of the last line, rejections since]
        self._rejections: dict[str, list[float]] = {}

    def on_event(self, event: Event) -> None:
        """Write the event, if it is one an operator reads."""
        kind = event.kind
        log = self._log
        if kind == _events.RETRY:
            log.info(
                names.LOG_RETRY,
                breaker=event.breaker,
                attempt=event.attempt,
                delay=round(event.delay, 6),
                reason=event.reason,
                **trace_ids(),
            )
        elif kind == _events.RETRY_SUPPRESSED:
            log.info(
                names.LOG_RETRY_SUPPRESSED,
                breaker=event.breaker,
                attempt=event.attempt,
                reason=event.reason,
                **trace_ids(),
            )
        elif kind == _events.EXHAUSTED:
            # The one WARN of a failing call (the semantic conventions' advice), not one per attempt.
            log.warning(
                names.LOG_RETRY_EXHAUSTED,
                breaker=event.breaker,
                attempts=event.attempt,
                reason=event.reason,
                **trace_ids(),
            )
        elif kind == _events.TRANSITION and event.transition is not None:
            transition = event.transition
            method = log.warning if transition.to_state in _OPENING else log.info
            method(
                names.LOG_CIRCUIT_TRANSITION,
                breaker=transition.breaker,
                from_state=transition.from_state.value,
                to_state=transition.to_state.value,
                failure_rate=round(transition.failure_rate, 4),
                **trace_ids(),
            )
        elif kind == _events.REJECTED:
            self._rejected(event.breaker, event.retry_after)

    def _rejected(self, breaker: str, retry_after: float) -> None:
        now = self._clock()
        with self._lock:
            entry = self._rejections.get(breaker)
            if entry is not None and now - entry[0] < self._interval:
                entry[1] += 1
                return
            suppressed = int(entry[1]) if entry is not None else 0
            self._rejections[breaker] = [now, 0]
        self._log.warning(
            names.LOG_CALL_REJECTED,
            breaker=breaker,
            retry_after=round(retry_after, 3),
            suppressed=suppressed,
            **trace_ids(),
        )
