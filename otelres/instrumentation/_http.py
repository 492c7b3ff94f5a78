"""HTTP semantics shared by the requests and httpx integrations.

- One breaker per ``scheme://host:port`` (never a path, query, user or password).
- Retried: connection errors, timeouts, 408, 429, 502, 503, 504 (500 only when
  configured). Breaker failures: connection errors, timeouts, 5xx and 429; other
  4xx are the caller's business and count as successes.
- Methods retried: GET, HEAD, OPTIONS, TRACE, PUT, DELETE; POST and PATCH only
  with an ``Idempotency-Key`` header or an explicit opt-in (per block with
  :func:`otelres.retry_unsafe`, per target with ``http.retry_unsafe``).
- A body that cannot be replayed (a generator, a stream, a file) is never retried.
- ``Retry-After`` (seconds or HTTP date) replaces the backoff, up to the cap.

What runs before every patched request is kept cheap: a URL's breaker name is
remembered (by the URL's start, ``scheme://host:port``, never a path; a bounded
map), and a request's headers are read only when its method alone does not
settle whether it may be retried (:func:`retry_reason`).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from otelres._backoff import parse_retry_after
from otelres._flow import current_attempt
from otelres._idempotency import unsafe_retries_allowed
from otelres._registry import Profile

from ._common import mark_resend

if TYPE_CHECKING:
    from collections.abc import Hashable, Mapping

    from otelres._config import Target
    from otelres._flow import Guard

__all__ = [
    "DEADLINE_EXCEEDED",
    "HTTP",
    "IDEMPOTENT_METHODS",
    "RETRY_STATUSES",
    "breaker_name",
    "cap_timeout",
    "cut_by_deadline",
    "host_breaker_name",
    "marking_resend",
    "no_retry_reason",
    "retry_reason",
    "url_breaker_name",
]

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
RETRY_STATUSES = frozenset({408, 429, 502, 503, 504})
_DEFAULT_PORTS = {"http": 80, "https": 443}

#: The message of the timeout raised for an attempt the request's deadline leaves no time for.
DEADLINE_EXCEEDED = "otelres: request deadline exceeded"


def _ascii_host(host: str) -> str:
    """A host as it goes on the wire, which is how httpx already writes it: an
    internationalised name in punycode (``bücher.example`` -> ``xn--bcher-kva.example``),
    so that requests (which gets the raw URL) and httpx name one host one breaker.
    A name IDNA refuses (a label over 63 characters, a 70 KB host) keeps its
    characters: the registry bounds every name.
    """
    if host.isascii():
        return host
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        return host


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
    host = _ascii_host(host)
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port or _DEFAULT_PORTS[scheme]}"


#: Breaker names (None: not HTTP) by what they depend on alone: a URL's start up to
#: its path (requests; never one holding user info), a URL's scheme, host and port
#: (httpx). Bounded, and emptied when full: a crawler's hosts cost at most this many
#: short entries (the registry caps the breakers themselves). Names do not depend
#: on the settings; guards do, and come from the registry on every call.
_NAMES: dict[Hashable, str | None] = {}
#: The most entries :data:`_NAMES` holds.
NAMES_MAX = 512
#: The longest URL start that is remembered (a longer one is named afresh on every
#: call): no hostile host fills memory through :data:`_NAMES`.
KEY_MAX = 256


def remember(key: Hashable, name: str | None) -> str | None:
    """Remember ``name`` for ``key`` in :data:`_NAMES` (emptied when full); return it."""
    if len(_NAMES) >= NAMES_MAX:
        _NAMES.clear()
    _NAMES[key] = name
    return name


def url_breaker_name(url: str) -> str | None:
    """:func:`breaker_name`, remembered by the URL's start: everything before the first
    ``/`` after the first ``//`` (the whole URL without one).

    That start holds all :func:`breaker_name` reads (the scheme, and the authority,
    which ends at a ``/``, ``?`` or ``#``; tabs and newlines that ``urlsplit`` drops
    only move the first ``//`` later, never past the authority's start), so
    ``breaker_name(start) == breaker_name(url)``.
    """
    start = url.find("//")
    if start >= 0:
        end = url.find("/", start + 2)
        if end >= 0:
            url = url[:end]
    try:
        return _NAMES[url]
    except KeyError:
        pass
    name = breaker_name(url)
    # Not kept: a start holding user info (a password), or too long to be a host.
    return name if "@" in url or len(url) > KEY_MAX else remember(url, name)


def host_breaker_name(scheme: str, host: bytes, port: int | None) -> str | None:
    """:func:`breaker_name` of a parsed URL, remembered: httpx's ``scheme``, ``raw_host``
    (ASCII, lowercase, without brackets) and ``port`` (None for the scheme's default).
    """
    key = (scheme, host, port)
    try:
        return _NAMES[key]
    except KeyError:
        pass
    text = host.decode("ascii", "replace")
    if ":" in text:
        text = f"[{text}]"
    name = breaker_name(f"{scheme}://{text}" if port is None else f"{scheme}://{text}:{port}")
    return remember(key, name) if len(host) <= KEY_MAX else name


def cap_timeout(value: object, left: float) -> object:
    """A client timeout (seconds, None for unbounded) shrunk to ``left`` seconds;
    a value of another kind (a library's own timeout object) is returned as is.
    """
    if value is None:
        return left
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return min(float(value), left)
    return value


def cut_by_deadline(value: object, left: float) -> bool:
    """Whether ``left`` seconds is shorter than a client timeout ``value`` (None:
    unbounded): a timeout of the attempt is then the deadline's doing.
    """
    if value is None:
        return True
    return isinstance(value, (int, float)) and not isinstance(value, bool) and left < value


def no_retry_reason(
    method: str, headers: Mapping[str, str] | None, replayable: bool, unsafe_ok: bool = False
) -> str | None:
    """Why this request must not be retried (``not_idempotent``, ``not_replayable``), or None."""
    if not replayable:
        return "not_replayable"
    if method.upper() in IDEMPOTENT_METHODS or unsafe_ok or unsafe_retries_allowed():
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


def _retry(target: Target) -> dict[str, Any]:
    """The HTTP retry predicates for a configuration entry (``http.retry_500`` adds 500)."""
    statuses = RETRY_STATUSES | ({500} if target.http.retry_500 else set())

    def retry_on_result(response: Any) -> bool:
        return response.status_code in statuses

    return {
        "retry_on": is_transport_error,
        "retry_on_result": retry_on_result,
        "retry_after": _retry_after,
        "reason": _reason,
    }


def _failure_result(response: Any) -> bool:
    status: int = response.status_code
    return status >= 500 or status == 429


def _retry_after(exc: BaseException | None, response: Any) -> float | None:
    if response is None:
        return None
    value = response.headers.get("retry-after")  # both libraries' headers ignore case
    return parse_retry_after(value, now=time.time()) if value is not None else None


def _reason(exc: BaseException | None, response: Any) -> str:
    if exc is None:
        return f"status_{response.status_code}"
    return "timeout" if is_timeout(exc) else "connect"


#: How requests and httpx judge and retry an HTTP call: predicates that know
#: both libraries' errors, so a destination's breaker judges a call the same way
#: whoever made it. Each library uses a copy whose rejection is its own error
#: (:func:`~otelres.instrumentation._rejections.with_rejection`); the breaker of a
#: destination stays one.
HTTP = Profile(
    "http",
    failure_on=is_transport_error,
    failure_result=_failure_result,
    retry=_retry,
    discard=discard,
)


def retry_reason(
    guard: Guard, method: str, headers: Mapping[str, Any] | None, replayable: bool
) -> str | None:
    """Why a request through ``guard`` must not be retried (None: it may be): see
    :func:`no_retry_reason`, with the destination's ``http.retry_unsafe``.

    A replayable request whose ``method`` is in :data:`IDEMPOTENT_METHODS` may always
    be: the integrations settle that case without a call, and without reading headers.
    """
    target = guard.target
    unsafe_ok = target is not None and target.http.retry_unsafe
    return no_retry_reason(method, headers, replayable, unsafe_ok)


def marking_resend(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """A wrapt wrapper for the layer below the CLIENT span: mark a retry, then call through."""
    if current_attempt() > 1:
        mark_resend()
    return wrapped(*args, **kwargs)
