"""Setting up the OpenTelemetry SDK from the standard ``OTEL_*`` variables, when
the application has not set up its own providers.

The work is the SDK's public API: exporters are found by their entry points
(``opentelemetry_traces_exporter``, ``opentelemetry_metrics_exporter``, as
``opentelemetry-instrument`` finds them), a TracerProvider with a
BatchSpanProcessor per span exporter and a MeterProvider with a reader per
metric exporter are set globally. otelres decides which exporters the variables
ask for, with these differences from a bare SDK set-up:

- nothing is exported unless something asks for it: an exporter variable, or
  ``OTEL_EXPORTER_OTLP_ENDPOINT`` (which then means OTLP), so that no service
  starts sending OTLP to localhost by surprise;
- ``otlp`` without a protocol means ``http/protobuf``, the specification's
  default, so that the gRPC exporter is not needed;
- the OpenTelemetry HTTP client instrumentations' duration histograms keep no
  server address or port (:func:`http_client_views`): one series per host
  called would grow without bound in a service that calls many hosts;
- ``prometheus`` serves each process's metrics on a port of its own, the first
  free one from ``OTEL_EXPORTER_PROMETHEUS_PORT`` upwards (:mod:`otelres._prometheus`),
  where the SDK's exporter binds that one port and fails in every worker but
  the first of a pre-fork server.
- an exporter asked for but not installed is a :class:`~otelres.ConfigError`
  naming the variable and what to install: the OTLP and Prometheus exporters
  are otelres's extras (``pip install 'otelres[otlp]'``, ``'otelres[prometheus]'``),
  not dependencies, so that a plain ``pip install otelres`` stays small.

Each process has its own ``service.instance.id``: the SDK (1.45, as tested) makes
one per process and a new one in a forked child; otelres relies on that.

An application's own providers are always kept.
"""

from __future__ import annotations

import importlib
import os
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Literal

from opentelemetry import metrics, trace

from ._errors import ConfigError
from ._prometheus import metric_reader

if TYPE_CHECKING:
    from collections.abc import Collection, Iterable, Mapping

__all__ = [
    "HTTP_CLIENT_ATTRIBUTES",
    "INSTALL_HINTS",
    "configure_sdk",
    "exporter_names",
    "has_meter_provider",
    "has_tracer_provider",
    "http_client_views",
]

Signal = Literal["traces", "metrics"]
_PROTOCOLS = {"http/protobuf": "otlp_proto_http", "grpc": "otlp_proto_grpc"}


def exporter_names(signal: Signal, env: Mapping[str, str]) -> list[str]:
    """The exporter entry-point names the environment asks for, for one signal."""
    var = f"OTEL_{signal.upper()}_EXPORTER"
    raw = env.get(var)
    if raw is None:
        endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get(
            f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT"
        )
        raw = "otlp" if endpoint else "none"
    names = [name.strip().lower() for name in raw.split(",") if name.strip()]
    if not names or names == ["none"]:
        return []
    result = []
    for name in names:
        if name == "none":
            raise ConfigError(var, raw, "'none' alone, or a list of exporters")
        if name == "otlp":
            protocol_var = f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL"
            if protocol_var not in env:
                protocol_var = "OTEL_EXPORTER_OTLP_PROTOCOL"
            protocol = (env.get(protocol_var) or "http/protobuf").strip()
            if protocol not in _PROTOCOLS:
                raise ConfigError(protocol_var, protocol, "http/protobuf | grpc")
            name = _PROTOCOLS[protocol]  # noqa: PLW2901 - the entry point the name stands for
        result.append(name)
    return result


def has_tracer_provider() -> bool:
    """Whether a real (not the API's proxy or no-op) TracerProvider is installed."""
    provider = trace.get_tracer_provider()
    return not isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider))


def has_meter_provider() -> bool:
    """Whether a real (not the API's proxy or no-op) MeterProvider is installed."""
    provider = metrics.get_meter_provider()
    # The API's proxy class is private: compared by name.
    return (
        not isinstance(provider, metrics.NoOpMeterProvider)
        and type(provider).__name__ != "_ProxyMeterProvider"
    )


def configure_sdk(
    env: Mapping[str, str] | None = None,
    *,
    skip: Collection[Signal] = (),
    prometheus_ports: int | None = None,
) -> dict[str, list[str]]:
    """Install SDK providers for the signals the environment asks for and the
    application has not set up; returns the exporters installed per signal.

    The signals in ``skip`` are left alone: the application handed otelres a
    provider of its own for them. ``prometheus_ports`` is how many ports a
    process may try for its ``/metrics`` (None: the ``prometheus_ports`` setting).
    """
    env = os.environ if env is None else env
    wanted: dict[Signal, list[str]] = {
        "traces": [] if "traces" in skip or has_tracer_provider() else exporter_names("traces", env),
        "metrics": [] if "metrics" in skip or has_meter_provider() else exporter_names("metrics", env),
    }
    if not wanted["traces"] and not wanted["metrics"]:
        return {"traces": [], "metrics": []}
    # Pull is otelres's own reader (a port per process); the other exporters are the SDK's.
    # Every exporter is found before anything is set up: a missing one changes nothing.
    pull = "prometheus" in wanted["metrics"]
    pushed = [name for name in wanted["metrics"] if name != "prometheus"]
    span_exporters = _load_exporters("traces", wanted["traces"], env)
    metric_exporters = _load_exporters("metrics", pushed, env)
    if pull:
        _require_prometheus(env)
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415 - the SDK only when there is work

    resource = Resource.create()
    if span_exporters:
        _install_tracer_provider(span_exporters.values(), resource)
    readers = [*metric_exporters.values()]
    if pull:
        if prometheus_ports is None:
            from ._config import current  # noqa: PLC0415 - the settings only when pull is asked for

            prometheus_ports = current().prometheus_ports
        readers.append(metric_reader(env, prometheus_ports))
    if readers:
        _install_meter_provider(readers, resource)
    return {"traces": list(span_exporters), "metrics": [*metric_exporters, *(["prometheus"] if pull else [])]}


