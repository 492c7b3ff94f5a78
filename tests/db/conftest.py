"""Fixtures of the PostgreSQL integration tests: one real server on 127.0.0.1 for
the session (stopped and started again by the outage tests), otelres
uninstrumented with default settings around every test, and an in-memory tracer.

Without ``initdb``/``pg_ctl`` the tests skip, except in CI (``CI`` set), where
they fail: scripts/test installs PostgreSQL.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pg_server import PgServer, find_bin_dir

import otelres
import otelres.telemetry

if TYPE_CHECKING:
    from collections.abc import Iterator


@dataclasses.dataclass
class Pg:
    """The running server, as the tests see it."""

    server: PgServer
    dbname: str = "app"

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def name(self) -> str:
        """The breaker name of the ``app`` database over TCP."""
        return f"postgresql://{self.host}:{self.port}/{self.dbname}"

    def dsn(self, *, password: str | None = None, port: int | None = None) -> str:
        """A ``postgresql://`` URL of the ``app`` database (any password is accepted)."""
        auth = "postgres" + (f":{password}" if password else "")
        return f"postgresql://{auth}@{self.host}:{port or self.port}/{self.dbname}"

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Run ``sql`` outside otelres (instrumentation suppressed); its rows."""
        with suppress_instrumentation(), psycopg.connect(self.dsn(), autocommit=True) as conn:
            cur = conn.execute(sql, params or None)
            return cur.fetchall() if cur.description else []

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server.start()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A PostgreSQL server on 127.0.0.1 (a free port) with a database ``app``, for the session."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        message = "PostgreSQL's initdb and pg_ctl are not installed (apt-get install postgresql)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    server = PgServer(bin_dir)
    try:
        server.start()
        with psycopg.connect(
            host=server.host, port=server.port, dbname="postgres", user="postgres", autocommit=True
        ) as conn:
            conn.execute("CREATE DATABASE app")
        yield server
    finally:
        server.destroy()


@pytest.fixture
def pg(pg_server: PgServer) -> Iterator[Pg]:
    """The session's server, running when the test starts and again when it ends."""
    if not pg_server.running:
        pg_server.start()
    yield Pg(pg_server)
    if not pg_server.running:
        pg_server.start()


@pytest.fixture(autouse=True)
def _uninstrumented(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No OTEL_*/PG* variable, nothing patched and default settings, before and after each test."""
    for name in list(os.environ):
        if name.startswith(("OTEL_", "PG")):
            monkeypatch.delenv(name)
    otelres.uninstrument()
    yield
    otelres.uninstrument()
    otelres.telemetry.disable()
    otelres.configure(None)


@pytest.fixture
def tracing() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    """A fresh SDK tracer provider exporting to memory (never the global one)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    otelres.telemetry.disable()
    provider.shutdown()
