"""The sqlite3 and redis instrumentors: uninstrument restores the originals exactly,
instrumenting twice patches once, and the entry points name them."""

from __future__ import annotations

import sqlite3
import sqlite3.dbapi2
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

import pytest
import redis
import redis.asyncio
import redis.asyncio.client
import redis.asyncio.retry
import redis.client
import redis.retry
from opentelemetry.instrumentation.redis import RedisInstrumentor as OpenTelemetryRedis
from opentelemetry.instrumentation.sqlite3 import SQLite3Instrumentor as OpenTelemetrySqlite3

import otelres
from otelres import default_registry
from otelres.instrumentation import redis as otelres_redis
from otelres.instrumentation import sqlite3 as otelres_sqlite3

if TYPE_CHECKING:
    from collections.abc import Callable

#: Every attribute the two integrations patch, and otelres's wrapper of it.
PATCHED: list[tuple[Any, str, Callable[..., Any]]] = [
    (sqlite3, "connect", otelres_sqlite3._connect),
    (sqlite3.dbapi2, "connect", otelres_sqlite3._connect),
    (redis.client.Redis, "execute_command", otelres_redis._execute),
    (redis.client.Pipeline, "execute", otelres_redis._pipeline),
    (redis.asyncio.client.Redis, "execute_command", otelres_redis._aexecute),
    (redis.asyncio.client.Pipeline, "execute", otelres_redis._apipeline),
    (redis.retry.Retry, "call_with_retry", otelres_redis._call_with_retry),
    (redis.asyncio.retry.Retry, "call_with_retry", otelres_redis._call_with_retry),
]


def _ours(owner: Any, attribute: str, wrapper: Callable[..., Any]) -> int:
    """How many times otelres's ``wrapper`` sits in the chain of wrappers of an attribute."""
    count = 0
    found: Any = vars(owner)[attribute]
    while found is not None:
        count += getattr(found, "_self_wrapper", None) is wrapper
        found = getattr(found, "__wrapped__", None)
    return count


def test_uninstrument_restores_the_originals(instrument: Callable[..., None]) -> None:
    """otelres.uninstrument() puts back sqlite3.connect, execute_command and the rest exactly."""
    originals = [vars(owner)[attribute] for owner, attribute, _ in PATCHED]
    assert redis.Redis is redis.client.Redis
    assert redis.asyncio.Redis is redis.asyncio.client.Redis
    instrument()
    assert [_ours(*patched) for patched in PATCHED] == [1] * len(PATCHED)
    otelres.uninstrument()
    assert all(
        vars(owner)[attribute] is original
        for (owner, attribute, _), original in zip(PATCHED, originals, strict=True)
    )
    conn = sqlite3.connect(":memory:")
    try:
        assert type(conn) is sqlite3.Connection
        conn.execute("SELECT 1")
    finally:
        conn.close()
    assert default_registry().breakers() == []


@pytest.mark.parametrize("order", ["otelres_first", "opentelemetry_first"])
def test_otelres_comes_off_first_leaving_opentelemetry_on(
    order: str, instrument: Callable[..., None]
) -> None:
    """Installed before or after OpenTelemetry's sqlite3 and redis instrumentations, otelres comes
    off first taking out only its own wrappers; theirs then come off leaving the originals."""
    originals = [vars(owner)[attribute] for owner, attribute, _ in PATCHED]
    theirs = [OpenTelemetrySqlite3(), OpenTelemetryRedis()]
    ours = [otelres_sqlite3.Sqlite3Instrumentor(), otelres_redis.RedisInstrumentor()]
    try:
        if order == "otelres_first":
            for instrumentor in (*ours, *theirs):
                instrumentor.instrument()
        else:
            for instrumentor in theirs:
                instrumentor.instrument()
            instrument()
        assert [_ours(*patched) for patched in PATCHED] == [1] * len(PATCHED)
        for instrumentor in ours:
            instrumentor.uninstrument()
        assert [_ours(*patched) for patched in PATCHED] == [0] * len(PATCHED)
        # The six attributes both patch keep OpenTelemetry's wrapper, which still works.
        assert all(
            vars(owner)[attribute] is not found
            for (owner, attribute, _), found in zip(PATCHED[:6], originals, strict=False)
        )
        sqlite3.connect(":memory:").close()
        for instrumentor in theirs:
            instrumentor.uninstrument()
        assert all(
            vars(owner)[attribute] is found
            for (owner, attribute, _), found in zip(PATCHED, originals, strict=True)
        )
    finally:
        for instrumentor in (*ours, *theirs):
            if instrumentor.is_instrumented_by_opentelemetry:
                instrumentor.uninstrument()


def test_instrument_twice_patches_once(instrument: Callable[..., None]) -> None:
    """instrument() twice, and the instrumentors' own instrument() again, patch each attribute once."""
    instrument()
    instrument()
    otelres_sqlite3.Sqlite3Instrumentor().instrument()
    otelres_redis.RedisInstrumentor().instrument()
    assert [_ours(*patched) for patched in PATCHED] == [1] * len(PATCHED)
    otelres.uninstrument()
    assert [_ours(*patched) for patched in PATCHED] == [0] * len(PATCHED)


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("otelres_sqlite3", otelres_sqlite3.Sqlite3Instrumentor),
        ("otelres_redis", otelres_redis.RedisInstrumentor),
    ],
)
def test_entry_point(name: str, cls: type) -> None:
    """The opentelemetry_instrumentor entry point names the integration's instrumentor."""
    (found,) = [ep for ep in entry_points(group="opentelemetry_instrumentor") if ep.name == name]
    assert found.load() is cls


def test_instrument_puts_otelres_outside_opentelemetry(instrument: Callable[..., None]) -> None:
    """otelres.instrument() wraps outside OpenTelemetry's own patches, for a CLIENT span per attempt."""
    instrument()
    for owner, attribute, wrapper in PATCHED[:3]:
        assert getattr(vars(owner)[attribute], "_self_wrapper", None) is wrapper, (owner, attribute)
