"""HTTP semantics shared by the requests and httpx integrations.

- One breaker per ``scheme://host:port`` (never a path, query, user or password).
- Retried: connection errors, timeouts, 408, 429, 502, 503, 504 (500 only when
  configured). Breaker failures: connection errors, timeouts, 5xx and 429; other
  4xx are the caller's business and count as successes.
- Methods retried: GET, HEAD, OPTIONS, TRACE, PUT, DELETE; POST and PATCH only
  with an ``Idempotency-Key`` header or an explicit opt-in (per call with
  :func:`retry_unsafe`, per target with ``http.retry_methods``).
- A body that cannot be replayed (a generator, a stream, a file) is never retried.
- ``Retry-After`` (seconds or HTTP date) replaces the backoff, up to the cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import sys
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from otelres._backoff import parse_retry_after
from otelres._resilience import Resilience

from ._targets import TargetCache

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from otelres._registry import Registry

__all__ = [
    "DEADLINE_EXCEEDED",
    "IDEMPOTENT_METHODS",
    "RETRY_STATUSES",
    "TARGETS",
    "HttpTargets",
    "breaker_name",
    "cap_timeout",
    "no_retry_reason",
    "retry_unsafe",
]

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
RETRY_STATUSES = frozenset({408, 429, 502, 503, 504})
_DEFAULT_PORTS = {"http": 80, "https": 443}

#: The message of the timeout raised for an attempt the request's deadline leaves no time for.
DEADLINE_EXCEEDED = "otelres: request deadline exceeded"

_UNSAFE_OK: contextvars.ContextVar[bool] = contextvars.ContextVar("otelres_retry_unsafe", default=False)


@contextlib.contextmanager
def retry_unsafe() -> Iterator[None]:
    """Within the block, POST and PATCH requests may be retried too (the caller
    knows the server deduplicates them).
    """
    token = _UNSAFE_OK.set(True)
    try:
        yield
    finally:
        _UNSAFE_OK.reset(token)


def breaker_name(url: str) -> str | None:
    """``https://user:pw@Api.Example.com/x?q=1`` → ``https://api.example.com:443``; None if not HTTP."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port or _DEFAULT_PORTS[scheme]}"


def cap_timeout(value: object, left: float) -> object:
    """A client timeout (seconds, None for unbounded) shrunk to ``left`` seconds;
    a value of another kind (a library's own timeout object) is returned as is.
    """
    if value is None:
        return left
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return min(float(value), left)
    return value


def no_retry_reason(
    method: str, headers: Mapping[str, str] | None, replayable: bool, unsafe_ok: bool = False
) -> str | None:
    """Why this request must not be retried (``not_idempotent``, ``not_replayable``), or None."""
    if not replayable:
        return "not_replayable"
    if method.upper() in IDEMPOTENT_METHODS or unsafe_ok or _UNSAFE_OK.get():
        return None
    if headers is not None and any(k.lower() == "idempotency-key" for k in headers):
        return None
    return "not_idempotent"


def _error_classes(timeouts: bool) -> tuple[type[BaseException], ...]:
    """The transport errors (or only the timeouts) of the client libraries in use.

    Read from ``sys.modules``: an exception of a library implies the library
    was imported, and nothing is imported here on its account.
    """
    classes: list[type[BaseException]] = [TimeoutError] if timeouts else [OSError]
    requests = sys.modules.get("requests")
    if requests is not None:
        if timeouts:
            classes.append(requests.Timeout)
        else:
            # Not RequestException: InvalidURL, MissingSchema and kin are the caller's.
            classes += [requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError]
    httpx = sys.modules.get("httpx")
    if httpx is not None:
        classes.append(httpx.TimeoutException if timeouts else httpx.TransportError)
    return tuple(classes)


def is_transport_error(exc: BaseException) -> bool:
    """A connection error or a timeout, of requests, httpx or the OS (an HTTP
    error status is a response on the paths otelres wraps, never an exception).
    """
    return isinstance(exc, _error_classes(timeouts=False))


def is_timeout(exc: BaseException) -> bool:
    """A timeout, of requests, httpx or the OS."""
    return isinstance(exc, _error_classes(timeouts=True))


def discard(response: Any) -> None:
    """Release a response that will not reach the caller (it is being retried,
    or a fallback replaces it); an already closed (read) one needs nothing.
    """
    if getattr(response, "is_closed", False):
        return
    try:
        response.close()
    except RuntimeError:
        # httpx: a streamed async response must be closed on its own loop.
        with contextlib.suppress(RuntimeError):
            task = asyncio.get_running_loop().create_task(response.aclose())
            _closing.add(task)
            task.add_done_callback(_closing.discard)


_closing: set[asyncio.Task[None]] = set()


class HttpTargets:
    """The Resilience of each HTTP destination, whichever client library calls it.

    requests and httpx share it: one breaker per ``scheme://host:port``, with
    failure predicates that know both libraries' errors, so the breaker judges
    a call the same way whoever made it.
    """

    def __init__(self) -> None:
        # Per destination: its Resilience, and whether POST and PATCH may be retried.
        self._cache: TargetCache[tuple[Resilience, bool]] = TargetCache(self._build)

    def get(self, name: str) -> Resilience:
        """The Resilience for ``name`` (see :class:`TargetCache`)."""
        return self._cache.get(name)[0]

    def plan(
        self, url: str, method: str, headers: Mapping[str, str] | None, replayable: bool
    ) -> tuple[Resilience, str | None] | None:
        """The Resilience of a request's destination and why it must not be
        retried (None: it may be); None for a URL that is not HTTP(S).
        """
        name = breaker_name(url)
        if name is None:
            return None
        res, unsafe_ok = self._cache.get(name)
        return res, no_retry_reason(method, headers, replayable, unsafe_ok)

    def clear(self) -> None:
        """Forget every destination (uninstrumented)."""
        self._cache.clear()

    @staticmethod
    def _build(name: str, registry: Registry) -> tuple[Resilience, bool]:
        target = registry.settings.for_target(name)
        statuses = RETRY_STATUSES | ({500} if target.http.retry_500 else set())

        def failure_result(response: Any) -> bool:
            status: int = response.status_code
            return status >= 500 or status == 429

        def retry_on_result(response: Any) -> bool:
            return response.status_code in statuses

        def retry_after(exc: BaseException | None, response: Any) -> float | None:
            if response is None:
                return None
            value = response.headers.get("retry-after")  # both libraries' headers ignore case
            return parse_retry_after(value, now=time.time()) if value is not None else None

        def reason(exc: BaseException | None, response: Any) -> str:
            if exc is None:
                return f"status_{response.status_code}"
            return "timeout" if is_timeout(exc) else "connect"

        retry = target.retry.evolve(
            retry_on=is_transport_error,
            retry_on_result=retry_on_result,
            retry_after=retry_after,
            reason=reason,
        )
        breaker, budget = registry.entry(name, failure_on=is_transport_error, failure_result=failure_result)
        res = Resilience(name, retry=retry, breaker=breaker, budget=budget, discard=discard)
        return res, target.http.retry_unsafe


#: The one set of HTTP destinations, shared by the requests and httpx integrations.
TARGETS = HttpTargets()
