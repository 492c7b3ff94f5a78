"""asyncpg specifics: the application's connection class and pools keep working."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import asyncpg
import pytest
from db_contract import FAST, stats

import otelres
from otelres import State
from otelres.instrumentation.asyncpg import AsyncpgInstrumentor
from otelres.testing import forced_state

if TYPE_CHECKING:
    from collections.abc import Coroutine, Iterator

    from conftest import Pg


@pytest.fixture
def ours() -> Iterator[AsyncpgInstrumentor]:
    """otelres's asyncpg instrumentation alone, with fast retries."""
    otelres.configure(otelres.load_settings(overrides=FAST))
    instrumentor = AsyncpgInstrumentor()
    instrumentor.instrument()
    yield instrumentor
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


class MyConnection(asyncpg.Connection):  # type: ignore[misc]
    """An application's connection class."""


def test_connection_class_is_kept(pg: Pg, ours: AsyncpgInstrumentor) -> None:
    """connection_class=MyConnection still gives a MyConnection, whose queries are protected."""

    async def go() -> None:
        conn = await asyncpg.connect(pg.dsn(), connection_class=MyConnection)
        try:
            assert isinstance(conn, MyConnection)
            assert await conn.fetchrow("SELECT 1 AS one") == (1,)
            with forced_state(pg.name, State.FORCED_OPEN), pytest.raises(otelres.CircuitOpenError):
                await conn.fetch("SELECT 2")
        finally:
            await conn.close()

    run(go())
    assert stats(pg.name).successes == 2


def test_pool_connections_are_protected(pg: Pg, ours: AsyncpgInstrumentor) -> None:
    """A pool made after instrumenting connects and queries through the database's breaker."""

    async def go() -> list[Any]:
        async with asyncpg.create_pool(pg.dsn(), min_size=1, max_size=1) as pool:
            first = await pool.fetchval("SELECT 1")
            async with pool.acquire() as conn:
                second = await conn.fetchval("SELECT 2")
                await conn.executemany("SELECT $1::int", [(1,), (2,)])
            return [first, second]

    assert run(go()) == [1, 2]
    found = stats(pg.name)
    assert found.failures == 0
    assert found.successes == 4  # the connect and three queries; the pool's resets are not counted


def test_pool_release_is_not_rejected(pg: Pg, ours: AsyncpgInstrumentor) -> None:
    """Handing a connection back to the pool while the circuit is open does not raise."""

    async def go() -> None:
        async with asyncpg.create_pool(pg.dsn(), min_size=1, max_size=1) as pool:
            with forced_state(pg.name, State.FORCED_OPEN):
                async with pool.acquire() as conn:
                    with pytest.raises(otelres.CircuitOpenError):
                        await conn.fetchval("SELECT 1")
            assert await pool.fetchval("SELECT 2") == 2

    run(go())
