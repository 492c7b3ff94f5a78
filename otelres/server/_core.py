"""The request logic the WSGI and ASGI middlewares share, without any I/O.

Each middleware is a thin driver: it asks its :class:`RequestRules` what to do
with a request (answer a probe, or run the app under a deadline), and turns a
:class:`~otelres.CircuitOpenError` into the 503 response :func:`circuit_open_response`
builds (the framework glue in :mod:`otelres.server._frameworks` builds the same
one). Nothing here reads a socket, awaits or sleeps.

What leaves the process is decided here too. A request comes from outside: its
deadline header is a number to check, never trusted (:func:`parse_deadline`).
A response goes outside: unless the middleware was built with
``show_details=True``, it names no breaker, check or error (the 503 body is
``{"error": "dependency unavailable"}``, ``/readyz`` the overall status), and
every header value built from a name is plain ASCII (:func:`header_value`).
"""

from __future__ import annotations

import contextvars
import http
import json
import logging
import math
import re
import threading
import urllib.parse
import warnings
from typing import TYPE_CHECKING, Generic, Literal, Protocol, TypeVar

from otelres import _fork
from otelres._deadline import MAX_DEADLINE
from otelres._degrade import DegradedSet
from otelres._errors import ConfigError
from otelres.server._shedding import Shedding

if TYPE_CHECKING:
    from collections.abc import Callable

    from otelres._errors import CircuitOpenError
    from otelres._limit import Limiter

__all__ = [
    "Middleware",
    "ReadinessLike",
    "ReportLike",
    "RequestRules",
    "Response",
    "circuit_open_response",
    "degraded_header",
    "details_shown",
    "header_value",
    "log_rejected",
    "parse_deadline",
    "showing_details",
    "status_line",
]

_log = logging.getLogger("otelres.server")

#: A response the middleware answers on its own: status, headers, body.
Response = tuple[int, list[tuple[str, str]], bytes]

_JSON = ("Content-Type", "application/json")

#: The open-circuit 503 body when details are not shown: names no dependency.
_UNAVAILABLE = json.dumps({"error": "dependency unavailable"}).encode()

#: Whether the middleware handling the current request shows details (``show_details``);
#: the framework glue reads it for its own 503. False outside a middleware's request.
_SHOW_DETAILS: contextvars.ContextVar[bool] = contextvars.ContextVar("otelres_show_details", default=False)


def details_shown() -> bool:
    """Whether the current request is handled by a middleware built with ``show_details=True``."""
    return _SHOW_DETAILS.get()


class _ShowingDetails:
    """The context manager :func:`showing_details` returns."""

    __slots__ = ("_show", "_token")

    _token: contextvars.Token[bool]

    def __init__(self, show: bool) -> None:
        self._show = show

    def __enter__(self) -> None:
        self._token = _SHOW_DETAILS.set(self._show)

    def __exit__(self, *exc: object) -> None:
        _SHOW_DETAILS.reset(self._token)


def showing_details(show: bool) -> _ShowingDetails:
    """Within the block, :func:`details_shown` is ``show``: the middlewares set it
    around the application's handling of each request.
    """
    return _ShowingDetails(show)


class ReportLike(Protocol):
    """What the middleware needs of :class:`otelres.health.Report`."""

    @property
    def status(self) -> str:
        """``ok``, ``degraded`` or ``fail``."""
        ...

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


#: What a header value built from a name keeps as it is: RFC 3986's unreserved and
#: reserved characters but ``,`` (which separates names); everything else, ``%``
#: included, is percent-encoded from UTF-8.
_HEADER_SAFE = ":/?#[]@!$&'()*+;="


def header_value(text: str) -> str:
    """``text`` as a header value: plain printable ASCII, whatever it holds.

    Non-ASCII, control characters, spaces, ``%`` and ``,`` are percent-encoded
    as in RFC 3986 (``推荐`` -> ``%E6%8E%A8%E8%8D%90``), so a name never breaks a
    response (a non-Latin-1 value cannot be sent) nor adds a header (CR LF).
    """
    return urllib.parse.quote(text, safe=_HEADER_SAFE, encoding="utf-8", errors="surrogatepass")


def degraded_header(names: set[str] | None, *, show_details: bool = False) -> tuple[str, str] | None:
    """The ``X-Degraded`` header when parts fell back during the request, else None.

    With ``show_details`` it names every part (breakers included); without, only the
    names the application chose (``degrade(..., name=...)``), or ``1`` when none was.
    Each name goes through :func:`header_value`.
    """
    if not names:
        return None
    shown = names if show_details else names.chosen if isinstance(names, DegradedSet) else ()
    return ("X-Degraded", ",".join(sorted({header_value(name) for name in shown})) or "1")


#: A deadline header's value: a plain decimal number of seconds (ASCII digits, an
#: optional fraction and exponent); no sign, ``inf``, ``nan``, hex or ``_``.
_SECONDS = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)


def parse_deadline(value: str | None) -> float | None:
    """The seconds a deadline header asks for, at most :data:`~otelres._deadline.MAX_DEADLINE`;
    None unless it is a plain decimal number > 0 (surrounding spaces and tabs allowed).

    A number too large to represent counts as the longest deadline; ``inf``,
    ``nan``, a sign, hex, digit separators and non-ASCII digits do not parse.
    """
    if value is None:
        return None
    text = value.strip(" \t")
    if _SECONDS.fullmatch(text) is None:
        return None
    seconds = float(text)  # a match always parses; one too large gives inf
    if not seconds > 0:
        return None
    return min(seconds, MAX_DEADLINE)


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


def _retry_after(seconds: float) -> int:
    """Whole seconds, from 1 to a day, whatever the error carried (NaN gives 1)."""
    if not seconds < MAX_DEADLINE:  # also NaN
        return 1 if math.isnan(seconds) else int(MAX_DEADLINE)
    return max(1, math.ceil(seconds))


