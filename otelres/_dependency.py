"""What says a dependency failed, as opposed to the caller's own mistake.

The generic :class:`~otelres.Resilience` retries, and its breaker counts as
failures, only errors that say the dependency (or the way to it) failed: the
``OSError`` family (refused and reset connections, timeouts, DNS, and requests'
errors, which are ``IOError``), ``asyncio.TimeoutError``, and the transport and
operational errors of the client libraries in use, and an HTTP error status
raised for a response (requests' ``HTTPError``, httpx's ``HTTPStatusError``,
from ``raise_for_status()``) when it is a 5xx or a 429; a 404 is the caller's.
A ``ValueError``, a
``KeyError`` or a ``TypeError`` is the caller's own: retrying it repeats the
bug, and counting it against the breaker would open a circuit to a healthy
dependency. ``retry_on=Exception`` and ``failure_on=Exception`` bring back
"everything".

The libraries are read from ``sys.modules``: an exception of a library implies
the library was imported, and nothing is imported here on its account.
"""

from __future__ import annotations

import asyncio
import sys

__all__ = ["is_dependency_error"]

#: module -> attributes (dotted below the module) naming its dependency errors.
_LIBRARY_ERRORS: dict[str, tuple[str, ...]] = {
    "httpx": ("TransportError",),
    "psycopg": ("OperationalError",),
    "psycopg2": ("OperationalError",),
    "asyncpg": ("exceptions.PostgresConnectionError", "exceptions.ConnectionDoesNotExistError"),
    "redis": ("exceptions.ConnectionError", "exceptions.TimeoutError"),
    "sqlite3": ("OperationalError",),
}


def _library_errors() -> tuple[type[BaseException], ...]:
    found: list[type[BaseException]] = []
    for module_name, names in _LIBRARY_ERRORS.items():
        module = sys.modules.get(module_name)
        if module is None:
            continue
        for dotted in names:
            value: object = module
            for part in dotted.split("."):
                value = getattr(value, part, None)
            if isinstance(value, type) and issubclass(value, BaseException):
                found.append(value)
    return tuple(found)


def _status_error(exc: BaseException) -> int | None:
    """The status of an HTTP error status raised for a response (requests or httpx), else None."""
    requests = sys.modules.get("requests")
    httpx = sys.modules.get("httpx")
    if (requests is not None and isinstance(exc, requests.HTTPError)) or (
        httpx is not None and isinstance(exc, httpx.HTTPStatusError)
    ):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        return status if isinstance(status, int) else None
    return None


def is_dependency_error(exc: BaseException) -> bool:
    """True for an error that says the dependency failed (see the module docstring)."""
    # The common case first, cheaply: a refused or reset connection, a timeout.
    if isinstance(exc, (OSError, asyncio.TimeoutError)):
        requests = sys.modules.get("requests")
        if requests is None or not isinstance(exc, requests.HTTPError):
            return True
    status = _status_error(exc)
    if status is not None:
        return status >= 500 or status == 429
    return isinstance(exc, _library_errors())
