"""psycopg 3 specifics: the application's connection and cursor classes keep working."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from db_contract import FAST, stats

import otelres
from otelres import State
from otelres.instrumentation.psycopg import PsycopgInstrumentor
from otelres.testing import forced_state

if TYPE_CHECKING:
    from collections.abc import Iterator

    from conftest import Pg


@pytest.fixture
def ours() -> Iterator[PsycopgInstrumentor]:
    """otelres's psycopg instrumentation alone, with fast retries."""
    otelres.configure(otelres.load_settings(overrides=FAST))
    instrumentor = PsycopgInstrumentor()
    instrumentor.instrument()
    yield instrumentor
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()


class MyConnection(psycopg.Connection[Any]):
    """An application's connection class."""


def test_connection_subclass_connects_as_itself(pg: Pg, ours: PsycopgInstrumentor) -> None:
    """MyConnection.connect() still returns a MyConnection, protected like any other."""
    with MyConnection.connect(pg.dsn()) as conn:
        assert type(conn) is MyConnection
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert stats(pg.name).successes == 2


def test_cursor_factory_is_kept(pg: Pg, ours: PsycopgInstrumentor) -> None:
    """A cursor_factory (ClientCursor) is still the class of the cursors, and they are protected."""
    with psycopg.connect(pg.dsn(), cursor_factory=psycopg.ClientCursor) as conn:
        cur = conn.cursor()
        assert isinstance(cur, psycopg.ClientCursor)
        assert cur.mogrify("SELECT %s", (5,)) == "SELECT 5"
        cur.execute("SELECT 5")
        with forced_state(pg.name, State.FORCED_OPEN), pytest.raises(otelres.CircuitOpenError):
            cur.execute("SELECT 6")
        cur.close()
    assert stats(pg.name).successes == 2


def test_server_cursor_goes_through_the_breaker(pg: Pg, ours: PsycopgInstrumentor) -> None:
    """A named (server-side) cursor's execute is counted, and its rows stream as usual."""
    with psycopg.connect(pg.dsn()) as conn, conn.cursor("server_side") as cur:
        assert isinstance(cur, psycopg.ServerCursor)
        cur.execute("SELECT generate_series(1, 3)")
        assert [row[0] for row in cur] == [1, 2, 3]
    assert stats(pg.name).successes == 2


def test_async_server_cursor_goes_through_the_breaker(pg: Pg, ours: PsycopgInstrumentor) -> None:
    """An async named cursor's execute is counted too."""

    async def run() -> list[int]:
        async with await psycopg.AsyncConnection.connect(pg.dsn()) as conn, conn.cursor("server_side") as cur:
            assert isinstance(cur, psycopg.AsyncServerCursor)
            await cur.execute("SELECT generate_series(1, 3)")
            return [row[0] async for row in cur]

    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(run()) == [1, 2, 3]
    finally:
        loop.close()
    assert stats(pg.name).successes == 2


def test_executemany_is_one_statement(pg: Pg, ours: PsycopgInstrumentor) -> None:
    """executemany() is one call through the breaker, however many parameter sets it sends."""
    with contextlib.ExitStack() as stack:
        conn = stack.enter_context(psycopg.connect(pg.dsn(), autocommit=True))
        conn.execute("CREATE TEMP TABLE t (id int)")
        cur = stack.enter_context(conn.cursor())
        cur.executemany("INSERT INTO t VALUES (%s)", [(1,), (2,), (3,)])
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (3,)
    assert stats(pg.name).successes == 4  # connect, CREATE, executemany, SELECT


def test_cursor_of_a_closed_connection_passes_through(pg: Pg, ours: PsycopgInstrumentor) -> None:
    """A cursor used after its connection was closed fails as psycopg says, and is not counted."""
    conn = psycopg.connect(pg.dsn())
    cur = conn.cursor()
    conn.close()
    with pytest.raises(psycopg.OperationalError, match="closed"):
        cur.execute("SELECT 1")
    found = stats(pg.name)
    assert (found.successes, found.failures) == (1, 0)
