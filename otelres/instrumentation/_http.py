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

import contextlib
import contextvars
import threading
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from otelres import _config
from otelres._backoff import parse_retry_after
from otelres._registry import OVERFLOW, default_registry
from otelres._resilience import Resilience

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

__all__ = [
    "IDEMPOTENT_METHODS",
    "RETRY_STATUSES",
    "HttpTargets",
    "breaker_name",
    "no_retry_reason",
    "retry_unsafe",
]

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
RETRY_STATUSES = frozenset({408, 429, 502, 503, 504})
_DEFAULT_PORTS = {"http": 80, "https": 443}

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


class HttpTargets:
    """The Resilience of each HTTP destination, for one client library.

    ``is_transport_error`` tells the library's connection errors and timeouts,
    ``status_of`` reads a response's status, ``headers_of`` its headers, and
    ``discard`` releases a response that will not reach the caller.
    """

    def __init__(
        self,
        *,
        is_transport_error: Callable[[BaseException], bool],
        is_timeout: Callable[[BaseException], bool],
        status_of: Callable[[Any], int],
        headers_of: Callable[[Any], Mapping[str, str]],
        discard: Callable[[Any], object] | None,
    ) -> None:
        self._is_transport_error = is_transport_error
        self._is_timeout = is_timeout
        self._status_of = status_of
        self._headers_of = headers_of
        self._discard = discard
        self._lock = threading.Lock()
        self._targets: dict[str, Resilience] = {}
        #: Per destination: whether the configuration allows retrying POST and PATCH.
        self.unsafe_ok: dict[str, bool] = {}

    def get(self, name: str) -> Resilience:
        """The Resilience for ``name`` (bounded: past the registry's cap, one shared overflow)."""
        found = self._targets.get(name)
        if found is not None:
            return found
        with self._lock:
            found = self._targets.get(name)
            if found is None:
                if len(self._targets) >= _config.current().max_breakers:
                    name = OVERFLOW
                    found = self._targets.get(name)
                if found is None:
                    found = self._build(name)
                    self._targets[name] = found
            return found

    def plan(
        self, url: str, method: str, headers: Mapping[str, str] | None, replayable: bool
    ) -> tuple[Resilience, str | None] | None:
        """The Resilience of a request's destination and why it must not be
        retried (None: it may be); None for a URL that is not HTTP(S).
        """
        name = breaker_name(url)
        if name is None:
            return None
        res = self.get(name)
        return res, no_retry_reason(method, headers, replayable, self.unsafe_ok.get(res.name, False))

    def clear(self) -> None:
        """Forget every destination (settings changed, or uninstrumented)."""
        with self._lock:
            self._targets.clear()

    def _build(self, name: str) -> Resilience:
        target = default_registry().settings.for_target(name)
        statuses = RETRY_STATUSES | ({500} if target.http.retry_500 else set())

        def failure_result(response: Any) -> bool:
            status = self._status_of(response)
            return status >= 500 or status == 429

        def retry_on_result(response: Any) -> bool:
            return self._status_of(response) in statuses

        def retry_after(exc: BaseException | None, response: Any) -> float | None:
            if response is None:
                return None
            value = self._headers_of(response).get("retry-after")
            return parse_retry_after(value, now=time.time()) if value is not None else None

        def reason(exc: BaseException | None, response: Any) -> str:
            if exc is None:
                return f"status_{self._status_of(response)}"
            return "timeout" if self._is_timeout(exc) else "connect"

        retry = target.retry.evolve(
            retry_on=self._is_transport_error,
            retry_on_result=retry_on_result,
            retry_after=retry_after,
            reason=reason,
        )
        breaker, budget = default_registry().entry(
            name, failure_on=self._is_transport_error, failure_result=failure_result
        )
        res = Resilience(name, retry=retry, breaker=breaker, budget=budget, discard=self._discard)
        self.unsafe_ok[name] = target.http.retry_unsafe
        return res
