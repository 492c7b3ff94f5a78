"""The ecosystem's conventions, in real processes: ``instrument(tracer_provider=...,
meter_provider=...)`` as OpenTelemetry's instrumentors take them, ``python -m otelres
--version``, and no "already instrumented" warning under ``opentelemetry-instrument`` or when
``instrument()`` is called twice."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

import otelres

if TYPE_CHECKING:
    from collections.abc import Callable

    RunApp = Callable[..., subprocess.CompletedProcess[str]]

#: The warning OpenTelemetry's BaseInstrumentor logs when instrument() finds it already on.
ALREADY = "already instrumented"
NO_EXPORT = {"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none"}


def result(proc: subprocess.CompletedProcess[str]) -> Any:
    """The JSON an app printed on its ``RESULT`` line."""
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, proc.stdout + proc.stderr
    return json.loads(lines[0].removeprefix("RESULT "))


# -- instrument(tracer_provider=..., meter_provider=...) -------------------------------------------

PROVIDERS_APP = """
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import otelres


class Flaky(BaseHTTPRequestHandler):
    answers = [503, 200]

    def do_GET(self):
        status = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
threading.Thread(target=server.serve_forever, daemon=True).start()
url = f"http://127.0.0.1:{server.server_port}"

exporter = InMemorySpanExporter()
tracer_provider = TracerProvider()
tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
reader = InMemoryMetricReader()
meter_provider = MeterProvider(metric_readers=[reader])

otelres.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider, retry_base_delay=0.001)
with requests.Session() as session:
    session.trust_env = False
    status = session.get(url + "/price", timeout=5).status_code

spans = exporter.get_finished_spans()
call = [s for s in spans if s.instrumentation_scope.name == "otelres"]
scopes = sorted(
    {sm.scope.name for rm in reader.get_metrics_data().resource_metrics for sm in rm.scope_metrics}
)
otelres_metrics = sorted(
    m.name
    for rm in reader.get_metrics_data().resource_metrics
    for sm in rm.scope_metrics
    if sm.scope.name == "otelres"
    for m in sm.metrics
)
print("RESULT " + json.dumps({
    "status": status,
    "spans": sorted([s.instrumentation_scope.name, s.kind.name] for s in spans),
    "clients_under_the_call": [
        s.parent is not None and s.parent.span_id == call[0].context.span_id
        for s in spans
        if s.kind is trace.SpanKind.CLIENT
    ],
    "metric_scopes": scopes,
    "otelres_metrics": otelres_metrics,
    "global_tracer_provider": type(trace.get_tracer_provider()).__name__,
    "global_meter_provider": type(metrics.get_meter_provider()).__name__,
}))
"""


def test_instrument_takes_the_providers_as_opentelemetry_instrumentors_do(run_app: RunApp) -> None:
    """instrument(tracer_provider=, meter_provider=) sends otelres's call span and metrics and the
    requests instrumentation's CLIENT spans and metrics to those providers; with OTEL_* asking for
    console exporters, no global provider is set up for the signals given."""
    proc = run_app(PROVIDERS_APP, {"OTEL_TRACES_EXPORTER": "console", "OTEL_METRICS_EXPORTER": "console"})
    out = result(proc)
    requests_scope = "opentelemetry.instrumentation.requests"
    assert out == {
        "status": 200,
        "spans": [[requests_scope, "CLIENT"], [requests_scope, "CLIENT"], ["otelres", "INTERNAL"]],
        # The first retry after a quiet spell: the first attempt ended before anyone knew it would
        # be retried (a sibling of the call span, which starts then, back-dated); the retry is its child.
        "clients_under_the_call": [False, True],
        "metric_scopes": [requests_scope, "otelres"],
        "otelres_metrics": out["otelres_metrics"],
        "global_tracer_provider": "ProxyTracerProvider",
        "global_meter_provider": "_ProxyMeterProvider",
    }
    assert {"otelres.calls", "otelres.retries", "otelres.call.duration"} <= set(out["otelres_metrics"])
    assert '"trace_id"' not in proc.stdout  # no console exporter behind the app's back


def test_a_later_instrument_call_hands_otelres_its_providers(run_app: RunApp) -> None:
    """instrument() and then instrument(tracer_provider=...) sends otelres's own call spans there."""
    source = """
    import json

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    import otelres

    otelres.instrument()
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    otelres.instrument(tracer_provider=tracer_provider)
    answers = [ConnectionError("refused"), "ok"]

    def flaky():
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    res = otelres.Resilience("inventory", retry=otelres.RetryPolicy(base_delay=0.001))
    assert res.call(flaky) == "ok"
    print("RESULT " + json.dumps([s.name for s in exporter.get_finished_spans()]))
    """
    assert result(run_app(source, NO_EXPORT)) == ["otelres inventory"]