#: The attributes the OpenTelemetry HTTP client instrumentations' duration histograms keep
#: when otelres sets up the SDK: method, status, scheme, protocol and error type; never
#: the server's address and port, which make one series per host called.
HTTP_CLIENT_ATTRIBUTES = frozenset(
    {
        "http.request.method",
        "http.response.status_code",
        "error.type",
        "network.protocol.version",
        "url.scheme",
        "http.method",
        "http.status_code",
        "http.scheme",
        "http.flavor",
    }
)
#: The HTTP client duration histograms, under the old and the stable semantic conventions.
HTTP_CLIENT_INSTRUMENTS = ("http.client.duration", "http.client.request.duration")


def http_client_views() -> list[Any]:
    """SDK Views that bound the OpenTelemetry HTTP client instrumentations' metrics to
    :data:`HTTP_CLIENT_ATTRIBUTES` (a service that calls 6,000 hosts would otherwise
    export 6,000 series of each). otelres installs them when it sets the SDK up; an
    application that makes its own MeterProvider passes them as ``views=``.
    """
    from opentelemetry.sdk.metrics.view import View  # noqa: PLC0415 - the SDK only when asked

    return [
        View(instrument_name=name, attribute_keys=set(HTTP_CLIENT_ATTRIBUTES))
        for name in HTTP_CLIENT_INSTRUMENTS
    ]


#: What installs an exporter that otelres knows, by entry-point name: the extra, or the package.
INSTALL_HINTS = {
    "otlp_proto_http": "pip install 'otelres[otlp]'",
    "otlp_proto_grpc": "pip install opentelemetry-exporter-otlp-proto-grpc",
    "prometheus": "pip install 'otelres[prometheus]'",
}


def _missing(signal: Signal, name: str, env: Mapping[str, str], why: str) -> ConfigError:
    """The error for an exporter that cannot be had: names the variable and what to install."""
    var = f"OTEL_{signal.upper()}_EXPORTER"
    hint = f" ({INSTALL_HINTS[name]})" if name in INSTALL_HINTS else ""
    return ConfigError(var, env.get(var, "otlp"), f"an installed exporter{hint}; {why}")


def _load_exporters(signal: Signal, names: Iterable[str], env: Mapping[str, str]) -> dict[str, type]:
    """The exporter classes of ``names``, from the entry-point group of ``signal``
    (``opentelemetry_traces_exporter``, ``opentelemetry_metrics_exporter``).
    """
    from opentelemetry.sdk.metrics.export import MetricExporter, MetricReader  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import SpanExporter  # noqa: PLC0415

    group = f"opentelemetry_{signal}_exporter"
    kinds: tuple[type, ...] = (SpanExporter,) if signal == "traces" else (MetricExporter, MetricReader)
    found: dict[str, type] = {}
    for name in names:
        points = entry_points(group=group, name=name)
        if not points:
            raise _missing(signal, name, env, f"no exporter {name!r} is installed (entry points {group})")
        try:
            exporter = next(iter(points)).load()
        except ImportError as exc:  # installed, but a package it needs is not
            raise _missing(signal, name, env, f"{name!r} of {group} cannot be imported: {exc}") from None
        # A pull exporter is a MetricReader itself; a push one is wrapped in a periodic reader.
        if not (isinstance(exporter, type) and issubclass(exporter, kinds)):
            raise _missing(signal, name, env, f"{name!r} of {group} is not a {signal} exporter")
        found[name] = exporter
    return found


def _require_prometheus(env: Mapping[str, str]) -> None:
    """A ConfigError naming the extra when Prometheus pull is asked for without its packages."""
    for module in ("opentelemetry.exporter.prometheus", "prometheus_client"):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise _missing("metrics", "prometheus", env, f"{module} cannot be imported: {exc}") from None


def _install_tracer_provider(exporters: Iterable[type], resource: Any) -> None:
    """A TracerProvider with a BatchSpanProcessor per exporter, set globally (the SDK's
    sampler and id generator from ``OTEL_TRACES_SAMPLER``, as a bare SDK set-up has them).
    """
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415

    provider = TracerProvider(resource=resource)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter()))
    trace.set_tracer_provider(provider)


def _install_meter_provider(exporters: Iterable[Any], resource: Any) -> None:
    """A MeterProvider with a reader per exporter (a pull exporter is a reader itself)
    and :func:`http_client_views`, set globally (the SDK's public API).
    """
    from opentelemetry import metrics as metrics_api  # noqa: PLC0415
    from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415
    from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader  # noqa: PLC0415

    readers = []
    for exporter in exporters:
        made = exporter() if isinstance(exporter, type) else exporter
        readers.append(made if isinstance(made, MetricReader) else PeriodicExportingMetricReader(made))
    metrics_api.set_meter_provider(
        MeterProvider(resource=resource, metric_readers=readers, views=http_client_views())
    )
