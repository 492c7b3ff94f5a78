"""psycopg 3: a breaker and retries per database around ``psycopg.connect``,
``Connection.connect`` and ``AsyncConnection.connect``; statements (``execute``
and ``executemany``, so ``Connection.execute`` too) make one attempt through the
same breaker.

A connection made through the patched ``connect`` gets cursor classes that are
subclasses of the ones it had (its ``cursor_factory`` and
``server_cursor_factory``: psycopg's own, the application's, or the tracing
cursor of OpenTelemetry's psycopg instrumentation). Their methods run first, so
a statement's CLIENT span sits under otelres's call span whichever
instrumentation was installed first, and a statement rejected by an open
circuit makes no CLIENT span.

A call rejected by an open circuit raises :data:`CircuitOpenError`, an
:class:`otelres.CircuitOpenError` that is also ``psycopg.OperationalError``: the
application's ``except`` clauses for an unreachable server catch it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from ._common import Patches, acall_inside, call_inside, should_wrap
from ._postgres import Connections, Driver, Subclasses, name_from_params
from ._rejections import module_getattr

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Collection

    from otelres._flow import Guard


__all__ = ["PsycopgInstrumentor"]

#: ``connect`` keywords that are not connection parameters.
_CONNECT_OPTIONS = frozenset(
    {"conninfo", "autocommit", "prepare_threshold", "context", "row_factory", "cursor_factory"}
)

#: The PostgreSQL guards; a rejection raises :data:`CircuitOpenError`.
_DRIVER = Driver.named("psycopg")
_connections = Connections(_DRIVER.statement)
_patches = Patches()


#: ``CircuitOpenError``: what a psycopg call rejected by an open circuit raises, an
#: :class:`otelres.CircuitOpenError` that is also ``psycopg.OperationalError``.
__getattr__ = module_getattr("psycopg", __name__)


def _name(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """The breaker name of a connect call's conninfo and keywords; None if they do not parse."""
    from psycopg.conninfo import conninfo_to_dict  # noqa: PLC0415 - imported only once psycopg is in use

    conninfo = args[0] if args else kwargs.get("conninfo", "")
    params = {k: v for k, v in kwargs.items() if k not in _CONNECT_OPTIONS}
    try:
        return name_from_params(conninfo_to_dict(conninfo, **params))
    except Exception:  # noqa: BLE001 - a bad conninfo: psycopg itself will say what is wrong
        return None


def _live_name(connection: Any) -> str | None:
    info = connection.info
    return name_from_params({"host": info.host, "port": info.port, "dbname": info.dbname}, env={})


def _statement_guard(cursor: Any) -> Guard | None:
    """The guard a cursor's statement goes through; None to pass it through."""
    if not _connections.active or not should_wrap():
        return None
    connection = cursor.connection
    if connection.closed:
        return None  # psycopg fails the statement without a word to the server
    return _connections.guard(connection, _live_name)


def _run(cursor: Any, method: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run a cursor's statement through its database's breaker (a single attempt)."""
    if _connections.active and should_wrap():  # _statement_guard(), inline: a call less
        connection = cursor.connection
        # A closed connection: psycopg fails the statement without a word to the server.
        guard = None if connection.closed else _connections.guard(connection, _live_name)
        if guard is not None:
            return call_inside(guard, None, method, args, kwargs)
    return method(*args, **kwargs)


def _arun(
    cursor: Any, method: Callable[..., Awaitable[Any]], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Awaitable[Any]:
    """The async :func:`_run`: what to await (not a coroutine of its own: one frame less)."""
    guard = _statement_guard(cursor)
    if guard is None:
        return method(*args, **kwargs)
    return acall_inside(guard, None, method, args, kwargs)


class _Cursor:
    """Mixed into a connection's cursor classes."""

    __slots__ = ()

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        """Run a statement through the database's breaker."""
        return _run(self, super().execute, args, kwargs)  # type: ignore[misc] # a cursor's, by the MRO

    def executemany(self, *args: Any, **kwargs: Any) -> Any:
        """Run a statement for each set of parameters through the database's breaker."""
        return _run(self, super().executemany, args, kwargs)  # type: ignore[misc]


class _AsyncCursor:
    """Mixed into an async connection's cursor classes."""

    __slots__ = ()

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        """Run a statement through the database's breaker."""
        return await _arun(self, super().execute, args, kwargs)  # type: ignore[misc]

    async def executemany(self, *args: Any, **kwargs: Any) -> Any:
        """Run a statement for each set of parameters through the database's breaker."""
        return await _arun(self, super().executemany, args, kwargs)  # type: ignore[misc]


_cursors = Subclasses(_Cursor)
_async_cursors = Subclasses(_AsyncCursor)


def _adopt(connection: Any, name: str, cursors: Subclasses) -> None:
    """Give a new connection our cursor classes and note its database."""
    for attr in ("cursor_factory", "server_cursor_factory"):
        factory = getattr(connection, attr, None)
        if isinstance(factory, type):
            ours = cursors.get(factory)
            if ours is not None:
                setattr(connection, attr, ours)
    _connections.remember(connection, name)


def _connect(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    name = _name(args, kwargs) if should_wrap() else None
    if name is None:
        return wrapped(*args, **kwargs)
    connection = call_inside(_DRIVER.connect_guard(name), None, wrapped, args, kwargs)
    _adopt(connection, name, _cursors)
    return connection


async def _aconnect(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    name = _name(args, kwargs) if should_wrap() else None
    if name is None:
        return await wrapped(*args, **kwargs)
    connection = await acall_inside(_DRIVER.connect_guard(name), None, wrapped, args, kwargs)
    _adopt(connection, name, _async_cursors)
    return connection


class PsycopgInstrumentor(BaseInstrumentor):  # type: ignore[misc] # untyped base
    """Breakers and retries for psycopg 3 (sync and async)."""

    def instrumentation_dependencies(self) -> Collection[str]:
        """The psycopg versions this patches."""
        return ("psycopg >= 3.1",)

    def _instrument(self, **kwargs: Any) -> None:
        import psycopg  # noqa: PLC0415

        # ``psycopg.connect`` is ``Connection.connect`` bound at import: patched on its own.
        _patches.wrap(psycopg, "connect", _connect)
        _patches.wrap(psycopg.Connection, "connect", _connect)
        _patches.wrap(psycopg.AsyncConnection, "connect", _aconnect)
        _connections.active = True

    def _uninstrument(self, **kwargs: Any) -> None:
        _connections.active = False
        _patches.restore()
        _connections.clear()
