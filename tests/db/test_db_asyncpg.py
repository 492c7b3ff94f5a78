"""The PostgreSQL driver contract for asyncpg."""

from __future__ import annotations

from typing import Any

import asyncpg
import asyncpg.connection
from db_contract import AsyncRunner, DbContract
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor as OpenTelemetryAsyncpg

from otelres.instrumentation.asyncpg import AsyncpgInstrumentor


class TestAsyncpg(AsyncRunner, DbContract):
    """asyncpg: the contract."""

    connection_errors = (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError)
    # A query on a connection the server dropped raises ConnectionDoesNotExistError (a
    # PostgresConnectionError); a connect nobody answers raises an OSError: a rejection is both.
    rejected_as = (
        asyncpg.PostgresConnectionError,
        asyncpg.exceptions.ConnectionDoesNotExistError,
        ConnectionError,
    )
    integration = "otelres.instrumentation.asyncpg"
    division_by_zero = asyncpg.DivisionByZeroError
    unique_violation = asyncpg.UniqueViolationError

    def open(self, dsn: str | None, params: dict[str, Any]) -> Any:
        if "dbname" in params:
            params["database"] = params.pop("dbname")
        return self.run(asyncpg.connect(dsn, **params))

    def execute(self, conn: Any, sql: str) -> None:
        self.run(conn.execute(sql))

    def fetchval(self, conn: Any, sql: str) -> Any:
        return self.run(conn.fetchval(sql))

    def close(self, conn: Any) -> None:
        self.run(conn.close())

    def patched(self) -> list[tuple[object, str]]:
        return [(asyncpg, "connect"), (asyncpg.connection, "connect")]

    def otelres_instrumentor(self) -> AsyncpgInstrumentor:
        return AsyncpgInstrumentor()

    def opentelemetry_instrumentor(self) -> OpenTelemetryAsyncpg:
        return OpenTelemetryAsyncpg()
