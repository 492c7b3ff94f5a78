"""The PostgreSQL driver contract for psycopg2."""

from __future__ import annotations

from typing import Any

import psycopg2
import psycopg2.errors
from db_contract import DbContract
from opentelemetry.instrumentation.psycopg2 import Psycopg2Instrumentor as OpenTelemetryPsycopg2

from otelres.instrumentation.psycopg2 import Psycopg2Instrumentor


class TestPsycopg2(DbContract):
    """psycopg2: the contract."""

    connection_errors = (psycopg2.OperationalError, psycopg2.InterfaceError)
    rejected_as = (psycopg2.OperationalError,)
    integration = "otelres.instrumentation.psycopg2"
    division_by_zero = psycopg2.errors.DivisionByZero
    unique_violation = psycopg2.errors.UniqueViolation

    def open(self, dsn: str | None, params: dict[str, Any]) -> Any:
        conn = psycopg2.connect(dsn, **params)
        conn.autocommit = True
        return conn

    def execute(self, conn: Any, sql: str) -> None:
        with conn.cursor() as cur:
            cur.execute(sql)

    def fetchval(self, conn: Any, sql: str) -> Any:
        with conn.cursor() as cur:
            cur.execute(sql)
            row = cur.fetchone()
            return row[0] if row else None

    def close(self, conn: Any) -> None:
        conn.close()

    def patched(self) -> list[tuple[object, str]]:
        return [(psycopg2, "connect")]

    def otelres_instrumentor(self) -> Psycopg2Instrumentor:
        return Psycopg2Instrumentor()

    def opentelemetry_instrumentor(self) -> OpenTelemetryPsycopg2:
        return OpenTelemetryPsycopg2()
