"""psycopg2: a breaker and retries per database around ``psycopg2.connect``;
statements (``execute``, ``executemany``, ``callproc``) make one attempt through
the same breaker.

psycopg2's connection and cursor are C types, which cannot be patched, and a
proxy around them breaks the C functions that check their argument's type
(``psycopg2.extras.register_*``, ``sql.Composable.as_string``). So the patched
``connect`` hands psycopg2 a subclass of the connection class asked for (the
default one, or the application's ``connection_factory``), whose ``cursor()``
makes every cursor an instance of a subclass of the cursor class it would have
made (the default, the connection's ``cursor_factory``, a ``DictConnection``'s
``DictCursor``, or the one passed to ``cursor()``). Both stay real psycopg2
objects, and ``isinstance`` still holds for the application's own classes.

OpenTelemetry's psycopg2 instrumentation also wraps ``psycopg2.connect`` and
sets a tracing ``cursor_factory``: whichever is installed first, each statement
gets its CLIENT span, and either can be removed first.

Asynchronous connections (``async_=True``) are passed through: their work
happens in ``poll()``, outside any call that could be retried or timed.

A call rejected by an open circuit raises :data:`CircuitOpenError`, an
:class:`otelres.CircuitOpenError` that is also ``psycopg2.OperationalError``: the
application's ``except`` clauses for an unreachable server catch it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from ._common import Patches, call_inside, should_wrap
from ._postgres import Connections, Driver, Subclasses, name_from_params
from ._rejections import module_getattr

if TYPE_CHECKING:
    from collections.abc import Callable, Collection


__all__ = ["Psycopg2Instrumentor"]

_CONNECT_ARGS = ("dsn", "connection_factory", "cursor_factory")
_CURSOR_ARGS = ("name", "cursor_factory", "withhold", "scrollable")
_NOT_PARAMS = frozenset({*_CONNECT_ARGS, "async", "async_"})

#: The PostgreSQL guards; a rejection raises :data:`CircuitOpenError`.
_DRIVER = Driver.named("psycopg2")
_connections = Connections(_DRIVER.statement)
_patches = Patches()


#: ``CircuitOpenError``: what a psycopg2 call rejected by an open circuit raises, an
#: :class:`otelres.CircuitOpenError` that is also ``psycopg2.OperationalError``.
__getattr__ = module_getattr("psycopg2", __name__)


def _name(params: dict[str, Any]) -> str | None:
    """The breaker name of a connect call's DSN and keywords; None if they do not parse."""
    from psycopg2.extensions import make_dsn, parse_dsn  # type: ignore[import-untyped] # noqa: PLC0415

    conn_params = {k: v for k, v in params.items() if k not in _NOT_PARAMS}
    try:
        return name_from_params(parse_dsn(make_dsn(params.get("dsn"), **conn_params)))
    except Exception:  # noqa: BLE001 - a bad DSN: psycopg2 itself will say what is wrong
        return None


def _live_name(connection: Any) -> str | None:
    info = connection.info
    return name_from_params({"host": info.host, "port": info.port, "dbname": info.dbname}, env={})


def _run(cursor: Any, method: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run a cursor's statement through its database's breaker (a single attempt)."""
    if not _connections.active or not should_wrap():
        return method(*args, **kwargs)
    connection = cursor.connection
    # A closed connection: psycopg2 fails the statement without a word to the server.
    guard = None if connection.closed else _connections.guard(connection, _live_name)
    if guard is None:
        return method(*args, **kwargs)
    return call_inside(guard, None, method, args, kwargs)


class _Cursor:
    """Mixed into the cursor class psycopg2 would have used."""

    __slots__ = ()

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        """Run a statement through the database's breaker."""
        return _run(self, super().execute, args, kwargs)  # type: ignore[misc] # a cursor's, by the MRO

    def executemany(self, *args: Any, **kwargs: Any) -> Any:
        """Run a statement for each set of parameters through the database's breaker."""
        return _run(self, super().executemany, args, kwargs)  # type: ignore[misc]

    def callproc(self, *args: Any, **kwargs: Any) -> Any:
        """Call a procedure through the database's breaker."""
        return _run(self, super().callproc, args, kwargs)  # type: ignore[misc]


_cursors = Subclasses(_Cursor)
_connection_classes: list[Subclasses] = []  # made when psycopg2 is first used


def _cursor_class(factory: Any) -> Any:
    """The cursor class to use instead of ``factory``."""
    from psycopg2.extensions import cursor  # noqa: PLC0415

    if not isinstance(factory, type) or not issubclass(factory, cursor):
        return factory
    return _cursors.get(factory) or factory


def _connections_of_ours() -> Subclasses:
    """Subclasses of connection classes whose ``cursor()`` makes our cursors.

    The mixin comes after the application's connection class in the MRO, so it
    sees the cursor factory that class chose.
    """
    if not _connection_classes:
        from psycopg2.extensions import connection, cursor  # noqa: PLC0415

        class Connection(connection):  # type: ignore[misc] # an untyped C base
            def cursor(self, *args: Any, **kwargs: Any) -> Any:
                params = dict(zip(_CURSOR_ARGS, args, strict=False)) | kwargs
                chosen = params.get("cursor_factory") or self.cursor_factory or cursor
                params["cursor_factory"] = _cursor_class(chosen)
                return super().cursor(**params)

        Connection.__module__ = connection.__module__
        Connection.__qualname__ = Connection.__name__ = "connection"
        _connection_classes.append(Subclasses(Connection, first=False))
    return _connection_classes[0]


def _connection_class(factory: Any) -> Any:
    """The connection class to hand ``psycopg2.connect``; ``factory`` itself if it cannot mix."""
    from psycopg2.extensions import connection  # noqa: PLC0415

    ours = _connections_of_ours()
    if factory is None or factory is connection:
        return ours.mixin
    if not isinstance(factory, type) or not issubclass(factory, connection):
        return factory  # a callable: psycopg2 accepts those too
    return ours.get(factory) or factory


def _connect(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if not should_wrap() or len(args) > len(_CONNECT_ARGS):
        return wrapped(*args, **kwargs)
    params = dict(zip(_CONNECT_ARGS, args, strict=False)) | kwargs
    if params.get("async") or params.get("async_"):
        return wrapped(*args, **kwargs)
    name = _name(params)
    if name is None:
        return wrapped(*args, **kwargs)
    params["connection_factory"] = _connection_class(params.get("connection_factory"))
    connection = call_inside(_DRIVER.connect_guard(name), None, wrapped, (), params)
    _connections.remember(connection, name)
    return connection


class Psycopg2Instrumentor(BaseInstrumentor):  # type: ignore[misc] # untyped base
    """Breakers and retries for psycopg2 (``psycopg2.connect`` and the statements of its connections)."""

    def instrumentation_dependencies(self) -> Collection[str]:
        """The psycopg2 versions this patches: psycopg2 or psycopg2-binary, whichever is installed."""
        from importlib.metadata import PackageNotFoundError, distribution  # noqa: PLC0415

        for dist in ("psycopg2", "psycopg2-binary"):
            try:
                distribution(dist)
            except PackageNotFoundError:
                continue
            return (f"{dist} >= 2.8",)
        return ("psycopg2 >= 2.8",)

    def _instrument(self, **kwargs: Any) -> None:
        import psycopg2  # type: ignore[import-untyped] # noqa: PLC0415

        _patches.wrap(psycopg2, "connect", _connect)
        _connections.active = True

    def _uninstrument(self, **kwargs: Any) -> None:
        _connections.active = False
        _patches.restore()
        _connections.clear()