# -- python -m otelres --version -------------------------------------------------------------------


def test_version_flag_prints_the_version_and_exits_0(clean_env: dict[str, str]) -> None:
    """`python -m otelres --version` prints "otelres 0.1.0" (the distribution's version) and exits 0."""
    done = subprocess.run(
        [sys.executable, "-m", "otelres", "--version"],
        env=clean_env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, f"otelres {otelres.__version__}\n", "")
    assert otelres.__version__ == importlib.metadata.version("otelres")


# -- no "already instrumented" ---------------------------------------------------------------------

TWICE = """
import requests

import otelres

otelres.instrument()
otelres.instrument()
otelres.uninstrument()
otelres.instrument()
print("RESULT " + '"' + type(requests.Session.__dict__["request"]).__name__ + '"')
"""


def run_under_opentelemetry_instrument(
    source: str, tmp_path: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    launcher = Path(sys.executable).parent / "opentelemetry-instrument"
    assert launcher.exists(), f"no {launcher}: opentelemetry-instrumentation is not installed here"
    app = tmp_path / "app.py"
    app.write_text(textwrap.dedent(source), encoding="utf-8")
    return subprocess.run(
        [str(launcher), sys.executable, str(app)],
        env={**env, **NO_EXPORT},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_instrument_under_opentelemetry_instrument_warns_nothing(
    tmp_path: Path, clean_env: dict[str, str]
) -> None:
    """Under opentelemetry-instrument (which already turned otelres's instrumentors on through
    their entry points), instrument() logs no "already instrumented" warning, and requests stays
    patched."""
    proc = run_under_opentelemetry_instrument(TWICE, tmp_path, clean_env)
    assert result(proc) == "FunctionWrapper"
    assert ALREADY not in proc.stderr, proc.stderr


def test_instrument_twice_warns_nothing(run_app: RunApp) -> None:
    """instrument() twice, and again after uninstrument(), logs no "already instrumented" warning."""
    proc = run_app(TWICE, NO_EXPORT)
    assert result(proc) == "FunctionWrapper"
    assert ALREADY not in proc.stderr, proc.stderr


def test_instrument_after_the_application_turned_an_instrumentor_on(run_app: RunApp) -> None:
    """An application that turned otelres's requests instrumentor and OpenTelemetry's on itself gets
    no "already instrumented" warning from instrument(), one wrapper on Session.request, and
    uninstrument() takes otelres's off."""
    source = """
    import requests
    from opentelemetry.instrumentation.requests import RequestsInstrumentor as OtelRequests

    import otelres
    from otelres.instrumentation.requests import RequestsInstrumentor

    OtelRequests().instrument()
    RequestsInstrumentor().instrument()
    otelres.instrument()
    inner = requests.Session.__dict__["request"].__wrapped__
    otelres.uninstrument()
    after = requests.Session.__dict__["request"]
    print("RESULT " + json.dumps([type(inner).__name__, type(after).__name__]))
    """
    proc = run_app("import json\n" + textwrap.dedent(source), NO_EXPORT)
    assert result(proc) == ["function", "function"]
    assert ALREADY not in proc.stderr, proc.stderr
