"""Breaker names and failure classification shared by the PostgreSQL integrations (no server)."""

from __future__ import annotations

import asyncio

import asyncpg
import psycopg
import psycopg.errors
import psycopg2
import psycopg2.errors
import pytest

from otelres.instrumentation import asyncpg as otelres_asyncpg
from otelres.instrumentation import psycopg as otelres_psycopg
from otelres.instrumentation import psycopg2 as otelres_psycopg2
from otelres.instrumentation._postgres import (
    is_connection_error,
    name_from_params,
    name_from_url,
    retry_reason,
)

NO_ENV: dict[str, str] = {}


@pytest.mark.parametrize(
    ("conninfo", "kwargs", "expected"),
    [
        ("postgresql://bob:s3cret@db.example.com:6432/app", {}, "postgresql://db.example.com:6432/app"),
        (
            "host=db.example.com dbname=app user=bob password=s3cret",
            {},
            "postgresql://db.example.com:5432/app",
        ),
        ("postgresql://DB.Example.COM/app", {}, "postgresql://db.example.com:5432/app"),
        ("postgresql://h/app", {"host": "other", "port": 7}, "postgresql://other:7/app"),
        ("", {"host": "::1", "dbname": "app"}, "postgresql://[::1]:5432/app"),
        ("postgresql://[::1]:6000/app", {}, "postgresql://[::1]:6000/app"),
        (
            "",
            {"host": "/var/run/postgresql", "dbname": "app"},
            "postgresql://%2Fvar%2Frun%2Fpostgresql:5432/app",
        ),
        ("postgresql://%2Ftmp%2Fpg:7000/app", {}, "postgresql://%2Ftmp%2Fpg:7000/app"),
        ("host=a,b port=5433,5434 dbname=app", {}, "postgresql://a:5433,b:5434/app"),
        ("host=a,b port=5433 dbname=app", {}, "postgresql://a:5433,b:5433/app"),
        ("hostaddr=10.0.0.1 dbname=app", {}, "postgresql://10.0.0.1:5432/app"),
        ("host=h user=alice", {}, "postgresql://h:5432/alice"),
    ],
)
def test_psycopg_names(conninfo: str, kwargs: dict[str, object], expected: str) -> None:
    """psycopg's conninfo and keywords name host, port and database: never the user or the password."""
    assert otelres_psycopg._name((conninfo,), kwargs) == expected


@pytest.mark.parametrize(
    ("args", "kwargs", "expected"),
    [
        (("postgresql://bob:s3cret@h:6432/app",), {}, "postgresql://h:6432/app"),
        (("dbname=app host=h password=s3cret",), {"port": 7}, "postgresql://h:7/app"),
        ((), {"host": "h", "database": "app", "user": "bob", "password": "x"}, "postgresql://h:5432/app"),
        (
            ("host=h dbname=app",),
            {"cursor_factory": None, "connection_factory": None},
            "postgresql://h:5432/app",
        ),
    ],
)
def test_psycopg2_names(args: tuple[str, ...], kwargs: dict[str, object], expected: str) -> None:
    """psycopg2's DSN and keywords (``database`` too) name host, port and database."""
    params = dict(zip(("dsn", "connection_factory", "cursor_factory"), args, strict=False)) | kwargs
    assert otelres_psycopg2._name(params) == expected


@pytest.mark.parametrize(
    ("args", "kwargs", "expected"),
    [
        (("postgres://bob:s3cret@h:6432/app",), {}, "postgresql://h:6432/app"),
        (("postgresql://bob@h1:5433,h2/app",), {}, "postgresql://h1:5433,h2:5432/app"),
        (("postgresql:///app?host=/run/pg&port=6000",), {}, "postgresql://%2Frun%2Fpg:6000/app"),
        ((), {"host": ["a", "b"], "port": [1, 2], "database": "app"}, "postgresql://a:1,b:2/app"),
        (("postgresql://h/app",), {"port": 7, "database": "other"}, "postgresql://h:7/other"),
        ((), {"host": "h", "user": "bob", "password": "s3cret"}, "postgresql://h:5432/bob"),
    ],
)
def test_asyncpg_names(args: tuple[str, ...], kwargs: dict[str, object], expected: str) -> None:
    """asyncpg's URL and keywords (lists of hosts and ports too) name host, port and database."""
    assert otelres_asyncpg._name(args, kwargs) == expected


def test_environment_fills_the_gaps() -> None:
    """What the arguments leave out comes from PGHOST, PGPORT, PGDATABASE, then PGUSER."""
    env = {"PGHOST": "envhost", "PGPORT": "6543", "PGDATABASE": "envdb"}
    assert name_from_params({}, env) == "postgresql://envhost:6543/envdb"
    assert name_from_params({"host": "h"}, env) == "postgresql://h:6543/envdb"
    assert name_from_params({}, {"PGUSER": "carol"}) == "postgresql://localhost:5432/carol"
    assert name_from_url(None, env=env) == "postgresql://envhost:6543/envdb"


def test_unparsable_conninfo_passes_through() -> None:
    """A conninfo the driver cannot parse names nothing: the call goes to the driver, which reports it."""
    assert otelres_psycopg._name(("host=h bogus_key=1",), {}) is None
    assert otelres_psycopg2._name({"dsn": "host=h bogus_key=1"}) is None


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ConnectionRefusedError(111, "refused"), True),
        (TimeoutError(), True),
        (asyncio.TimeoutError(), True),
        (psycopg.OperationalError("connection failed"), True),
        (psycopg.errors.AdminShutdown(), True),
        (psycopg.errors.TooManyConnections(), True),
        (psycopg.errors.SerializationFailure(), False),
        (psycopg.errors.LockNotAvailable(), False),
        (psycopg.errors.UniqueViolation(), False),
        (psycopg.errors.SyntaxError(), False),
        (psycopg.InterfaceError("misuse"), False),
        (psycopg2.OperationalError("server closed the connection unexpectedly"), True),
        (psycopg2.InterfaceError("connection already closed"), False),
        (psycopg2.errors.UniqueViolation(), False),
        (asyncpg.ConnectionDoesNotExistError("closed in the middle"), True),
        (asyncpg.TooManyConnectionsError(), True),
        (asyncpg.CannotConnectNowError(), True),
        (asyncpg.InvalidPasswordError(), False),
        (asyncpg.InvalidCatalogNameError(), False),
        (asyncpg.UniqueViolationError(), False),
        (asyncpg.InterfaceError("another operation is in progress"), False),
        (ValueError("not a database error"), False),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_connection_class_errors(error: BaseException, expected: bool) -> None:
    """Connection-class errors are breaker failures (and retried when connecting); SQL errors are not."""
    assert is_connection_error(error) is expected


def test_retry_reasons() -> None:
    """Timeouts are labelled ``timeout``, every other connection failure ``connect``."""
    assert retry_reason(TimeoutError(), None) == "timeout"
    assert retry_reason(psycopg.errors.ConnectionTimeout(), None) == "timeout"
    assert retry_reason(ConnectionRefusedError(), None) == "connect"
    assert retry_reason(psycopg.OperationalError("refused"), None) == "connect"
