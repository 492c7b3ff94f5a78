"""Telemetry with the global OpenTelemetry providers, which can be set only once per process: each
scenario runs in a fresh interpreter and prints its findings as JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING, Any

from telemetry_support import NAME

from otelres.telemetry import names

if TYPE_CHECKING:
    from pathlib import Path

PRELUDE = """
import asyncio, json, sys
import structlog
structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # stdout is for the result

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import otelres
import otelres.telemetry
from otelres import _events
from otelres.testing import FakeClock

NAME = %(name)r
res = otelres.Resilience(NAME, clock=FakeClock(), retry=otelres.RetryPolicy(jitter="none"))
# In trouble (one failed attempt on the fake clock, which never moves): every call has its span up
# front, so a retried call's attempts are all its children.
res.breaker.on_failure(res.breaker.acquire(), 0.0)
exporter = InMemorySpanExporter()
tracer_provider = TracerProvider()
tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
reader = InMemoryMetricReader()
meter_provider = MeterProvider(metric_readers=[reader])
out = {}


def state(label):
    out[label] = {
        "active": otelres.telemetry.active(),
        "listeners": len(_events.listeners),
        "call_listeners": len(_events.call_listeners),
    }


def flaky():
    attempts = []

    def attempt():
        # A CLIENT span from the global provider, as an instrumented HTTP client would make.
        with trace.get_tracer("app").start_as_current_span("GET", kind=trace.SpanKind.CLIENT):
            attempts.append(1)
            if len(attempts) == 1:
                raise ConnectionError("first")
            return "ok"

    return attempt


def call(label, use_async=False):
    fn = flaky()
    if use_async:
        async def afn():
            return fn()
        assert asyncio.run(res.acall(afn)) == "ok"
    else:
        assert res.call(fn) == "ok"
    out[label] = [
        {
            "name": s.name,
            "kind": s.kind.name,
            "span_id": s.context.span_id,
            "parent": s.parent.span_id if s.parent else None,
            "events": [e.name for e in s.events],
            "attributes": dict(s.attributes),
        }
        for s in exporter.get_finished_spans()
    ]
    exporter.clear()


def calls_metric():
    data = reader.get_metrics_data()
    found = {}
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                found[m.name] = [[dict(p.attributes), getattr(p, "value", None)] for p in m.data.data_points]
    return found
"""


def scenario(tmp_path: Path, body: str) -> dict[str, Any]:
    """Run PRELUDE + ``body`` in a fresh interpreter (no OTEL_* or OTELRES_* variables); its JSON."""
    script = tmp_path / "scenario.py"
    script.write_text(PRELUDE % {"name": NAME} + textwrap.dedent(body) + "\nprint(json.dumps(out))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OTELRES_"))}
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])  # type: ignore[no-any-return]


def assert_call_with_child(spans: list[dict[str, Any]]) -> None:
    """One call span (retried once) parenting its two CLIENT attempt spans."""
    (call,) = [s for s in spans if s["name"] == f"otelres {NAME}"]
    clients = [s for s in spans if s["kind"] == "CLIENT"]
    assert call["kind"] == "INTERNAL"
    assert call["events"] == [names.EVENT_RETRY]
    assert call["attributes"] == {
        names.ATTR_BREAKER: NAME,
        names.ATTR_OUTCOME: "success",
        names.ATTR_ATTEMPTS: 2,
    }
    assert len(clients) == 2
    assert all(c["parent"] == call["span_id"] for c in clients)


def test_providers_set_after_enable_are_noticed(tmp_path: Path) -> None:
    """An application that sets its global providers after enable() gets spans and metrics from then on,
    and enable() after the providers are set uses them at once."""
    out = scenario(
        tmp_path,
        """
        otelres.telemetry.enable()
        state("enabled, no providers")
        call("spans before")
        trace.set_tracer_provider(tracer_provider)
        state("tracer provider set")
        metrics.set_meter_provider(meter_provider)
        state("meter provider set")
        call("sync spans")
        call("async spans", use_async=True)
        out["metrics"] = calls_metric()
        otelres.telemetry.disable()
        state("disabled")
        call("spans when disabled")
        otelres.telemetry.enable()
        state("enabled again")
        call("spans when enabled again")
        """,
    )
    assert out["enabled, no providers"] == {
        "active": {"logs": True, "traces": False, "metrics": False},
        "listeners": 1,
        "call_listeners": 0,
    }
    assert out["spans before"] == []  # no provider: not even the CLIENT spans are recorded
    assert out["tracer provider set"]["active"] == {"logs": True, "traces": True, "metrics": False}
    assert out["tracer provider set"]["call_listeners"] == 1
    assert out["meter provider set"] == {
        "active": {"logs": True, "traces": True, "metrics": True},
        "listeners": 2,
        "call_listeners": 1,
    }
    assert_call_with_child(out["sync spans"])
    assert_call_with_child(out["async spans"])
    assert out["metrics"][names.CALLS] == [[{names.ATTR_BREAKER: NAME, names.ATTR_OUTCOME: "success"}, 2]]
    assert out["metrics"][names.RETRIES] == [
        [{names.ATTR_BREAKER: NAME, names.ATTR_RETRY_REASON: "connect"}, 2]
    ]
    assert out["disabled"] == {
        "active": {"logs": False, "traces": False, "metrics": False},
        "listeners": 0,
        "call_listeners": 0,
    }
    assert [s["kind"] for s in out["spans when disabled"]] == ["CLIENT", "CLIENT"]
    assert out["enabled again"]["active"] == {"logs": True, "traces": True, "metrics": True}
    assert_call_with_child(out["spans when enabled again"])


def test_providers_set_while_disabled_register_nothing(tmp_path: Path) -> None:
    """Providers set after disable() do not switch telemetry back on; the next enable() uses them."""
    out = scenario(
        tmp_path,
        """
        otelres.telemetry.enable()
        otelres.telemetry.disable()
        trace.set_tracer_provider(tracer_provider)
        metrics.set_meter_provider(meter_provider)
        state("providers set while disabled")
        call("spans")
        otelres.telemetry.enable()
        otelres.telemetry.enable()
        state("enabled twice")
        call("spans when enabled")
        """,
    )
    assert out["providers set while disabled"] == {
        "active": {"logs": False, "traces": False, "metrics": False},
        "listeners": 0,
        "call_listeners": 0,
    }
    assert [s["kind"] for s in out["spans"]] == ["CLIENT", "CLIENT"]
    assert out["enabled twice"] == {
        "active": {"logs": True, "traces": True, "metrics": True},
        "listeners": 2,
        "call_listeners": 1,
    }
    assert_call_with_child(out["spans when enabled"])


def test_provider_set_through_a_name_imported_before_enable_is_noticed(tmp_path: Path) -> None:
    """Setters imported by name before enable() (as the SDK's own set-up does) and called after it
    are noticed too."""
    out = scenario(
        tmp_path,
        """
        from opentelemetry.metrics import set_meter_provider
        from opentelemetry.trace import set_tracer_provider
        otelres.telemetry.enable()
        set_tracer_provider(tracer_provider)
        set_meter_provider(meter_provider)
        state("after")
        call("spans")
        out["metrics"] = calls_metric()
        """,
    )
    assert out["after"]["active"] == {"logs": True, "traces": True, "metrics": True}
    assert_call_with_child(out["spans"])
    assert out["metrics"][names.CALLS] == [[{names.ATTR_BREAKER: NAME, names.ATTR_OUTCOME: "success"}, 1]]
