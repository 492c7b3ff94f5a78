"""psycopg2 specifics: the application's connection and cursor classes keep working,
C functions still get real psycopg2 objects, and OpenTelemetry's psycopg2
instrumentation can be installed and removed around otelres's."""

from __future__ import annotations

import contextlib
import uuid
from typing import TYPE_CHECKING, Any

import psycopg2
import psycopg2.extensions
import psycopg2.extras
import pytest
from db_contract import FAST, stats
from opentelemetry.instrumentation.psycopg2 import Psycopg2Instrumentor as OpenTelemetryPsycopg2
from opentelemetry.trace import SpanKind
from psycopg2 import sql

import otelres
from otelres import State
from otelres.instrumentation.psycopg2 import Psycopg2Instrumentor
from otelres.testing import forced_state

if TYPE_CHECKING:
    from collections.abc import Iterator

    from conftest import Pg
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


@pytest.fixture
def ours() -> Iterator[Psycopg2Instrumentor]:
    """otelres's psycopg2 instrumentation alone, with fast retries."""
    otelres.configure(otelres.load_settings(overrides=FAST))
    instrumentor = Psycopg2Instrumentor()
    instrumentor.instrument()
    yield instrumentor
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()


@pytest.fixture
def connections() -> Iterator[list[Any]]:
    """Connections to close after the test."""
    opened: list[Any] = []
    yield opened
    for conn in opened:
        with contextlib.suppress(Exception):
            conn.close()


def test_dict_connection_keeps_its_dict_cursor(
    pg: Pg, ours: Psycopg2Instrumentor, connections: list[Any]
) -> None:
    """A DictConnection still makes DictCursors (rows by name), and its statements go through the breaker."""
    conn = psycopg2.connect(pg.dsn(), connection_factory=psycopg2.extras.DictConnection)
    connections.append(conn)
    assert isinstance(conn, psycopg2.extras.DictConnection)
    with conn.cursor() as cur:
        assert isinstance(cur, psycopg2.extras.DictCursor)
        cur.execute("SELECT 7 AS seven")
        assert cur.fetchone()["seven"] == 7
    assert stats(pg.name).successes == 2


def test_cursor_factories_are_kept(pg: Pg, ours: Psycopg2Instrumentor, connections: list[Any]) -> None:
    """A cursor_factory given to connect() or to cursor() is the class of the cursors, and is counted."""
    conn = psycopg2.connect(pg.dsn(), cursor_factory=psycopg2.extras.RealDictCursor)
    connections.append(conn)
    with conn.cursor() as cur:
        cur.execute("SELECT 1 AS one")
        assert cur.fetchone() == {"one": 1}
    with conn.cursor(cursor_factory=psycopg2.extras.NamedTupleCursor) as cur:
        cur.execute("SELECT 2 AS two")
        assert cur.fetchone().two == 2
    with (
        forced_state(pg.name, State.FORCED_OPEN),
        conn.cursor() as cur,
        pytest.raises(otelres.CircuitOpenError),
    ):
        cur.execute("SELECT 3")
    assert stats(pg.name).successes == 3


def test_c_functions_accept_the_connection_and_cursor(
    pg: Pg, ours: Psycopg2Instrumentor, connections: list[Any]
) -> None:
    """register_uuid, quote_ident, as_string and execute_values accept our connections and cursors."""
    conn = psycopg2.connect(pg.dsn())
    connections.append(conn)
    conn.autocommit = True
    psycopg2.extras.register_uuid(conn_or_curs=conn)
    table = f"t_{uuid.uuid4().hex[:12]}"
    with conn.cursor() as cur:
        assert psycopg2.extensions.quote_ident("a b", cur) == '"a b"'
        query = sql.SQL("CREATE TABLE {} (id uuid PRIMARY KEY)").format(sql.Identifier(table))
        assert table in query.as_string(cur)
        cur.execute(query)
        first, second = uuid.uuid4(), uuid.uuid4()
        psycopg2.extras.execute_values(cur, f"INSERT INTO {table} VALUES %s", [(first,), (second,)])  # noqa: S608
        cur.execute(f"SELECT id FROM {table} ORDER BY id")  # noqa: S608
        assert {row[0] for row in cur.fetchall()} == {first, second}
    assert stats(pg.name).successes == 4  # connect, CREATE, one INSERT for both rows, SELECT


