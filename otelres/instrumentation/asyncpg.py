"""asyncpg: a breaker and retries per database around ``asyncpg.connect``;
statements (``Connection.execute``, ``executemany``, ``fetch``, ``fetchval``,
``fetchrow``, ``fetchmany``) make one attempt through the same breaker.

``asyncpg.connect`` and ``asyncpg.connection.connect`` are the same function
under two names (a pool made after ``instrument()`` calls the second), so both
are patched. The patched ``connect`` asks asyncpg for a subclass of the
connection class it would have made (``Connection``, or the application's
``connection_class``) whose query methods go through the breaker and then call
the class's own. OpenTelemetry's asyncpg instrumentation wraps those methods
on ``Connection`` itself, below ours: a query's CLIENT span sits under
otelres's call span whichever was installed first, and a query rejected by an
open circuit makes no CLIENT span.

A call rejected by an open circuit raises :data:`CircuitOpenError`, an
:class:`otelres.CircuitOpenError` that is also asyncpg's
``ConnectionDoesNotExistError`` (what a query on a connection the server
dropped raises) and ``ConnectionError`` (an ``OSError``, what ``connect``
raises when nothing listens): the application's ``except`` clauses for either
catch it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from ._common import Patches, acall_inside, passing_through, should_wrap
from ._postgres import (
    Connections,
    Driver,
    Subclasses,
    name_from_params,
    name_from_url,
)
from ._rejections import module_getattr

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Collection


__all__ = ["AsyncpgInstrumentor"]

#: The PostgreSQL guards; a rejection raises :data:`CircuitOpenError`.
_DRIVER = Driver.named("asyncpg")
_connections = Connections(_DRIVER.statement)
_patches = Patches()


#: ``CircuitOpenError``: what an asyncpg call rejected by an open circuit raises, an
#: :class:`otelres.CircuitOpenError` that is also asyncpg's ``ConnectionDoesNotExistError`` (a
#: ``PostgresConnectionError``) and the built-in ``ConnectionError`` (an ``OSError``, as a refused connect
#: raises).
__getattr__ = module_getattr("asyncpg", __name__)


def _name(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """The breaker name of a connect call's DSN and keywords; None if they do not parse."""
    dsn = args[0] if args else kwargs.get("dsn")
    try:
        return name_from_url(
            dsn,
            host=kwargs.get("host"),
            port=kwargs.get("port"),
            database=kwargs.get("database"),
            user=kwargs.get("user"),
        )
    except Exception:  # noqa: BLE001 - a bad DSN: asyncpg itself will say what is wrong
        return None


def _live_name(connection: Any) -> str | None:
    """The name of a connection made before otelres was on (asyncpg's private fields)."""
    addr = connection._addr
    if isinstance(addr, str):  # a Unix socket's path: <directory>/.s.PGSQL.<port>
        host, _, port = addr.rpartition("/.s.PGSQL.")
    else:
        host, port = addr[0], addr[1]
    return name_from_params({"host": host, "port": port, "dbname": connection._params.database}, env={})


def _run(
    connection: Any, method: Callable[..., Awaitable[Any]], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Awaitable[Any]:
    """Run a query through its database's breaker (a single attempt): what to await
    (not a coroutine of its own: one frame less on every query).
    """
    # ``is_closed()``: asyncpg fails a query on a closed connection without a word to the server.
    if not _connections.active or not should_wrap() or connection.is_closed():
        return method(*args, **kwargs)
    guard = _connections.guard(connection, _live_name)
    if guard is None:
        return method(*args, **kwargs)
    return acall_inside(guard, None, method, args, kwargs)


class _Connection:
    """Mixed into the connection class asyncpg would have made."""

    __slots__ = ()

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        """Run a statement through the database's breaker."""
        return await _run(self, super().execute, args, kwargs)  # type: ignore[misc] # asyncpg's, by the MRO

    async def executemany(self, *args: Any, **kwargs: Any) -> Any:
        """Run a statement for each set of arguments through the database's breaker."""
        return await _run(self, super().executemany, args, kwargs)  # type: ignore[misc]

    async def fetch(self, *args: Any, **kwargs: Any) -> Any:
        """Run a query through the database's breaker; its rows."""
        return await _run(self, super().fetch, args, kwargs)  # type: ignore[misc]

    async def fetchval(self, *args: Any, **kwargs: Any) -> Any:
        """Run a query through the database's breaker; a value of its first row."""
        return await _run(self, super().fetchval, args, kwargs)  # type: ignore[misc]

    async def fetchrow(self, *args: Any, **kwargs: Any) -> Any:
        """Run a query through the database's breaker; its first row."""
        return await _run(self, super().fetchrow, args, kwargs)  # type: ignore[misc]

    async def fetchmany(self, *args: Any, **kwargs: Any) -> Any:
        """Run a query for each set of arguments through the database's breaker; the rows."""
        return await _run(self, super().fetchmany, args, kwargs)  # type: ignore[misc]

    async def reset(self, *args: Any, **kwargs: Any) -> Any:
        """A pool's housekeeping on release: its queries bypass the breaker (an open
        circuit must not turn handing a connection back into an error).
        """
        with passing_through():
            return await super().reset(*args, **kwargs)  # type: ignore[misc]


_classes = Subclasses(_Connection)


async def _connect(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    name = _name(args, kwargs) if should_wrap() else None
    if name is None:
        return await wrapped(*args, **kwargs)
    from asyncpg.connection import Connection  # type: ignore[import-untyped] # noqa: PLC0415

    chosen = kwargs.get("connection_class", Connection)
    if isinstance(chosen, type) and issubclass(chosen, Connection):
        kwargs = {**kwargs, "connection_class": _classes.get(chosen) or chosen}
    connection = await acall_inside(_DRIVER.connect_guard(name), None, wrapped, args, kwargs)
    _connections.remember(connection, name)
    return connection


class AsyncpgInstrumentor(BaseInstrumentor):  # type: ignore[misc] # untyped base
    """Breakers and retries for asyncpg (``asyncpg.connect`` and ``Connection``'s queries)."""

    def instrumentation_dependencies(self) -> Collection[str]:
        """The asyncpg versions this patches."""
        return ("asyncpg >= 0.27",)

    def _instrument(self, **kwargs: Any) -> None:
        import asyncpg  # type: ignore[import-untyped] # noqa: PLC0415
        import asyncpg.connection  # noqa: PLC0415

        _patches.wrap(asyncpg, "connect", _connect)
        _patches.wrap(asyncpg.connection, "connect", _connect)
        _connections.active = True

    def _uninstrument(self, **kwargs: Any) -> None:
        _connections.active = False
        _patches.restore()
        _connections.clear()
