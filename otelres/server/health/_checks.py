"""Built-in readiness checks: a DB-API ``SELECT 1``, PostgreSQL (psycopg or
asyncpg), Redis ``PING`` and an HTTP ``GET``.

Each returns a check for :meth:`Readiness.add <otelres.health.Readiness.add>`;
the drivers are imported when the check first runs, never at import.
"""

from __future__ import annotations

import importlib
import importlib.util
import urllib.error
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ["UnexpectedStatusError", "http_check", "postgres_check", "redis_check", "sql_check"]


def sql_check(connect: Callable[[], Any]) -> Callable[[], object]:
    """A check that connects with ``connect()`` (a DB-API connection), runs ``SELECT 1``
    and closes: ``sql_check(lambda: psycopg.connect(dsn))``.
    """

    def check() -> object:
        connection = connect()
        try:
            cursor = connection.cursor()
            try:
                cursor.execute("SELECT 1")
                return cursor.fetchone()
            finally:
                cursor.close()
        finally:
            connection.close()

    return check


def postgres_check(
    dsn: str, *, connect_timeout: float = 5.0
) -> Callable[[], Awaitable[object]] | Callable[[], object]:
    """A PostgreSQL check of ``dsn``: psycopg (sync) when installed, else asyncpg
    (async); the driver is imported when the check first runs.
    """
    if importlib.util.find_spec("psycopg") is not None:

        def connect() -> Any:
            psycopg = importlib.import_module("psycopg")
            # libpq counts whole seconds, and at least 2.
            return psycopg.connect(dsn, connect_timeout=max(2, round(connect_timeout)), autocommit=True)

        return sql_check(connect)
    if importlib.util.find_spec("asyncpg") is not None:

        async def check() -> object:
            asyncpg = importlib.import_module("asyncpg")
            connection = await asyncpg.connect(dsn, timeout=connect_timeout)
            try:
                return await connection.fetchval("SELECT 1")
            finally:
                await connection.close()

        return check
    raise ModuleNotFoundError("postgres_check needs psycopg or asyncpg (pip install psycopg)")


def redis_check(url: str, *, socket_timeout: float = 5.0) -> Callable[[], object]:
    """A Redis check: ``redis.Redis.from_url(url).ping()``, then close."""

    def check() -> object:
        redis = importlib.import_module("redis")
        client = redis.Redis.from_url(
            url, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout
        )
        try:
            return client.ping()
        finally:
            client.close()

    return check


class UnexpectedStatusError(Exception):
    """An HTTP check got a status outside the expected range."""


def http_check(url: str, *, expect: range = range(200, 400), timeout: float = 5.0) -> Callable[[], object]:
    """A check that GETs ``url`` (urllib, redirects followed) and fails unless the
    status is in ``expect``.
    """
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in {"http", "https"}:
        raise ValueError(f"http_check needs an http or https URL, not a {scheme!r} one")

    def check() -> object:
        request = urllib.request.Request(url, method="GET")  # noqa: S310 - the scheme is checked above
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
                status = int(response.status)
        except urllib.error.HTTPError as exc:
            status = int(exc.code)
            exc.close()
        if status not in expect:
            raise UnexpectedStatusError(f"HTTP status {status}")
        return status

    return check
