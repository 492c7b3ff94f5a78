"""PostgreSQL semantics shared by the psycopg, psycopg2 and asyncpg integrations.

- One breaker per ``postgresql://host:port/database``: never a user or a
  password. A Unix-socket directory is percent-encoded as libpq's URIs write it
  (``postgresql://%2Fvar%2Frun%2Fpostgresql:5432/app``); several hosts are
  listed (``postgresql://db1:5432,db2:5432/app``); what the arguments leave out
  comes from ``PGHOST``, ``PGPORT``, ``PGDATABASE`` and ``PGUSER`` as for the
  drivers, else ``localhost``, 5432 and the user's name (the server's default
  database).
- Retried: connection establishment only. A statement is never retried (the
  server may have run it, and it may sit inside a transaction): it makes one
  attempt, through the breaker, so that an open circuit fails it fast without
  touching the server.
- Breaker failures, and the errors a connection attempt is retried on:
  connection-class errors (SQLSTATE classes 08, 53, 57, 58 and XX, the
  drivers' ``OperationalError`` without a SQLSTATE of another class, socket
  errors and timeouts, asyncpg's closed-connection errors). SQL errors (syntax,
  constraints, serialization failures) are the caller's: they count as
  successes, are not retried, and no fallback hides them. libpq gives no
  SQLSTATE for a refused login, so with psycopg and psycopg2 a wrong password
  or a missing database is an ``OperationalError`` like a refused connection
  (retried, counted); asyncpg's ``InvalidPasswordError`` and
  ``InvalidCatalogNameError`` are the caller's.
- A call rejected by an open circuit raises the driver's own connection error
  too (``psycopg.OperationalError``, ``psycopg2.OperationalError``, asyncpg's
  ``ConnectionDoesNotExistError`` and ``ConnectionError``): each driver's guards
  come from its :class:`Driver`.
- A statement on a connection that is already closed passes straight through:
  the driver fails it without a word to the server (the one kind of error
  raised before a statement is sent that retrying on the same connection could
  not cure), so it says nothing about the server's health.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import getpass
import os
import sys
import threading
import weakref
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit

from otelres import _fork
from otelres._registry import Profile, default_registry

from ._rejections import with_rejection

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from otelres._config import Settings, Target
    from otelres._flow import Guard
    from otelres._registry import Registry


__all__ = [
    "CONNECT",
    "DEFAULT_PORT",
    "STATEMENT",
    "SYSTEM",
    "Connections",
    "Driver",
    "Subclasses",
    "breaker_name",
    "is_connection_error",
    "name_from_params",
    "name_from_url",
    "retry_reason",
]

SYSTEM = "postgresql"
DEFAULT_PORT = 5432

#: SQLSTATE classes that say the server (or the way to it) is unwell, not the caller's SQL:
#: connection exception, insufficient resources (too many connections, disk full), operator
#: intervention (shutdown, cannot connect now, query cancelled by a timeout), system error,
#: internal error.
_FAILURE_CLASSES = frozenset({"08", "53", "57", "58", "XX"})


# -- names --------------------------------------------------------------------------------


def _host_part(host: str) -> str:
    """One host as it appears in a breaker name."""
    if host.startswith(("/", "@")):
        return quote(host, safe="")  # a Unix-socket directory, as libpq's URIs write it
    if ":" in host:
        return f"[{host.lower()}]"
    return host.lower()


def breaker_name(hosts: list[str], ports: list[str], dbname: str) -> str:
    """``postgresql://host:port[,host:port...]/dbname`` for the hosts and ports of a connection.

    ``ports`` holds one port for every host, or one for all of them (libpq's
    rule); an empty port is the default one.
    """
    if not hosts:
        hosts = ["localhost"]
    if len(ports) != len(hosts):
        ports = [ports[0] if ports else ""] * len(hosts)
    pairs = ",".join(
        f"{_host_part(host or 'localhost')}:{port.strip() or DEFAULT_PORT}"
        for host, port in zip(hosts, ports, strict=True)
    )
    return f"{SYSTEM}://{pairs}/{dbname}"


def _user_name() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no user name in a bare container
        return "postgres"


def name_from_params(params: Mapping[str, Any], env: Mapping[str, str] | None = None) -> str:
    """The breaker name of libpq-style connection parameters (``host``, ``hostaddr``,
    ``port``, ``dbname``, ``user``), with the ``PG*`` environment filling the gaps.
    """
    env = os.environ if env is None else env

    def get(key: str, var: str) -> str:
        value = params.get(key)
        if value is None or value == "":
            return env.get(var, "")
        return str(value)

    host = get("host", "PGHOST") or get("hostaddr", "PGHOSTADDR")
    port = get("port", "PGPORT")
    dbname = get("dbname", "PGDATABASE") or get("user", "PGUSER") or _user_name()
    return breaker_name(host.split(",") if host else [], port.split(",") if port else [], dbname)


def _split_netloc(netloc: str) -> tuple[list[str], list[str]]:
    """``u:p@h1:5,[::1]:6,h3`` -> (hosts, ports), the hosts percent-decoded."""
    hostlist = netloc.rpartition("@")[2]
    hosts: list[str] = []
    ports: list[str] = []
    for item in hostlist.split(","):
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else ""
        else:
            host, _, port = item.partition(":")
        hosts.append(unquote(host))
        ports.append(port)
    return hosts, ports


def name_from_url(
    dsn: str | None,
    *,
    host: Any = None,
    port: Any = None,
    database: str | None = None,
    user: str | None = None,
    env: Mapping[str, str] | None = None,
) -> str:
    """The breaker name of asyncpg's arguments: a ``postgresql://`` URL and keyword
    arguments that win over it (``host`` and ``port`` may be lists).
    """
    params: dict[str, Any] = {}
    if dsn:
        parts = urlsplit(dsn)
        hosts, ports = _split_netloc(parts.netloc)
        if any(hosts):
            params["host"] = ",".join(hosts)
        if any(ports):
            params["port"] = ",".join(ports)
        if parts.username:
            params["user"] = unquote(parts.username)
        path = unquote(parts.path.lstrip("/"))
        if path:
            params["dbname"] = path
        for item in parts.query.split("&"):
            key, _, value = item.partition("=")
            key = {"database": "dbname"}.get(key, key)
            if key in ("host", "port", "dbname", "user") and value:
                params[key] = unquote(value)
    if host is not None:
        params["host"] = host if isinstance(host, str) else ",".join(str(h) for h in host)
    if port is not None:
        params["port"] = str(port) if isinstance(port, (str, int)) else ",".join(str(p) for p in port)
    if database is not None:
        params["dbname"] = database
    if user is not None:
        params["user"] = user
    return name_from_params(params, env)


# -- what counts as a failure ------------------------------------------------------------------


def _sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE an error carries (psycopg and asyncpg: ``sqlstate``; psycopg2: ``pgcode``)."""
    state = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    return state if isinstance(state, str) and len(state) == 5 else None


