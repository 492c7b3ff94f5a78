"""Setting up the OpenTelemetry SDK from ``OTEL_*``: which exporters the variables
ask for (``otelres._sdk.exporter_names``, a pure function), and what
``otelres.instrument()`` does in a real process: nothing at all without ``OTEL_*``,
never replacing an application's own providers, clear errors for what cannot be
set up, and telemetry that starts when the application installs providers later.
"""

from __future__ import annotations

import importlib.util
import json
import textwrap
import time
from typing import TYPE_CHECKING

import pytest

import otelres
from otelres._sdk import exporter_names

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Callable

    RunApp = Callable[..., subprocess.CompletedProcess[str]]

GRPC_INSTALLED = importlib.util.find_spec("opentelemetry.exporter.otlp.proto.grpc") is not None
GRPC_HINT = "pip install opentelemetry-exporter-otlp-proto-grpc"


def both(env: dict[str, str]) -> dict[str, list[str]]:
    return {signal: exporter_names(signal, env) for signal in ("traces", "metrics")}


def app(*parts: str) -> str:
    """An app's source from parts, each dedented on its own."""
    return "\n".join(textwrap.dedent(part) for part in parts)


def result(proc: subprocess.CompletedProcess[str]) -> dict[str, object]:
    """The JSON an app printed on its ``RESULT`` line (structlog may print other lines)."""
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, proc.stdout
    return json.loads(lines[0].removeprefix("RESULT "))  # type: ignore[no-any-return]


# -- exporter_names: what the variables ask for ----------------------------------------------------


def test_nothing_set_exports_nothing() -> None:
    """Without any OTEL_* variable no exporter is asked for, for either signal."""
    assert both({}) == {"traces": [], "metrics": []}


def test_endpoint_alone_means_otlp_over_http_protobuf() -> None:
    """OTEL_EXPORTER_OTLP_ENDPOINT alone asks for OTLP over http/protobuf for both signals."""
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}
    assert both(env) == {"traces": ["otlp_proto_http"], "metrics": ["otlp_proto_http"]}


def test_empty_endpoint_counts_as_unset() -> None:
    """An empty OTEL_EXPORTER_OTLP_ENDPOINT asks for nothing."""
    assert both({"OTEL_EXPORTER_OTLP_ENDPOINT": ""}) == {"traces": [], "metrics": []}


def test_otlp_without_protocol_is_http_protobuf() -> None:
    """OTEL_TRACES_EXPORTER=otlp without a protocol is http/protobuf, and asks nothing of metrics."""
    assert both({"OTEL_TRACES_EXPORTER": "otlp"}) == {"traces": ["otlp_proto_http"], "metrics": []}


def test_otlp_with_grpc_protocol() -> None:
    """OTEL_TRACES_EXPORTER=otlp with OTEL_EXPORTER_OTLP_PROTOCOL=grpc asks for the gRPC exporter."""
    env = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    assert both(env) == {"traces": ["otlp_proto_grpc"], "metrics": []}


def test_signal_specific_protocol_wins_over_the_general_one() -> None:
    """OTEL_EXPORTER_OTLP_<SIGNAL>_PROTOCOL overrides OTEL_EXPORTER_OTLP_PROTOCOL for that signal only."""
    env = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http/protobuf",
    }
    assert both(env) == {"traces": ["otlp_proto_grpc"], "metrics": ["otlp_proto_http"]}


def test_signal_specific_endpoint_asks_for_that_signal_only() -> None:
    """OTEL_EXPORTER_OTLP_TRACES_ENDPOINT asks for OTLP traces and nothing for metrics."""
    env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}
    assert both(env) == {"traces": ["otlp_proto_http"], "metrics": []}
    env = {"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://collector:4318/v1/metrics"}
    assert both(env) == {"traces": [], "metrics": ["otlp_proto_http"]}


def test_console() -> None:
    """Console exporters are asked for by name."""
    env = {"OTEL_TRACES_EXPORTER": "console", "OTEL_METRICS_EXPORTER": "console"}
    assert both(env) == {"traces": ["console"], "metrics": ["console"]}


def test_none_wins_over_an_endpoint() -> None:
    """An explicit 'none' exports nothing for that signal even with an endpoint set."""
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_TRACES_EXPORTER": "none"}
    assert both(env) == {"traces": [], "metrics": ["otlp_proto_http"]}


