"""The OpenTelemetry HTTP client instrumentation that instrument() turns on keeps one duration
series per (method, status, ...), not one per host called, when otelres sets the SDK up; and an
application's own MeterProvider bounds it with otelres.telemetry.http_client_views()."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import requests
from e2e_helpers import CHILD_TIMEOUT, clean_environ, free_port
from opentelemetry.instrumentation.requests import RequestsInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client.parser import text_string_to_metric_families

import otelres.telemetry

HOSTS = 25

CHILD = textwrap.dedent(
    """
    import socket, sys, urllib.request
    import requests
    import otelres

    otelres.instrument(retry_attempts=1)
    for _ in range({hosts}):
        with socket.socket() as s:  # a port nobody listens on: refused at once, a distinct host:port
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            requests.get(f"http://127.0.0.1:{{port}}/", timeout=2)
        except requests.ConnectionError:
            pass
    with urllib.request.urlopen("http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
        sys.stdout.write(response.read().decode())
    """
)


def duration_series(text: str) -> set[frozenset[tuple[str, str]]]:
    """The label sets of the HTTP client duration histograms (one per series, buckets aside)."""
    found: set[frozenset[tuple[str, str]]] = set()
    for family in text_string_to_metric_families(text):
        if family.name.startswith("http_client") and "duration" in family.name:
            for sample in family.samples:
                found.add(frozenset((k, v) for k, v in sample.labels.items() if k != "le"))
    return found


def test_otelres_sdk_set_up_bounds_http_client_series() -> None:
    """Calls to 25 distinct host:port pairs export a handful of http.client duration series, not 25."""
    metrics_port = free_port()
    env = clean_environ() | {
        "OTEL_METRICS_EXPORTER": "prometheus",
        "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
        "OTEL_EXPORTER_PROMETHEUS_PORT": str(metrics_port),
    }
    child = subprocess.run(
        [sys.executable, "-c", CHILD.format(hosts=HOSTS, metrics_port=metrics_port)],
        env=env,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    series = duration_series(child.stdout)
    assert series, child.stdout[:2000]
    assert len(series) <= 3
    assert not any(key in ("net_peer_port", "server_port", "server_address") for s in series for key, _ in s)


def test_http_client_views_bound_an_applications_own_provider(unused_port: int) -> None:
    """An application's MeterProvider with views=http_client_views() keeps no per-host attribute."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], views=otelres.telemetry.http_client_views())
    instrumentor = RequestsInstrumentor()
    instrumentor.instrument(meter_provider=provider)
    try:
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{unused_port}/", timeout=2)
    finally:
        instrumentor.uninstrument()
    data = reader.get_metrics_data()
    attributes = [
        dict(point.attributes or {})
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name in ("http.client.duration", "http.client.request.duration")
        for point in metric.data.data_points
    ]
    assert attributes
    assert all(key in otelres.telemetry.HTTP_CLIENT_ATTRIBUTES for point in attributes for key in point)


@pytest.fixture
def unused_port() -> int:
    """A loopback port nobody listens on."""
    return free_port()
