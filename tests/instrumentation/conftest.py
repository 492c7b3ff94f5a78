"""Fixtures of the client-library integration tests: a real flaky HTTP server on loopback,
a refused port, fast retry settings, recorded (not slept) backoff delays, in-memory
tracing, and otelres uninstrumented with its settings reset after every test."""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING

import pytest
from flaky_server import FlakyServer, RefusedPort
from http_contract import FAST
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import otelres
import otelres.telemetry
from otelres._clock import MonotonicClock

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator


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
def server() -> Iterator[FlakyServer]:
    """A running flaky server on 127.0.0.1 (answers 200 until scripted)."""
    with FlakyServer() as flaky:
        yield flaky


@pytest.fixture
def refused() -> Iterator[RefusedPort]:
    """A loopback port where every connection is refused."""
    port = RefusedPort()
    yield port
    port.close()


@pytest.fixture
def instrument() -> Callable[..., None]:
    """``otelres.instrument()`` with fast retries, plus the test's own overrides."""

    def run(**overrides: object) -> None:
        otelres.instrument(**{**FAST, **overrides})

    return run


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The delays otelres waits before retries, recorded instead of slept."""
    recorded: list[float] = []

    def sleep(self: MonotonicClock, seconds: float) -> None:
        recorded.append(seconds)

    async def asleep(self: MonotonicClock, seconds: float) -> None:
        recorded.append(seconds)
        await asyncio.sleep(0)

    monkeypatch.setattr(MonotonicClock, "sleep", sleep)
    monkeypatch.setattr(MonotonicClock, "asleep", asleep)
    return recorded


@pytest.fixture
def tracing() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    """A fresh SDK tracer provider exporting to memory (never the global one)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    otelres.telemetry.disable()
    provider.shutdown()