def test_a_list_of_exporters() -> None:
    """A comma-separated list asks for each exporter in order, spaces and case aside."""
    names = ["otlp_proto_http", "console"]
    assert exporter_names("traces", {"OTEL_TRACES_EXPORTER": "otlp,console"}) == names
    assert exporter_names("traces", {"OTEL_TRACES_EXPORTER": " OTLP , Console "}) == names


def test_none_in_a_list_is_an_error() -> None:
    """'none' together with an exporter is a ConfigError naming the variable."""
    with pytest.raises(otelres.ConfigError) as caught:
        exporter_names("traces", {"OTEL_TRACES_EXPORTER": "otlp,none"})
    assert caught.value.key == "OTEL_TRACES_EXPORTER"
    assert caught.value.value == "otlp,none"


def test_bad_protocol_is_an_error_naming_the_variable() -> None:
    """An unknown OTLP protocol is a ConfigError naming OTEL_EXPORTER_OTLP_PROTOCOL and the choices."""
    env = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/xml"}
    with pytest.raises(otelres.ConfigError) as caught:
        exporter_names("traces", env)
    assert caught.value.key == "OTEL_EXPORTER_OTLP_PROTOCOL"
    assert caught.value.value == "http/xml"
    assert "http/protobuf" in caught.value.allowed
    assert "grpc" in caught.value.allowed
    assert "OTEL_EXPORTER_OTLP_PROTOCOL" in str(caught.value)


def test_bad_signal_specific_protocol_names_its_own_variable() -> None:
    """A bad OTEL_EXPORTER_OTLP_TRACES_PROTOCOL is a ConfigError naming that variable, not the general one."""
    env = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/xml",
    }
    with pytest.raises(otelres.ConfigError) as caught:
        exporter_names("traces", env)
    assert caught.value.key == "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"


