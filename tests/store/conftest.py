"""Fixtures of the sqlite3 and redis integration tests: fast retry settings,
otelres uninstrumented after every test, a fake clock behind the breakers, and
real redis-servers on loopback (a missing redis-server fails in CI, never skips).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from store_servers import FlakyProxy, RedisServer

import otelres
import otelres.telemetry
from otelres._registry import Registry, set_default_registry
from otelres.testing import FakeClock

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from opentelemetry.instrumentation.instrumentor import BaseInstrumentor

#: Retries in about a millisecond, so that no test waits on a real backoff.
FAST = {"retry_base_delay": 0.001, "retry_max_delay": 0.002}

#: Integrations other than the two under test: not patched here.
OTHERS = "otelres_requests,otelres_httpx,otelres_psycopg,otelres_psycopg2,otelres_asyncpg"


@pytest.fixture(autouse=True)
def _uninstrumented(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No OTEL_* variable, nothing patched and default settings, before and after each test."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    otelres.uninstrument()
    yield
    otelres.uninstrument()
    otelres.telemetry.disable()
    otelres.configure(None)


@pytest.fixture
def instrument(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """``otelres.instrument()`` with fast retries plus the test's own overrides
    (sqlite3 and redis patched; the HTTP and PostgreSQL integrations left out).
    """
    monkeypatch.setenv("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", OTHERS)

    def run(**overrides: object) -> None:
        otelres.instrument(**{**FAST, **overrides})

    return run


@pytest.fixture
def fake_clock() -> Iterator[FakeClock]:
    """A fake clock behind every breaker and retry: tests move time, nothing sleeps."""
    clock = FakeClock()
    previous = set_default_registry(Registry(clock=clock))
    yield clock
    set_default_registry(previous)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own on 127.0.0.1, durable across stop and start."""
    with RedisServer(tmp_path, durable=True) as server:
        yield server


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[FlakyProxy]:
    """A proxy in front of the test's redis-server that drops connections on cue."""
    flaky = FlakyProxy(redis_server.port)
    yield flaky
    flaky.close()


@pytest.fixture
def tracing() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    """A fresh SDK tracer provider exporting to memory (never the global one)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    otelres.telemetry.disable()
    provider.shutdown()


@pytest.fixture
def install(
    tracing: tuple[TracerProvider, InMemorySpanExporter], instrument: Callable[..., None]
) -> Iterator[Callable[[str, BaseInstrumentor, BaseInstrumentor], InMemorySpanExporter]]:
    """Install OpenTelemetry's instrumentation of a library (``theirs``, CLIENT spans into
    ``tracing``) and otelres's (``ours``) in an order: ``opentelemetry_first`` (then
    ``otelres.instrument()``) or ``otelres_first``; returns the span exporter.
    """
    provider, exporter = tracing
    installed: list[BaseInstrumentor] = []

    def run(order: str, theirs: BaseInstrumentor, ours: BaseInstrumentor) -> InMemorySpanExporter:
        installed.extend((theirs, ours))
        if order == "opentelemetry_first":
            theirs.instrument(tracer_provider=provider)
            instrument()
        else:
            otelres.configure(otelres.load_settings(overrides=FAST))
            ours.instrument()
            theirs.instrument(tracer_provider=provider)
        otelres.telemetry.enable(tracer_provider=provider)
        return exporter

    yield run
    otelres.uninstrument()
    for instrumentor in installed:
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()
