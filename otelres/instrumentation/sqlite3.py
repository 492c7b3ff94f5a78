"""sqlite3: a breaker and retries per database file around ``sqlite3.connect``
and the statements of the connections it returns.

``sqlite3.Connection`` and ``sqlite3.Cursor`` are C types whose methods cannot
be patched, so the patched ``connect`` returns a wrapt proxy of the connection
(``isinstance(conn, sqlite3.Connection)`` still holds) whose ``execute``,
``executemany``, ``executescript`` and ``cursor()`` (a proxy too) go through
the breaker of ``sqlite:///<absolute path>`` (``sqlite:///:memory:`` for an
in-memory or temporary database). The cursor that ``conn.execute()`` returns
is sqlite3's own.

- Breaker failures: a busy or locked database, I/O errors, a full disk, a
  file that cannot be opened, a corrupt file. SQL errors (syntax, a missing
  table, a constraint: ``IntegrityError``, ``ProgrammingError``) are the
  caller's and count as successes.
- Retried: ``connect`` on those errors (nothing was sent yet); a statement
  that found the database locked, only when the connection was not in a
  transaction when it started (never a statement inside a transaction:
  suppressed as ``in_transaction``). The transaction that sqlite3 began
  implicitly for such a statement is rolled back when it finds the database
  locked, so that no lock is held while the retry waits and the retry starts
  where the call started (the caller who gets the error finds no transaction
  open either). ``executescript`` is never retried (a script may have run in
  part), nor ``executemany`` in autocommit mode or over an iterator
  (``not_idempotent``, ``not_replayable``).
- A call rejected by an open circuit raises :data:`CircuitOpenError`, an
  :class:`otelres.CircuitOpenError` that is also ``sqlite3.OperationalError``:
  the application's ``except sqlite3.OperationalError`` catches it.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from wrapt import ObjectProxy

from otelres._registry import default_registry

from ._common import Patches, call_inside, ensure_telemetry, should_wrap
from ._rejections import module_getattr
from ._stores import store_profile

__all__ = ["Sqlite3Instrumentor", "breaker_name"]

if TYPE_CHECKING:
    from otelres._config import Settings
    from otelres._flow import Guard
    from otelres._registry import Registry

    _Proxy = ObjectProxy[Any]
else:  # wrapt 1 proxies are not generic at run time
    _Proxy = ObjectProxy

MEMORY = "sqlite:///:memory:"

# SQLite's primary result codes (the low byte of an extended code).
_BUSY = 5
_LOCKED = 6
_NOMEM = 7
_IOERR = 10
_CORRUPT = 11
_FULL = 13
_CANTOPEN = 14
_PROTOCOL = 15
_NOTADB = 26
_FAILURES = frozenset({_BUSY, _LOCKED, _NOMEM, _IOERR, _CORRUPT, _FULL, _CANTOPEN, _PROTOCOL, _NOTADB})
#: What connecting may retry: every failure but a file that is not a database or is full.
_CONNECT_RETRIES = frozenset({_BUSY, _LOCKED, _NOMEM, _IOERR, _CANTOPEN, _PROTOCOL})
_STATEMENT_RETRIES = frozenset({_BUSY, _LOCKED})
#: Python 3.10 has no ``sqlite_errorcode``: SQLite's messages for the same codes.
_MESSAGES = {
    "database is locked": _BUSY,
    "database table is locked": _LOCKED,
    "out of memory": _NOMEM,
    "disk i/o error": _IOERR,
    "database disk image is malformed": _CORRUPT,
    "database or disk is full": _FULL,
    "unable to open database file": _CANTOPEN,
    "locking protocol": _PROTOCOL,
    "file is not a database": _NOTADB,
}


def _code(exc: BaseException) -> int | None:
    """SQLite's primary result code of a sqlite3 error, or None."""
    import sqlite3  # noqa: PLC0415 - stdlib, but imported only once in use

    if not isinstance(exc, sqlite3.Error):
        return None
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF
    return _MESSAGES.get(str(exc).lower())  # pragma: no cover - Python 3.10