def test_protocol_is_not_checked_when_otlp_is_not_asked_for() -> None:
    """A bad protocol does not matter to a signal that exports to the console only."""
    env = {"OTEL_TRACES_EXPORTER": "console", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/xml"}
    assert exporter_names("traces", env) == ["console"]


# -- otelres.instrument() in a real process --------------------------------------------------------

CALLS = """
res = otelres.Resilience(
    "https://api.example.com:443", retry=otelres.RetryPolicy(base_delay=0.001, jitter="none")
)


def flaky():
    flaky.count = getattr(flaky, "count", 0) + 1
    if flaky.count == 1:
        raise ConnectionError("refused")
    return "ok"


def call():
    flaky.count = 0
    assert res.call(flaky) == "ok"
"""


def test_no_otel_variables_means_no_export_and_no_network(run_app: RunApp) -> None:
    """With no OTEL_* set, instrument() installs no provider, opens no socket and the app exits 0 at once."""
    source = app(
        """
        import json
        import socket

        connects = []
        for name in ("connect", "connect_ex"):
            original = getattr(socket.socket, name)

            def spy(self, address, _original=original):
                connects.append(repr(address))
                return _original(self, address)

            setattr(socket.socket, name, spy)

        import otelres
        from opentelemetry import metrics, trace
        from otelres import telemetry

        otelres.instrument()
        otelres.instrument()  # idempotent
        """,
        CALLS,
        """
        for _ in range(3):
            call()
        print("RESULT " + json.dumps({
            "tracer_provider": type(trace.get_tracer_provider()).__name__,
            "meter_provider": type(metrics.get_meter_provider()).__name__,
            "active": telemetry.active(),
            "connects": connects,
        }))
        """,
    )
    started = time.monotonic()
    proc = run_app(source)
    elapsed = time.monotonic() - started
    assert result(proc) == {
        "tracer_provider": "ProxyTracerProvider",
        "meter_provider": "_ProxyMeterProvider",
        "active": {"logs": True, "traces": False, "metrics": False},
        "connects": [],
    }
    assert "Traceback" not in proc.stderr
    assert elapsed < 10, f"took {elapsed:.1f} s"


def test_app_providers_set_before_instrument_are_kept(run_app: RunApp) -> None:
    """Providers the app installed before instrument() stay, even with exporters asked for in OTEL_*."""
    source = app(
        """
        import json

        import otelres
        from opentelemetry import metrics, trace
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        exporter = InMemorySpanExporter()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(tracer_provider)
        reader = InMemoryMetricReader()
        meter_provider = MeterProvider(metric_readers=[reader])
        metrics.set_meter_provider(meter_provider)

        otelres.instrument()
        """,
        CALLS,
        """
        call()
        metric_names = sorted(
            m.name
            for rm in reader.get_metrics_data().resource_metrics
            for sm in rm.scope_metrics
            for m in sm.metrics
        )
        print("RESULT " + json.dumps({
            "same_tracer_provider": trace.get_tracer_provider() is tracer_provider,
            "same_meter_provider": metrics.get_meter_provider() is meter_provider,
            "spans": [s.name for s in exporter.get_finished_spans()],
            "metrics": metric_names,
        }))
        """,
    )
    proc = run_app(source, {"OTEL_TRACES_EXPORTER": "console", "OTEL_METRICS_EXPORTER": "console"})
    assert result(proc) == {
        "same_tracer_provider": True,
        "same_meter_provider": True,
        "spans": ["otelres https://api.example.com:443"],
        "metrics": sorted(
            [
                "otelres.call.duration",
                "otelres.calls",
                "otelres.circuit.state",
                "otelres.retries",
                "otelres.retry.delay",
            ]
        ),
    }
    # No console exporter was attached behind the app's back, and no second provider was tried.
    assert '"trace_id"' not in proc.stdout
    assert '"resource_metrics"' not in proc.stdout
    assert "Overriding of current" not in proc.stderr


INSTRUMENT_OR_ERROR = """
import json

import otelres
from opentelemetry import trace

try:
    otelres.instrument()
except otelres.ConfigError as exc:
    out = {"error": {"key": exc.key, "value": str(exc.value), "allowed": exc.allowed, "message": str(exc)}}
else:
    out = {"tracer_provider": type(trace.get_tracer_provider()).__name__}
print("RESULT " + json.dumps(out))
"""


def test_unknown_exporter_is_a_config_error_naming_the_variable(run_app: RunApp) -> None:
    """An exporter name no package provides is a ConfigError naming OTEL_TRACES_EXPORTER and the name."""
    out = result(run_app(INSTRUMENT_OR_ERROR, {"OTEL_TRACES_EXPORTER": "zipkin_nonexistent"}))
    error = out["error"]
    assert isinstance(error, dict)
    assert error["key"] == "OTEL_TRACES_EXPORTER"
    assert "zipkin_nonexistent" in error["message"]


def test_unknown_metrics_exporter_is_attributed_to_metrics(run_app: RunApp) -> None:
    """A bad OTEL_METRICS_EXPORTER is reported as such, even when OTEL_TRACES_EXPORTER is a prefix of it."""
    env = {"OTEL_TRACES_EXPORTER": "console", "OTEL_METRICS_EXPORTER": "consoles"}
    error = result(run_app(INSTRUMENT_OR_ERROR, env))["error"]
    assert isinstance(error, dict)
    assert error["key"] == "OTEL_METRICS_EXPORTER"


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "OTEL_TRACES_EXPORTER"),
        (
            {
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_METRICS_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "grpc",
            },
            "OTEL_METRICS_EXPORTER",
        ),
    ],
    ids=["traces", "metrics"],
)
def test_grpc_protocol_without_the_grpc_exporter(run_app: RunApp, env: dict[str, str], variable: str) -> None:
    """OTLP over gRPC without its package is a ConfigError with the install hint (works when installed)."""
    out = result(run_app(INSTRUMENT_OR_ERROR, env))
    if GRPC_INSTALLED:
        assert out == {"tracer_provider": "TracerProvider"}
        return
    error = out["error"]
    assert isinstance(error, dict)
    assert error["key"] == variable
    assert GRPC_HINT in error["allowed"]
    assert GRPC_HINT in error["message"]


AFTER = app(
    """
import json

import otelres
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from otelres import telemetry

otelres.instrument()
""",
    CALLS,
    """
exporter = InMemorySpanExporter()
reader = InMemoryMetricReader()


def set_tracer_provider():
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)


def set_meter_provider():
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))


def counts():
    data = reader.get_metrics_data()
    points = {}
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                for p in m.data.data_points:
                    value = p.count if hasattr(p, "count") else p.value
                    points[m.name] = points.get(m.name, 0) + value
    return points


steps = []


def step(label):
    call()
    steps.append({
        "after": label,
        "active": telemetry.active(),
        "spans": len(exporter.get_finished_spans()),
        "calls": counts().get("otelres.calls", 0),
        "durations": counts().get("otelres.call.duration", 0),
    })


step("instrument")
for first in ORDER:
    {"tracer": set_tracer_provider, "meter": set_meter_provider}[first]()
    step(first)
step("again")
print("RESULT " + json.dumps(steps))
""",
)


