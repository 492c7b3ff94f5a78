"""The request logic the WSGI and ASGI middlewares share, without any I/O.

Each middleware is a thin driver: it asks its :class:`RequestRules` what to do
with a request (answer a probe, or run the app under a deadline), and turns a
:class:`~otelres.CircuitOpenError` into the 503 response :func:`circuit_open_response`
builds (the framework glue in :mod:`otelres.server._frameworks` builds the same
one). Nothing here reads a socket, awaits or sleeps.
"""

from __future__ import annotations

import http
import json
import logging
import math
import threading
import warnings
from typing import TYPE_CHECKING, Generic, Literal, Protocol, TypeVar

from otelres._errors import ConfigError

if TYPE_CHECKING:
    from otelres._errors import CircuitOpenError

__all__ = [
    "Middleware",
    "ReadinessLike",
    "ReportLike",
    "RequestRules",
    "Response",
    "circuit_open_response",
    "degraded_header",
    "log_rejected",
    "parse_deadline",
    "status_line",
]

_log = logging.getLogger("otelres.server")

#: A response the middleware answers on its own: status, headers, body.
Response = tuple[int, list[tuple[str, str]], bytes]

_JSON = ("Content-Type", "application/json")


class ReportLike(Protocol):
    """What the middleware needs of :class:`otelres.health.Report`."""

    @property
    def http_status(self) -> int:
        """503 when the report fails, else 200."""
        ...

    def to_json(self) -> bytes:
        """The JSON body."""
        ...

    def to_text(self, verbose: bool) -> str:
        """The Kubernetes-style text form."""
        ...


class ReadinessLike(Protocol):
    """What the middleware needs of :class:`otelres.health.Readiness`."""

    async def evaluate(self) -> ReportLike:
        """Run the checks (async servers)."""
        ...

    def evaluate_sync(self) -> ReportLike:
        """Run the checks (sync servers)."""
        ...


def degraded_header(names: set[str] | None) -> tuple[str, str] | None:
    """The ``X-Degraded`` header naming the parts (breakers) that fell back, or None."""
    if not names:
        return None
    return ("X-Degraded", ",".join(sorted(names)))