def _is_failure(exc: BaseException) -> bool:
    return _code(exc) in _FAILURES


def _reason(exc: BaseException | None, result: object) -> str:
    return "locked" if exc is not None and _code(exc) in _STATEMENT_RETRIES else "connect"


_CONNECT = store_profile(
    "sqlite.connect",
    library="sqlite3",
    is_failure=_is_failure,
    is_retryable=lambda exc: _code(exc) in _CONNECT_RETRIES,
    reason=_reason,
)
_STATEMENT = store_profile(
    "sqlite.statement",
    library="sqlite3",
    is_failure=_is_failure,
    is_retryable=lambda exc: _code(exc) in _STATEMENT_RETRIES,
    reason=_reason,
)
_patches = Patches()


#: ``CircuitOpenError``: what a sqlite3 call rejected by an open circuit raises, an
#: :class:`otelres.CircuitOpenError` that is also ``sqlite3.OperationalError``.
__getattr__ = module_getattr("sqlite3", __name__)


def breaker_name(database: object, uri: bool = False) -> str:
    """``sqlite:///`` and the database's absolute path, or ``sqlite:///:memory:``."""
    path = os.fsdecode(database)  # type: ignore[arg-type] # str, bytes or a path, as sqlite3 takes
    if uri and path.startswith("file:"):
        path, _, query = path[len("file:") :].partition("?")
        if "mode=memory" in query.split("&"):
            return MEMORY
        if path.startswith("//"):  # file://host/path: the host is empty or localhost
            path = "/" + path[2:].partition("/")[2]
        path = unquote(path)
    if path in ("", ":memory:"):
        return MEMORY
    return "sqlite://" + os.path.abspath(path)  # noqa: PTH100 - no I/O, unlike Path.resolve


def _attempt(conn: Any, method: Any, *args: Any, **kwargs: Any) -> Any:
    """One attempt of a statement that began outside a transaction. When it finds
    the database locked, the transaction that sqlite3 began for it (nothing of
    the caller's is in it) is rolled back at once: no lock is held while the
    retry waits, and the retry starts where the call started.
    """
    try:
        return method(*args, **kwargs)
    except Exception as exc:
        if conn.in_transaction and _code(exc) in _STATEMENT_RETRIES:
            conn.rollback()
        raise