def test_telemetry_starts_when_the_app_sets_a_tracer_provider_later(run_app: RunApp) -> None:
    """Spans, then metrics, start once the app installs providers after instrument() (none before)."""
    steps = result(run_app(AFTER.replace("ORDER", '("tracer", "meter")')))
    assert steps == [
        {
            "after": "instrument",
            "active": {"logs": True, "traces": False, "metrics": False},
            "spans": 0,
            "calls": 0,
            "durations": 0,
        },
        {
            "after": "tracer",
            "active": {"logs": True, "traces": True, "metrics": False},
            "spans": 1,
            "calls": 0,
            "durations": 0,
        },
        {
            "after": "meter",
            "active": {"logs": True, "traces": True, "metrics": True},
            "spans": 2,
            "calls": 1,
            "durations": 1,
        },
        {
            "after": "again",
            "active": {"logs": True, "traces": True, "metrics": True},
            "spans": 3,
            "calls": 2,
            "durations": 2,
        },
    ]


def test_calls_keep_counting_when_the_tracer_provider_comes_after_the_meter_provider(
    run_app: RunApp,
) -> None:
    """otelres.calls keeps counting after the app installs a TracerProvider once metrics were on."""
    steps = result(run_app(AFTER.replace("ORDER", '("meter", "tracer")')))
    assert [(s["after"], s["spans"], s["durations"]) for s in steps] == [
        ("instrument", 0, 0),
        ("meter", 0, 1),
        ("tracer", 1, 2),
        ("again", 2, 3),
    ]
    # The counter must agree with the histogram: every call is counted once.
    assert [s["calls"] for s in steps] == [s["durations"] for s in steps]


# An exporter asked for but not installed: the OTLP and Prometheus exporters are extras of otelres.
# The app hides them as a plain `pip install otelres` has them: no entry point, no module.
HIDE_EXPORTERS = """
import importlib.metadata
import sys

_entry_points = importlib.metadata.entry_points


def entry_points(**selection):
    if selection.get("name") == "otlp_proto_http":
        return _entry_points(group="otelres-test-nothing")
    return _entry_points(**selection)


importlib.metadata.entry_points = entry_points
sys.modules["opentelemetry.exporter.prometheus"] = None
"""


@pytest.mark.parametrize(
    ("env", "variable", "extra"),
    [
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}, "OTEL_TRACES_EXPORTER", "otlp"),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, "OTEL_TRACES_EXPORTER", "otlp"),
        (
            {"OTEL_TRACES_EXPORTER": "console", "OTEL_METRICS_EXPORTER": "otlp"},
            "OTEL_METRICS_EXPORTER",
            "otlp",
        ),
        ({"OTEL_METRICS_EXPORTER": "prometheus"}, "OTEL_METRICS_EXPORTER", "prometheus"),
    ],
    ids=["endpoint", "traces", "metrics", "prometheus"],
)
def test_an_exporter_not_installed_names_the_extra(
    run_app: RunApp, env: dict[str, str], variable: str, extra: str
) -> None:
    """An exporter asked for in OTEL_* but not installed is a ConfigError naming the variable and
    the extra to install; no provider is set up (nothing half-done).
    """
    source = app(
        HIDE_EXPORTERS,
        INSTRUMENT_OR_ERROR,
        """
        from opentelemetry import metrics
        providers = trace.get_tracer_provider(), metrics.get_meter_provider()
        print("PROVIDERS", *(type(provider).__name__ for provider in providers))
        """,
    )
    proc = run_app(source, env)
    error = result(proc)["error"]
    assert isinstance(error, dict)
    assert error["key"] == variable
    hint = f"pip install 'otelres[{extra}]'"
    assert hint in error["allowed"]
    assert hint in error["message"]
    assert "PROVIDERS ProxyTracerProvider _ProxyMeterProvider" in proc.stdout