def circuit_open_response(error: CircuitOpenError, *, show_details: bool = False) -> Response:
    """The 503 answer to a request that failed fast on an open circuit.

    ``Retry-After`` is the whole seconds until the breaker probes again, at least
    1. The JSON body is ``{"error": "dependency unavailable"}``; with
    ``show_details`` it also names the dependency and repeats that figure.
    """
    retry_after = _retry_after(error.retry_after)
    if show_details:
        body = json.dumps(
            {"error": "dependency unavailable", "dependency": error.breaker, "retry_after": retry_after}
        ).encode()
    else:
        body = _UNAVAILABLE
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
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not 0 < value <= MAX_DEADLINE  # also refuses NaN
    ):
        allowed = f"a finite number of seconds > 0 and at most {MAX_DEADLINE:g} (a day)"
        raise ConfigError(key, value, allowed + (" or None" if optional else ""))


#: An HTTP field name (RFC 9110's token).
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", re.ASCII)


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
        show_details: bool = False,
    ) -> None:
        _check_seconds("deadline", deadline, optional=True)
        _check_seconds("max_deadline", max_deadline, optional=False)
        for key, path in (("live_path", live_path), ("ready_path", ready_path)):
            if not isinstance(path, str) or not path.startswith("/"):
                raise ConfigError(key, path, "a path starting with '/'")
        if deadline_header is not None and (
            not isinstance(deadline_header, str) or _TOKEN.fullmatch(deadline_header) is None
        ):
            raise ConfigError("deadline_header", deadline_header, "an HTTP header name or None")
        if not isinstance(show_details, bool):
            raise ConfigError("show_details", show_details, "True or False")
        #: Whether responses name breakers, checks and errors (``show_details``).
        self.show_details = show_details
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
        _fork.renew(self, "_lock")
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
        """The readiness answer: JSON, or text with ``?verbose``; without
        ``show_details``, the overall status only (``{"status": "ok"}``, and the
        text form's last line).
        """
        if _verbose(query):
            text = report.to_text(self.show_details)
            return _probe_response(text.encode(), report.http_status, "text/plain; charset=utf-8")
        if self.show_details:
            body = report.to_json()
        else:
            body = json.dumps({"status": report.status}, separators=(",", ":")).encode()
        return _probe_response(body, report.http_status, "application/json")

    def circuit_open_response(self, error: CircuitOpenError) -> Response:
        """The 503 for ``error``, with or without details as configured."""
        return circuit_open_response(error, show_details=self.show_details)

    def degraded_header(self, names: set[str] | None) -> tuple[str, str] | None:
        """The ``X-Degraded`` header for the parts that fell back, as configured."""
        return degraded_header(names, show_details=self.show_details)

    def deadline_for(self, header: str | None) -> float | None:
        """The request's deadline in seconds: the least of the configured one, the
        header's (when valid) and ``max_deadline``; None when neither is set.
        Never raises, whatever the header holds: a value that is not a plain
        number of seconds > 0 is counted and ignored.
        """
        return self.request_deadline(header)[0]

    def request_deadline(self, header: str | None) -> tuple[float | None, bool]:
        """:meth:`deadline_for`, and whether the caller's header made it shorter than
        the service's own (then its timeouts are the caller's doing, not the dependency's).
        """
        seconds = self._deadline_for(header)
        own = self.deadline if self.deadline is not None else self.max_deadline
        return seconds, seconds is not None and header is not None and seconds < min(own, self.max_deadline)

    def _deadline_for(self, header: str | None) -> float | None:
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
#: What a request is to the middleware: a WSGI environ or an ASGI scope.
_Request = TypeVar("_Request")


class Middleware(Generic[_App, _Request]):
    """What both middlewares are built from: the wrapped app, its :class:`RequestRules` and,
    with a ``limit``, its :class:`~otelres.server._shedding.Shedding`.

    ``deadline_header`` (off by default) lets a caller shorten its own request's
    deadline: turn it on only behind a proxy that sets or strips that header.
    ``show_details`` (off by default) lets responses name breakers, checks and
    errors: for services on an internal network only.
    ``limit`` (off by default): at most that many requests in flight (an int, an
    :class:`otelres.FixedLimit` or an :class:`otelres.AdaptiveLimit`); the others are shed
    at once with 503 and ``Retry-After``, probes never. ``critical`` (a predicate on the
    request, asked only when the limit is taken) lets a request use the headroom above it.
    """

    def __init__(
        self,
        app: _App,
        *,
        readiness: ReadinessLike | None = None,
        live_path: str = "/livez",
        ready_path: str = "/readyz",
        deadline: float | None = None,
        deadline_header: str | None = None,
        max_deadline: float = 30.0,
        show_details: bool = False,
        limit: int | Limiter | None = None,
        critical: Callable[[_Request], bool] | None = None,
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
            show_details=show_details,
        )
        if limit is None and critical is not None:
            raise ConfigError("critical", critical, "None unless a limit is set (it says who may pass it)")
        #: The concurrency limit's decisions, or None without a limit.
        self.shedding: Shedding[_Request] | None = (
            None if limit is None else Shedding(limit, critical, show_details=show_details)
        )

    @property
    def limiter(self) -> Limiter | None:
        """The concurrency limit (``limit``, ``in_flight``, ``shed``), or None without one."""
        return None if self.shedding is None else self.shedding.limiter

    @property
    def server(self) -> RequestRules:
        """Deprecated: the old name of :attr:`rules`."""
        warnings.warn(
            "ResilienceMiddleware.server is deprecated: use ResilienceMiddleware.rules",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.rules