class _Database:
    """What the statements of one connection (and its cursors) share: the breaker
    name, and its statement guard for the registry and settings it came from.
    """

    __slots__ = ("_guard", "_registry", "_settings", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._registry: Registry | None = None
        self._settings: Settings | None = None
        self._guard: Guard | None = None

    def guard(self) -> Guard:
        """The statement guard of :attr:`name`: the registry's current one."""
        registry = default_registry()
        guard = self._guard
        if guard is None or self._registry is not registry or not registry.fresh(guard, self._settings):
            settings = registry.settings  # read first: a guard made under newer ones is renewed next time
            self._guard = guard = registry.guard(self.name, _STATEMENT)
            self._registry, self._settings = registry, settings
        return guard


def _statement(
    conn: Any, database: _Database, kind: str, method: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Run ``method`` (a statement of ``conn``) through the breaker of ``database``."""
    if not should_wrap():
        return method(*args, **kwargs)
    guard = database.guard()
    reason: str | None = None
    if conn.in_transaction:
        reason = "in_transaction"
    elif kind == "executescript":
        reason = "not_idempotent"
    elif kind == "executemany":
        rows = args[1] if len(args) > 1 else next(iter(kwargs.values()), None)
        if not isinstance(rows, Sequence):
            reason = "not_replayable"
        elif conn.isolation_level is None or getattr(conn, "autocommit", None) is True:
            reason = "not_idempotent"  # each row commits on its own: a retry would repeat some
    if reason is None:  # retried: each attempt rolls back what sqlite3 began for it
        method, args = _attempt, (conn, method, *args)
    return call_inside(guard, reason, method, args, kwargs)


def _unwrapped(obj: Any) -> Any:
    """The connection under any proxies (``type()`` is not fooled by a proxy)."""
    import sqlite3  # noqa: PLC0415

    while not isinstance(type(obj), type) or not issubclass(type(obj), sqlite3.Connection):
        inner = getattr(obj, "__wrapped__", None)
        if inner is None:
            return obj
        obj = inner
    return obj


class _Cursor(_Proxy):
    """A sqlite3 cursor whose statements go through the breaker."""

    def __init__(self, cursor: Any, conn: Any, database: _Database) -> None:
        super().__init__(cursor)
        self._self_conn = conn
        self._self_database = database

    def _run(self, kind: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        cursor = self.__wrapped__
        result = _statement(self._self_conn, self._self_database, kind, getattr(cursor, kind), args, kwargs)
        return self if result is cursor else result

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        """``Cursor.execute`` through the breaker."""
        return self._run("execute", args, kwargs)

    def executemany(self, *args: Any, **kwargs: Any) -> Any:
        """``Cursor.executemany`` through the breaker."""
        return self._run("executemany", args, kwargs)

    def executescript(self, *args: Any, **kwargs: Any) -> Any:
        """``Cursor.executescript`` through the breaker (never retried)."""
        return self._run("executescript", args, kwargs)


class _Connection(_Proxy):
    """A sqlite3 connection whose statements and cursors go through the breaker."""

    def __init__(self, conn: Any, name: str) -> None:
        super().__init__(conn)
        self._self_database = _Database(name)

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        """``Connection.execute`` through the breaker."""
        conn = self.__wrapped__
        return _statement(conn, self._self_database, "execute", conn.execute, args, kwargs)

    def executemany(self, *args: Any, **kwargs: Any) -> Any:
        """``Connection.executemany`` through the breaker."""
        conn = self.__wrapped__
        return _statement(conn, self._self_database, "executemany", conn.executemany, args, kwargs)

    def executescript(self, *args: Any, **kwargs: Any) -> Any:
        """``Connection.executescript`` through the breaker (never retried)."""
        conn = self.__wrapped__
        return _statement(conn, self._self_database, "executescript", conn.executescript, args, kwargs)

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        """A cursor whose statements go through the breaker."""
        conn = self.__wrapped__
        return _Cursor(conn.cursor(*args, **kwargs), conn, self._self_database)

    def backup(self, target: Any, *args: Any, **kwargs: Any) -> Any:
        """``Connection.backup``, which wants the real connection as its target."""
        return self.__wrapped__.backup(_unwrapped(target), *args, **kwargs)

    def __enter__(self) -> Any:
        # ``with sqlite3.connect(...) as conn`` must bind the proxy, not the connection.
        self.__wrapped__.__enter__()
        return self


def _connect(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if not should_wrap():
        return wrapped(*args, **kwargs)
    database = args[0] if args else kwargs.get("database")
    uri = kwargs.get("uri", args[7] if len(args) > 7 else False)
    try:
        name = breaker_name(database, bool(uri))
    except TypeError:  # not a path: sqlite3 says what is wrong
        return wrapped(*args, **kwargs)
    conn = call_inside(default_registry().guard(name, _CONNECT), None, wrapped, args, kwargs)
    return _Connection(conn, name)


class Sqlite3Instrumentor(BaseInstrumentor):  # type: ignore[misc] # untyped base
    """Breakers and retries for sqlite3 (``sqlite3.connect`` and its connections)."""

    def instrumentation_dependencies(self) -> Collection[str]:
        """Nothing to check: sqlite3 is in the standard library."""
        return ()

    def _instrument(self, **kwargs: Any) -> None:
        ensure_telemetry()
        _patches.wrap_named("sqlite3", "connect", _connect)
        _patches.wrap_named("sqlite3.dbapi2", "connect", _connect)

    def _uninstrument(self, **kwargs: Any) -> None:
        _patches.restore()
