"""Load shedding at the door: the part of the middlewares' concurrency limit that does no I/O.

Each middleware asks its :class:`Shedding` to :meth:`~Shedding.admit` a request (probes never
get here: they are answered before), and either runs the app under the permit it got, releasing
it when the response is over, or sends the 503 it got instead. Critical requests (the
``critical`` predicate, asked only when the limit is taken) may use the headroom above the
limit, so they are shed last.

What leaves the process follows the middleware's rule: the 503 body is
``{"error": "overloaded"}`` with ``Retry-After: 1``; with ``show_details=True`` it also says why
and the figures. Sheds and large moves of an adaptive limit are logged, at a bounded rate.
"""

from __future__ import annotations

import inspect
import json
import logging
import threading
from typing import TYPE_CHECKING, Generic, TypeVar

from otelres import _fork
from otelres._errors import ConfigError
from otelres._limit import LimitChange, Limiter, Permit, watch

if TYPE_CHECKING:
    from collections.abc import Callable

    from otelres.server._core import Response

__all__ = ["Shedding", "limiter_for"]

_log = logging.getLogger("otelres.server")

_JSON = ("Content-Type", "application/json")
#: The shed 503 body when details are not shown.
_OVERLOADED = json.dumps({"error": "overloaded"}).encode()
#: Seconds a shed client is asked to wait: the moment of overload passes quickly, and whole
#: seconds are what ``Retry-After`` takes.
RETRY_AFTER = 1
#: How far an adaptive limit must move from the last value logged to be logged again (a share).
LARGE_MOVE = 0.25

_Request = TypeVar("_Request")


def limiter_for(limit: object) -> Limiter:
    """The limiter a middleware's ``limit`` stands for: an int is a :class:`~otelres.FixedLimit`."""
    from otelres._limit import FixedLimit  # noqa: PLC0415 - beside the check it serves

    if isinstance(limit, Limiter):
        return limit
    if isinstance(limit, int) and not isinstance(limit, bool) and limit >= 1:
        return FixedLimit(limit)
    allowed = "a whole number of requests >= 1, an otelres.FixedLimit or otelres.AdaptiveLimit, or None"
    raise ConfigError("limit", limit, allowed)


class Shedding(Generic[_Request]):
    """One middleware's admission decisions: its limiter, which requests are critical, the 503
    for a shed request and the rate-bounded log lines.

    ``log_interval``: at most one ``otelres.request.shed`` line per reason and one
    ``otelres.limit.changed`` line per interval (seconds, on the limiter's clock); each shed
    line says how many sheds it stands for.
    """

    def __init__(
        self,
        limit: object,
        critical: Callable[[_Request], bool] | None = None,
        *,
        show_details: bool = False,
        log_interval: float = 10.0,
    ) -> None:
        if critical is not None and (not callable(critical) or inspect.iscoroutinefunction(critical)):
            # A coroutine function's result is a coroutine, never awaited here, and always true.
            raise ConfigError(
                "critical", critical, "a plain (not async) callable of the request (environ, scope) or None"
            )
        #: The limit and the requests in flight (``limiter.limit``, ``limiter.in_flight``, ``limiter.shed``).
        self.limiter = limiter_for(limit)
        self._critical = critical
        self._show_details = show_details
        self._interval = log_interval
        self._clock = self.limiter.clock
        self._lock = threading.Lock()
        _fork.renew(self, "_lock")
        # reason -> [time of the last line, sheds since]
        self._shed_lines: dict[str, list[float]] = {}
        self._logged_limit = self.limiter.limit
        self._last_limit_line: float | None = None
        self._critical_failed = False
        watch(self.limiter, self._limit_changed)

    def admit(self, request: _Request) -> Permit | Response:
        """A permit to run the request, or the 503 to answer it with (the shed is counted and logged)."""
        limiter = self.limiter
        permit = limiter.try_acquire()
        if permit is not None:
            return permit
        critical = self._is_critical(request)
        if critical:
            permit = limiter.try_acquire(critical=True)
            if permit is not None:
                return permit
        reason = "critical" if critical else "limit"
        limiter.record_shed(reason)
        self._log_shed(reason)
        return self._response(reason)

    def _is_critical(self, request: _Request) -> bool:
        predicate = self._critical
        if predicate is None:
            return False
        try:
            return bool(predicate(request))
        except Exception:  # noqa: BLE001 - a bug in the predicate must not turn a shed into a 500
            if not self._critical_failed:
                self._critical_failed = True
                _log.warning(
                    "the critical predicate raised: such requests count as not critical", exc_info=True
                )
            return False

    def _response(self, reason: str) -> Response:
        if self._show_details:
            limiter = self.limiter
            body = json.dumps(
                {
                    "error": "overloaded",
                    "reason": reason,
                    "limit": limiter.limit,
                    "in_flight": limiter.in_flight,
                    "retry_after": RETRY_AFTER,
                }
            ).encode()
        else:
            body = _OVERLOADED
        headers = [_JSON, ("Retry-After", str(RETRY_AFTER)), ("Content-Length", str(len(body)))]
        return 503, headers, body

    def _log_shed(self, reason: str) -> None:
        now = self._clock.monotonic()
        with self._lock:
            entry = self._shed_lines.get(reason)
            if entry is not None and now - entry[0] < self._interval:
                entry[1] += 1
                return
            suppressed = int(entry[1]) if entry is not None else 0
            self._shed_lines[reason] = [now, 0]
        from otelres.telemetry import names  # noqa: PLC0415 - structlog only when logging
        from otelres.telemetry._logs import emit, trace_ids  # noqa: PLC0415

        emit(
            logging.WARNING,
            names.LOG_REQUEST_SHED,
            logger=_log.name,
            status=503,
            reason=reason,
            limit=self.limiter.limit,
            in_flight=self.limiter.in_flight,
            suppressed=suppressed,
            **trace_ids(),
        )

    def _limit_changed(self, change: LimitChange) -> None:
        """Log a move of the limit by :data:`LARGE_MOVE` or more since the last line, at most once
        an interval (a move within it is logged with the next window past it, if it holds).
        """
        now = self._clock.monotonic()
        with self._lock:
            before = self._logged_limit
            if abs(change.to_limit - before) < LARGE_MOVE * before:
                return
            if self._last_limit_line is not None and now - self._last_limit_line < self._interval:
                return
            self._logged_limit = change.to_limit
            self._last_limit_line = now
        from otelres.telemetry import names  # noqa: PLC0415
        from otelres.telemetry._logs import emit  # noqa: PLC0415

        emit(
            logging.WARNING if change.to_limit < before else logging.INFO,
            names.LOG_LIMIT_CHANGED,
            logger=_log.name,
            from_limit=before,
            to_limit=change.to_limit,
            rtt=round(change.rtt, 6),
            long_rtt=round(change.long_rtt, 6),
            in_flight=change.in_flight,
        )