def _operational(exc: BaseException) -> bool:
    """Whether a driver already imported classes ``exc`` as connection-class."""
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None and isinstance(exc, psycopg.OperationalError):
        return True
    psycopg2 = sys.modules.get("psycopg2")
    if psycopg2 is not None and isinstance(exc, psycopg2.OperationalError):
        return True
    asyncpg = sys.modules.get("asyncpg")
    # asyncpg's errors with a SQLSTATE were judged by it; these carry none.
    return asyncpg is not None and isinstance(
        exc, (asyncpg.exceptions.ConnectionDoesNotExistError, asyncpg.exceptions.ConnectionFailureError)
    )


def is_connection_error(exc: BaseException) -> bool:
    """True for errors that say the server is unreachable or unwell (breaker failures,
    retried when connecting); False for the caller's SQL errors.

    One predicate for the three drivers: two of them may share a breaker name.
    """
    if isinstance(exc, (OSError, asyncio.TimeoutError)):  # refused, reset, unreachable, timed out
        return True
    state = _sqlstate(exc)
    if state is not None:
        return state[:2] in _FAILURE_CLASSES
    return _operational(exc)


def retry_reason(exc: BaseException | None, result: object) -> str:
    """The ``otelres.retry.reason`` of a retried connection attempt."""
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return "timeout"
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None and isinstance(exc, psycopg.errors.ConnectionTimeout):
        return "timeout"
    return "connect"


# -- how a PostgreSQL call is judged and retried -------------------------------------------------


def _connect_retry(target: Target) -> dict[str, Any]:
    return {"retry_on": is_connection_error, "reason": retry_reason}


def _statement_retry(target: Target) -> dict[str, Any]:
    # A statement is never repeated: the server may have run it, inside a transaction.
    return {**_connect_retry(target), "attempts": 1}


#: Connecting: retried on connection-class errors. One predicate for the three drivers
#: (two of them may share a breaker name).
CONNECT = Profile("postgresql.connect", failure_on=is_connection_error, retry=_connect_retry)
#: A statement: one attempt through the same breaker.
STATEMENT = Profile("postgresql.statement", failure_on=is_connection_error, retry=_statement_retry)