def test_named_cursor_goes_through_the_breaker(
    pg: Pg, ours: Psycopg2Instrumentor, connections: list[Any]
) -> None:
    """A server-side (named) cursor's execute is counted, and its rows stream as usual."""
    conn = psycopg2.connect(pg.dsn())
    connections.append(conn)
    with conn.cursor("server_side") as cur:
        cur.execute("SELECT generate_series(1, 3)")
        assert [row[0] for row in cur] == [1, 2, 3]
    conn.rollback()
    assert stats(pg.name).successes == 2


def test_callable_connection_factory_is_left_alone(
    pg: Pg, ours: Psycopg2Instrumentor, connections: list[Any]
) -> None:
    """A function as connection_factory is used as given: the connect is protected, its statements not."""
    factory = lambda dsn: psycopg2.extensions.connection(dsn)  # noqa: E731, PLW0108 - a function, not a class
    conn = psycopg2.connect(pg.dsn(), connection_factory=factory)
    connections.append(conn)
    assert type(conn) is psycopg2.extensions.connection
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
    assert stats(pg.name).successes == 1


def test_async_connection_passes_through(pg: Pg, ours: Psycopg2Instrumentor, connections: list[Any]) -> None:
    """An asynchronous connection (async_=True) is left to psycopg2: no breaker is made for it."""
    conn = psycopg2.connect(pg.dsn(), async_=True)
    connections.append(conn)
    psycopg2.extras.wait_select(conn)
    cur = conn.cursor()
    cur.execute("SELECT 1")
    psycopg2.extras.wait_select(conn)
    assert cur.fetchone() == (1,)
    assert otelres.default_registry().breakers() == []


@pytest.mark.parametrize(
    ("first", "removed_first"),
    [("otelres", "otelres"), ("otelres", "opentelemetry"), ("opentelemetry", "otelres")],
)
def test_with_opentelemetry_in_either_order(
    pg: Pg,
    tracing: tuple[TracerProvider, InMemorySpanExporter],
    connections: list[Any],
    first: str,
    removed_first: str,
) -> None:
    """Either order: one CLIENT span a statement, a breaker; each removable first, then the original."""
    provider, exporter = tracing
    original = psycopg2.connect
    otelres.configure(otelres.load_settings(overrides=FAST))
    both = {"otelres": Psycopg2Instrumentor(), "opentelemetry": OpenTelemetryPsycopg2()}
    install = {
        "otelres": both["otelres"].instrument,
        "opentelemetry": lambda: both["opentelemetry"].instrument(tracer_provider=provider),
    }
    second = "opentelemetry" if first == "otelres" else "otelres"
    try:
        install[first]()
        install[second]()
        conn = psycopg2.connect(pg.dsn())
        connections.append(conn)
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
        assert len([s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]) == 1
        assert stats(pg.name).successes == 2

        both[removed_first].uninstrument()
        exporter.clear()
        conn = psycopg2.connect(pg.dsn())
        connections.append(conn)
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
        left_clients = len([s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT])
        assert left_clients == (1 if removed_first == "otelres" else 0)
        assert stats(pg.name).successes == (2 if removed_first == "otelres" else 4)
        remaining = "opentelemetry" if removed_first == "otelres" else "otelres"
        both[remaining].uninstrument()
        assert psycopg2.connect is original
    finally:
        for instrumentor in both.values():
            if instrumentor.is_instrumented_by_opentelemetry:
                instrumentor.uninstrument()
