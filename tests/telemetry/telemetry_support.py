"""Helpers shared by the telemetry tests: in-memory OpenTelemetry, scripted dependencies and
the two ways (sync, async) of calling through a Resilience."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.sdk.metrics.export import Gauge, Histogram, Sum

import otelres
from otelres.telemetry import names
from otelres.testing import FakeClock

if TYPE_CHECKING:
    from collections.abc import Callable

    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader, Metric
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

NAME = "https://api.example.com:443"
NO_JITTER = otelres.RetryPolicy(jitter="none")
MODES = ["sync", "async"]


@dataclasses.dataclass
class Otel:
    """Fresh SDK providers with in-memory export, handed to otelres.telemetry.enable()."""

    exporter: InMemorySpanExporter
    tracer_provider: TracerProvider
    reader: InMemoryMetricReader
    meter_provider: MeterProvider

    @property
    def tracer(self) -> trace.Tracer:
        """A tracer of the same provider, for the attempts' CLIENT spans."""
        return self.tracer_provider.get_tracer("app")

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def call_spans(self) -> list[ReadableSpan]:
        """The finished otelres call spans, in the order they ended."""
        return [s for s in self.spans() if s.instrumentation_scope.name == names.METER_NAME]

    def the_call_span(self) -> ReadableSpan:
        (span,) = self.call_spans()
        return span

    def metrics(self) -> dict[str, Metric]:
        """Every metric collected now, by name (each name once, all from the otelres scope)."""
        found: dict[str, Metric] = {}
        data = self.reader.get_metrics_data()
        if data is None:
            return found
        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                assert scope_metrics.scope.name == names.METER_NAME
                for metric in scope_metrics.metrics:
                    assert metric.name not in found, f"{metric.name} reported twice"
                    found[metric.name] = metric
        return found

    def values(self, name: str, by: str, breaker: str = NAME) -> dict[str, Any]:
        """One metric's points for one breaker, keyed by the value of attribute ``by``:
        the value of a sum or gauge, ``(count, sum)`` of a histogram.
        """
        metric = self.metrics().get(name)
        if metric is None:
            return {}
        result: dict[str, Any] = {}
        for point in metric.data.data_points:
            attributes = dict(point.attributes or {})
            if attributes.get(names.ATTR_BREAKER) != breaker:
                continue
            key = attributes[by]
            assert key not in result, f"two points of {name} for {key!r}: {metric.data.data_points}"
            if isinstance(metric.data, Histogram):
                result[key] = (point.count, round(point.sum, 9))
            else:
                assert isinstance(metric.data, (Sum, Gauge))
                result[key] = point.value
        return result


def events(span: ReadableSpan, name: str) -> list[dict[str, Any]]:
    """The attributes of each event called ``name`` on ``span``."""
    return [dict(e.attributes or {}) for e in span.events if e.name == name]


def event_names(span: ReadableSpan) -> list[str]:
    return [e.name for e in span.events]


class Script:
    """A scripted dependency: attempt n takes outcome n (the last one repeats).

    An exception class is raised as a fresh instance, an exception as it is; anything else is
    returned. With
    ``tracer``, each attempt runs inside its own CLIENT span (as an HTTP client's
    instrumentation would make it).
    """

    def __init__(self, *outcomes: object, tracer: trace.Tracer | None = None) -> None:
        self.outcomes = outcomes or ("ok",)
        self.tracer = tracer
        self.attempts = 0

    def __call__(self) -> Any:
        if self.tracer is None:
            return self._outcome()
        with self.tracer.start_as_current_span("GET", kind=trace.SpanKind.CLIENT):
            return self._outcome()

    def _outcome(self) -> Any:
        self.attempts += 1
        outcome = self.outcomes[min(self.attempts, len(self.outcomes)) - 1]
        if isinstance(outcome, type) and issubclass(outcome, BaseException):
            raise outcome(f"attempt {self.attempts}")
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


def run(mode: str, res: otelres.Resilience, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call the sync ``fn`` through ``res``: with call(), or wrapped in a coroutine through acall()."""
    if mode == "sync":
        return res.call(fn, *args, **kwargs)

    async def afn(*a: Any, **k: Any) -> Any:
        return fn(*a, **k)

    return asyncio.run(res.acall(afn, *args, **kwargs))


def run_with(mode: str, res: otelres.Resilience, fn: Callable[[], Any], *, no_retry: str) -> Any:
    """call_with() / acall_with() with ``no_retry``."""
    if mode == "sync":
        return res.call_with(fn, (), {}, no_retry=no_retry)

    async def afn() -> Any:
        return fn()

    return asyncio.run(res.acall_with(afn, (), {}, no_retry=no_retry))


def attempt_call(mode: str, res: otelres.Resilience, fn: Callable[..., Any]) -> BaseException | None:
    """Run one call and return the exception it raised (None when it returned)."""
    try:
        run(mode, res, fn)
    except Exception as exc:
        return exc
    return None


def in_trouble(res: otelres.Resilience) -> otelres.Resilience:
    """Record one failed attempt on ``res``'s breaker (not enough to trip it): its dependency is
    then in trouble (``CircuitBreaker.troubled()``), and every call gets its call span up front.
    """
    breaker = res.breaker
    breaker.on_failure(breaker.acquire(), breaker.clock.monotonic())
    assert breaker.troubled()
    assert breaker.stats().state is otelres.State.CLOSED
    return res


def resilience(name: str = NAME, **options: Any) -> otelres.Resilience:
    """A Resilience with its own breaker on a fake clock and no jitter (so delays are 0.1, 0.2, …)."""
    options.setdefault("clock", FakeClock())
    options.setdefault("retry", NO_JITTER)
    return otelres.Resilience(name, **options)