@dataclasses.dataclass(frozen=True)
class Driver:
    """The guards of one driver's calls: :data:`CONNECT` and :data:`STATEMENT`,
    whose rejections raise the driver's own error class (see
    :mod:`otelres.instrumentation._rejections`); the breaker of a database is
    one, whichever driver names it.
    """

    connect: Profile
    statement: Profile

    @classmethod
    def named(cls, library: str) -> Driver:
        """The profiles of the driver ``library`` (``psycopg``, ``psycopg2``, ``asyncpg``)."""
        return cls(with_rejection(CONNECT, library), with_rejection(STATEMENT, library))

    def connect_guard(self, name: str) -> Guard:
        """What connection attempts to the database ``name`` go through."""
        return default_registry().guard(name, self.connect)


class _ConnectionRecord:
    """What the statements of one connection share: its database's breaker name,
    and that name's statement guard for the registry and settings it came from.
    """

    __slots__ = ("guard", "name", "ref", "registry", "settings")

    #: The statement guard of :attr:`name`, set by :meth:`Connections.guard` before it is read.
    guard: Guard

    def __init__(self, ref: Callable[[], Any], name: str) -> None:
        self.ref = ref  # the connection, weakly (its id is the key)
        self.name = name
        self.registry: Registry | None = None
        self.settings: Settings | None = None


class Connections:
    """The breaker name (and statement guard) of each live connection that came
    through a patched connect; an entry goes with its connection.

    ``statement``: the profile of the guard statements go through. :attr:`active`:
    True while the driver is instrumented (statements pass through otherwise).
    """

    def __init__(self, statement: Profile) -> None:
        self.statement = statement
        self.active = False
        self._records: dict[int, _ConnectionRecord] = {}

    def __len__(self) -> int:
        return len(self._records)

    def _forget(self, key: int, ref: weakref.ref[Any]) -> None:
        """A connection went: its entry goes too (unless a newer one took its place)."""
        record = self._records.get(key)
        if record is not None and record.ref is ref:
            self._records.pop(key, None)

    def remember(self, connection: object, name: str) -> _ConnectionRecord | None:
        """Note that ``connection`` goes to the database ``name``."""
        key = id(connection)
        try:
            ref = weakref.ref(connection, functools.partial(self._forget, key))
        except TypeError:  # not weakly referenceable (somebody's proxy)
            return None
        record = self._records[key] = _ConnectionRecord(ref, name)
        return record

    def _record(self, connection: object, live: Callable[[Any], str | None]) -> _ConnectionRecord | None:
        """The record of a connection made before otelres was on, named by ``live``
        from the connection itself (None: a driver's internals moved).
        """
        try:
            name = live(connection)
        except Exception:  # noqa: BLE001 - a driver's internals moved: leave the call alone
            return None
        if name is None:
            return None
        record = self.remember(connection, name)
        return _ConnectionRecord(_dead, name) if record is None else record  # a proxy: named on every call

    def guard(self, connection: object, live: Callable[[Any], str | None]) -> Guard | None:
        """The statement guard of ``connection``'s database, the registry's current
        one; for a connection made before otelres was on, of the database ``live``
        reads from the connection itself. None to leave its statements alone.
        """
        record = self._records.get(id(connection))
        if record is None or record.ref() is not connection:
            record = self._record(connection, live)
            if record is None:
                return None
        registry = default_registry()
        if record.registry is not registry or not registry.fresh(record.guard, record.settings):
            settings = registry.settings  # read first: a guard made under newer ones is renewed next time
            record.guard = registry.guard(record.name, self.statement)
            record.registry, record.settings = registry, settings
        return record.guard

    def clear(self) -> None:
        """Forget every connection (uninstrumented)."""
        self._records.clear()


def _dead() -> None:
    """In place of a weak reference to a connection that is not kept: never it."""


# -- patching -----------------------------------------------------------------------------------


class Subclasses:
    """A driver's classes (or the application's) with a mixin, made once per class.

    The mixin comes first in the MRO (its methods run before the class's own),
    or last when ``first`` is False (before only the driver's base, so it sees
    what the application's class decided). The cache is bounded: OpenTelemetry
    makes a cursor class per connection, so a full cache is emptied.
    """

    SIZE = 256

    def __init__(self, mixin: type, *, first: bool = True) -> None:
        self.mixin = mixin
        self._first = first
        self._made: dict[type, type] = {}
        self._lock = threading.Lock()
        _fork.renew(self, "_lock")

    def get(self, base: type) -> type | None:
        """``base`` with the mixin; ``base`` itself if it has it; None if the two cannot mix."""
        if issubclass(base, self.mixin):
            return base
        found = self._made.get(base)
        if found is None:
            bases = (self.mixin, base) if self._first else (base, self.mixin)
            namespace = {"__module__": base.__module__, "__qualname__": base.__qualname__}
            try:
                found = type(base.__name__, bases, namespace)
            except TypeError:  # incompatible layouts or MRO: leave the class alone
                return None
            with self._lock:
                if len(self._made) >= self.SIZE:
                    self._made.clear()
                self._made[base] = found
        return found
