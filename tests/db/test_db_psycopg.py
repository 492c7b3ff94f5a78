"""The PostgreSQL driver contract for psycopg 3, sync and async."""

from __future__ import annotations

from typing import Any

import psycopg
import psycopg.errors
from db_contract import AsyncRunner, DbContract
from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor as OpenTelemetryPsycopg

from otelres.instrumentation.psycopg import PsycopgInstrumentor


class PsycopgDriver(DbContract):
    connection_errors = (psycopg.OperationalError,)
    rejected_as = (psycopg.OperationalError,)
    integration = "otelres.instrumentation.psycopg"
    division_by_zero = psycopg.errors.DivisionByZero
    unique_violation = psycopg.errors.UniqueViolation

    def patched(self) -> list[tuple[object, str]]:
        return [(psycopg, "connect"), (psycopg.Connection, "connect"), (psycopg.AsyncConnection, "connect")]

    def otelres_instrumentor(self) -> PsycopgInstrumentor:
        return PsycopgInstrumentor()

    def opentelemetry_instrumentor(self) -> OpenTelemetryPsycopg:
        return OpenTelemetryPsycopg()


class TestPsycopg(PsycopgDriver):
    """psycopg 3, sync: the contract."""

    def open(self, dsn: str | None, params: dict[str, Any]) -> Any:
        return psycopg.connect(dsn or "", autocommit=True, **params)

    def execute(self, conn: Any, sql: str) -> None:
        conn.execute(sql)

    def fetchval(self, conn: Any, sql: str) -> Any:
        row = conn.execute(sql).fetchone()
        return row[0] if row else None

    def close(self, conn: Any) -> None:
        conn.close()


class TestAsyncPsycopg(AsyncRunner, PsycopgDriver):
    """psycopg 3, async: the contract."""

    def open(self, dsn: str | None, params: dict[str, Any]) -> Any:
        return self.run(psycopg.AsyncConnection.connect(dsn or "", autocommit=True, **params))

    def execute(self, conn: Any, sql: str) -> None:
        self.run(conn.execute(sql))

    def fetchval(self, conn: Any, sql: str) -> Any:
        async def go() -> Any:
            cur = await conn.execute(sql)
            row = await cur.fetchone()
            return row[0] if row else None

        return self.run(go())

    def close(self, conn: Any) -> None:
        self.run(conn.close())