def parse_deadline(value: str | None) -> float | None:
    """The seconds a deadline header asks for: a finite number > 0, else None."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    if not math.isfinite(seconds) or seconds <= 0:
        return None
    return seconds


def status_line(status: int) -> str:
    """``503`` -> ``"503 Service Unavailable"`` (WSGI's form)."""
    try:
        return f"{status} {http.HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


def log_rejected(error: CircuitOpenError) -> None:
    """One warning line for a request answered 503 (no traceback): the middlewares'
    and the frameworks' line alike. It goes where otelres's other events go
    (structlog when the application configured it, else the standard library
    logger ``otelres.server``), with the current trace and span ids.
    """
    from otelres.telemetry import names  # noqa: PLC0415 - structlog only when logging
    from otelres.telemetry._logs import emit, trace_ids  # noqa: PLC0415

    emit(
        logging.WARNING,
        names.LOG_REQUEST_REJECTED,
        logger=_log.name,
        status=503,
        breaker=error.breaker,
        retry_after=round(error.retry_after, 1),
        **trace_ids(),
    )


def circuit_open_response(error: CircuitOpenError) -> Response:
    """The 503 answer to a request that failed fast on an open circuit.

    ``Retry-After`` is the whole seconds until the breaker probes again, at least
    1; the JSON body names the dependency and repeats that figure.
    """
    retry_after = max(1, math.ceil(error.retry_after))
    body = json.dumps(
        {"error": "dependency unavailable", "dependency": error.breaker, "retry_after": retry_after}
    ).encode()
    headers = [_JSON, ("Retry-After", str(retry_after)), ("Content-Length", str(len(body)))]
    return 503, headers, body


def _probe_response(body: bytes, status: int, content_type: str) -> Response:
    headers = [
        ("Content-Type", content_type),
        ("Content-Length", str(len(body))),
        ("Cache-Control", "no-store"),
    ]
    return status, headers, body


def _check_seconds(key: str, value: float | None, *, optional: bool) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(key, value, "a number of seconds > 0" + (" or None" if optional else ""))


class RequestRules:
    """The decisions of one middleware instance about a request: is it a probe,
    and which one; how long may it run (its deadline); what the probes answer.
    """

    def __init__(
        self,
        *,
        readiness: ReadinessLike | None,
        live_path: str,
        ready_path: str,
        deadline: float | None,
        deadline_header: str | None,
        max_deadline: float,
    ) -> None:
        _check_seconds("deadline", deadline, optional=True)
        _check_seconds("max_deadline", max_deadline, optional=False)
        for key, path in (("live_path", live_path), ("ready_path", ready_path)):
            if not isinstance(path, str) or not path.startswith("/"):
                raise ConfigError(key, path, "a path starting with '/'")
        self._readiness = readiness
        self.live_path = live_path
        self.ready_path = ready_path
        self.deadline = deadline
        self.max_deadline = float(max_deadline)
        self.header = deadline_header
        #: The header's key in a WSGI environ (``HTTP_X_REQUEST_TIMEOUT``) and in an ASGI scope.
        self.environ_key = (
            None if deadline_header is None else "HTTP_" + deadline_header.upper().replace("-", "_")
        )
        self.asgi_key = None if deadline_header is None else deadline_header.lower().encode("latin-1")
        self._lock = threading.Lock()
        #: How many requests carried a malformed or non-positive deadline header (ignored).
        self.malformed_headers = 0

    @property
    def readiness(self) -> ReadinessLike:
        """The readiness given, else a default one (breaker states only), built on first use."""
        if self._readiness is None:
            from otelres.server.health import Readiness  # noqa: PLC0415 - lazily: only probes need it

            self._readiness = Readiness()
        return self._readiness

    def probe(self, method: str, path: str) -> Literal["live", "ready"] | None:
        """Which probe a request is, if any (GET only)."""
        if method != "GET":
            return None
        if path == self.live_path:
            return "live"
        if path == self.ready_path:
            return "ready"
        return None

    def live_response(self) -> Response:
        """The liveness answer: the process answers; no check runs."""
        from otelres.server.health import liveness_report  # noqa: PLC0415 - lazily, as above

        report = liveness_report()
        return _probe_response(report.to_json(), report.http_status, "application/json")

    def ready_response(self, report: ReportLike, query: str) -> Response:
        """The readiness answer: JSON, or text with ``?verbose``."""
        if _verbose(query):
            return _probe_response(
                report.to_text(True).encode(),  # noqa: FBT003 - health.Report's signature
                report.http_status,
                "text/plain; charset=utf-8",
            )
        return _probe_response(report.to_json(), report.http_status, "application/json")

    def deadline_for(self, header: str | None) -> float | None:
        """The request's deadline in seconds: the least of the configured one, the
        header's (when valid) and ``max_deadline``; None when neither is set.
        """
        asked = parse_deadline(header)
        if asked is None and header is not None:
            with self._lock:
                self.malformed_headers += 1
            _log.debug("ignored %s header %r: not a number of seconds > 0", self.header, header[:64])
        configured = self.deadline
        if asked is None:
            if configured is None:
                return None
            return min(configured, self.max_deadline)
        if configured is not None and configured < asked:
            asked = configured
        return min(asked, self.max_deadline)


def _verbose(query: str) -> bool:
    return any(part.partition("=")[0] == "verbose" for part in query.split("&"))


_App = TypeVar("_App")


class Middleware(Generic[_App]):
    """What both middlewares are built from: the wrapped app and its :class:`RequestRules`."""

    def __init__(
        self,
        app: _App,
        *,
        readiness: ReadinessLike | None = None,
        live_path: str = "/livez",
        ready_path: str = "/readyz",
        deadline: float | None = None,
        deadline_header: str | None = "X-Request-Timeout",
        max_deadline: float = 30.0,
    ) -> None:
        self.app = app
        #: This instance's decisions (probes, deadlines); ``malformed_headers`` counts ignored headers.
        self.rules = RequestRules(
            readiness=readiness,
            live_path=live_path,
            ready_path=ready_path,
            deadline=deadline,
            deadline_header=deadline_header,
            max_deadline=max_deadline,
        )

    @property
    def server(self) -> RequestRules:
        """Deprecated: the old name of :attr:`rules`."""
        warnings.warn(
            "ResilienceMiddleware.server is deprecated: use ResilienceMiddleware.rules",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.rules
