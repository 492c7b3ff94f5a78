"""What a call rejected by an open circuit inside a patched client raises.

An application written against a client library catches that library's error
for "could not reach the server" and answers from a cache, a default, a queue.
``otelres.instrument()`` must not turn that path into an error nobody catches,
so a rejection inside a patched client is an instance of both
:class:`otelres.CircuitOpenError` (the 503 mapping of the middleware and
:func:`otelres.degrade` recognise it) and the library's own error:

============  ===============================================================
requests      ``requests.exceptions.ConnectionError`` (so ``RequestException``
              and ``OSError`` too)
httpx         ``httpx.ConnectError`` (so ``TransportError``, ``RequestError``
              and ``HTTPError``), with ``request`` set
psycopg       ``psycopg.OperationalError`` (``sqlstate`` is None)
psycopg2      ``psycopg2.OperationalError`` (``pgcode`` is None)
asyncpg       ``asyncpg.exceptions.ConnectionDoesNotExistError`` and the
              built-in ``ConnectionError``
redis         ``redis.exceptions.ConnectionError`` (sync and asyncio)
sqlite3       ``sqlite3.OperationalError``
============  ===============================================================

asyncpg has no one error for an unreachable server: ``asyncpg.connect``
raises the ``OSError`` of the socket (``ConnectionRefusedError``) when nothing
listens, and a query on a connection the server dropped raises
``ConnectionDoesNotExistError`` (a ``PostgresConnectionError``, SQLSTATE 08003,
made by asyncpg itself, never by a server message). A circuit rejects both
connects and queries, so its rejection is both: ``except OSError`` around a
connect and ``except asyncpg.PostgresConnectionError`` (or ``PostgresError``)
around a query both catch it.

Each class is made once, when the first guard of its library is built (the
library is imported by then; nothing is imported here on its account). It is
named ``CircuitOpenError`` in the integration's module
(``otelres.instrumentation.requests.CircuitOpenError``), which makes it on
first access, so that a pickled rejection is read back in a process that has
made none. Its ``args`` stay ``(breaker, retry_after)`` as the base class
reads them; ``str()`` is the base class's message.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import sys
import threading
import types
from typing import TYPE_CHECKING, Any

from otelres import _fork
from otelres._errors import CircuitOpenError

if TYPE_CHECKING:
    from collections.abc import Callable

    from otelres._registry import Profile

__all__ = ["LIBRARIES", "rejection_class", "with_rejection"]

#: library -> (the module of the library's error classes, their names there).
LIBRARIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "requests": ("requests.exceptions", ("ConnectionError",)),
    "httpx": ("httpx", ("ConnectError",)),
    "psycopg": ("psycopg", ("OperationalError",)),
    "psycopg2": ("psycopg2", ("OperationalError",)),
    "asyncpg": ("asyncpg.exceptions", ("ConnectionDoesNotExistError",)),
    "redis": ("redis.exceptions", ("ConnectionError",)),
    "sqlite3": ("sqlite3", ("OperationalError",)),
}

#: Built-in classes a library's rejection is an instance of too (see the module docstring).
_BUILTIN: dict[str, tuple[type[BaseException], ...]] = {"asyncpg": (ConnectionError,)}

_made: dict[str, type[CircuitOpenError]] = {}
_lock = threading.Lock()
_fork.renew(sys.modules[__name__], "_lock")


def _init(self: CircuitOpenError, breaker: str, retry_after: float, reason: str | None = None) -> None:
    # The library's part first, with the breaker's name as its message: its own
    # attributes are set as its constructor sets them (redis-py's error_type,
    # psycopg's diagnostics, httpx's request, requests' request and response).
    super(CircuitOpenError, self).__init__(breaker)
    # Then the figures, where CircuitOpenError reads them (and pickles them): the reason
    # only when it is not the open circuit's (``throttled``).
    self.args = (
        (breaker, retry_after)
        if reason is None or reason == "circuit_open"
        else (breaker, retry_after, reason)
    )


def _make(library: str) -> type[CircuitOpenError]:
    module, names = LIBRARIES[library]
    found = importlib.import_module(module)  # already imported: a guard of the library is being built
    bases = (CircuitOpenError, *(getattr(found, name) for name in names), *_BUILTIN.get(library, ()))
    where = f"otelres.instrumentation.{library}"
    described = " and ".join(f"``{module}.{name}``" for name in names)

    def body(namespace: dict[str, Any]) -> None:
        namespace.update(
            __module__=where,
            __qualname__="CircuitOpenError",
            __doc__=(
                f"A call through {library} rejected by an open circuit: an "
                f":class:`otelres.CircuitOpenError` that is also {described}, so that "
                "the application's own ``except`` clauses for an unreachable server catch it."
            ),
            __init__=_init,
            # One repr for every library (redis-py's would drop the breaker's name).
            __repr__=BaseException.__repr__,
        )

    # types.new_class: the library's error may have a metaclass of its own (asyncpg's).
    return types.new_class("CircuitOpenError", bases, {}, body)


def rejection_class(library: str) -> type[CircuitOpenError]:
    """The class a rejection inside a patched ``library`` raises (made once)."""
    found = _made.get(library)
    if found is None:
        with _lock:  # one class per library: a second one would not pickle
            found = _made.get(library)
            if found is None:
                found = _made[library] = _make(library)
    return found


def module_getattr(library: str, module: str) -> Callable[[str], type[CircuitOpenError]]:
    """An integration module's ``__getattr__``: ``CircuitOpenError`` is the class of
    ``library``'s rejections, made on first access (so a pickled rejection loads in a
    process that never made one).
    """

    def __getattr__(name: str) -> type[CircuitOpenError]:  # noqa: N807 - a module's __getattr__
        if name == "CircuitOpenError":
            return rejection_class(library)
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__


def with_rejection(profile: Profile, library: str) -> Profile:
    """``profile`` for the calls of ``library``: a rejection raises its class.

    A copy, so a distinct profile: the registry keeps one guard per profile and
    name, and the breaker and budget per name, shared by every library that
    names the same dependency.
    """
    rejection: Callable[[], type[CircuitOpenError]] = functools.partial(rejection_class, library)
    return dataclasses.replace(profile, rejection=rejection)
