"""Fixtures of the telemetry tests: telemetry is off and structlog unconfigured after every test,
and fresh in-memory SDK providers (never the global ones, which can be set once per process)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import structlog
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from structlog.testing import capture_logs
from telemetry_support import MODES, Otel

import otelres.telemetry

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator


@pytest.fixture(autouse=True)
def _telemetry_off() -> Iterator[None]:
    """Start and end every test with otelres's telemetry disabled and structlog at its defaults."""
    otelres.telemetry.disable()
    structlog.reset_defaults()
    yield
    otelres.telemetry.disable()
    structlog.reset_defaults()


def new_otel() -> Otel:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider(shutdown_on_exit=False)
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    return Otel(exporter, tracer_provider, reader, meter_provider)


@pytest.fixture
def make_otel() -> Iterator[Callable[..., Otel]]:
    """Enable telemetry with fresh providers: ``make_otel(rejected_log_interval=...)``."""
    made: list[Otel] = []

    def make(**options: float) -> Otel:
        otel = new_otel()
        made.append(otel)
        otelres.telemetry.enable(
            tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider, **options
        )
        return otel

    yield make
    otelres.telemetry.disable()
    for otel in made:
        otel.tracer_provider.shutdown()
        otel.meter_provider.shutdown()


@pytest.fixture
def otel(make_otel: Callable[..., Otel]) -> Otel:
    """Telemetry enabled with fresh in-memory tracer and meter providers."""
    return make_otel()


@pytest.fixture
def fresh_providers() -> Iterator[Callable[[], Otel]]:
    """Fresh providers, not handed to otelres (the test enables as it needs)."""
    made: list[Otel] = []

    def make() -> Otel:
        otel = new_otel()
        made.append(otel)
        return otel

    yield make
    otelres.telemetry.disable()
    for otel in made:
        otel.tracer_provider.shutdown()
        otel.meter_provider.shutdown()


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    """Each test that takes ``mode`` runs through call() and through acall()."""
    return str(request.param)


@pytest.fixture
def logs() -> Iterator[list[dict[str, object]]]:
    """The structlog events otelres writes during the test."""
    with capture_logs() as captured:
        yield captured
