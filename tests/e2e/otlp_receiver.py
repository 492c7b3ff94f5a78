"""A real OTLP/HTTP receiver on loopback: the stand-in for Jaeger in the tests.

It accepts what the OpenTelemetry OTLP/HTTP exporters send (protobuf POSTs on
``/v1/traces`` and ``/v1/metrics``, plain or gzip), answers 200 with an empty
``Export*ServiceResponse`` like a collector does, decodes the requests with
``opentelemetry-proto`` and keeps plain Python records of the spans and metric
data points for assertions. :meth:`OtlpReceiver.wait_for` blocks on a condition
variable until what a test waits for has arrived, or a timeout.
"""

from __future__ import annotations

import dataclasses
import gzip
import threading
import zlib
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanProto
from opentelemetry.proto.trace.v1.trace_pb2 import Status as StatusProto

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
    from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric as MetricProto

__all__ = ["Event", "MetricPoint", "OtlpReceiver", "ReceivedSpan"]


def _value(value: AnyValue) -> Any:
    """An OTLP ``AnyValue`` as the Python value it carries."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, kind)


def _attributes(pairs: Iterable[KeyValue]) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


@dataclasses.dataclass(frozen=True)
class Event:
    """One span event."""

    name: str
    attributes: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ReceivedSpan:
    """One decoded span with its resource and scope. Ids are lower-case hex ("" for no parent)."""

    name: str
    kind: str  # "INTERNAL", "CLIENT", ...
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    events: list[Event]
    status_code: str  # "UNSET", "OK", "ERROR"
    status_message: str
    resource: dict[str, Any]
    scope: str

    def events_named(self, name: str) -> list[Event]:
        """The span's events called ``name``, in order."""
        return [event for event in self.events if event.name == name]


@dataclasses.dataclass(frozen=True)
class MetricPoint:
    """One data point of one metric in one export request.

    ``value`` is the number of a sum or gauge point, the count of a histogram
    point (whose ``sum`` is set too). ``export`` numbers the requests, so the
    latest value of a cumulative series is the one with the highest number.
    """

    name: str
    kind: str  # "sum", "gauge", "histogram", ...
    unit: str
    attributes: dict[str, Any]
    value: float
    sum: float | None
    resource: dict[str, Any]
    scope: str
    export: int


def _points(metric: MetricProto, resource: dict[str, Any], scope: str, export: int) -> list[MetricPoint]:
    kind = metric.WhichOneof("data")
    if kind is None:
        return []
    points = []
    for point in getattr(metric, kind).data_points:
        total = None
        if kind in {"histogram", "exponential_histogram", "summary"}:
            value: float = point.count
            total = point.sum
        else:
            value = point.as_int if point.WhichOneof("value") == "as_int" else point.as_double
        points.append(
            MetricPoint(
                name=metric.name,
                kind=kind,
                unit=metric.unit,
                attributes=_attributes(point.attributes),
                value=value,
                sum=total,
                resource=resource,
                scope=scope,
                export=export,
            )
        )
    return points


class OtlpReceiver:
    """An OTLP/HTTP (protobuf) receiver on 127.0.0.1; use as a context manager."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._spans: list[ReceivedSpan] = []
        self._points: list[MetricPoint] = []
        self._exports = 0
        #: One entry a request: (path, Content-Encoding or "", HTTP status answered).
        self.requests: list[tuple[str, str, int]] = []
        #: Requests that could not be decoded, with the reason (a test asserts it stays empty).
        self.errors: list[str] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-receiver", daemon=True)

    @property
    def port(self) -> int:
        """The port the receiver listens on."""
        return int(self._server.server_address[1])

    @property
    def endpoint(self) -> str:
        """The value for ``OTEL_EXPORTER_OTLP_ENDPOINT``."""
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> OtlpReceiver:  # noqa: PYI034 - Self needs 3.11 or typing_extensions
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # -- what arrived ------------------------------------------------------------------

    @property
    def spans(self) -> list[ReceivedSpan]:
        """Every span received so far, in arrival order."""
        with self._cond:
            return list(self._spans)

    @property
    def points(self) -> list[MetricPoint]:
        """Every metric data point received so far, in arrival order."""
        with self._cond:
            return list(self._points)

    def metric_names(self) -> set[str]:
        """The names of the metrics received so far."""
        return {point.name for point in self.points}

    def latest(self, name: str) -> dict[frozenset[tuple[str, Any]], MetricPoint]:
        """The most recent data point of metric ``name`` for each attribute set."""
        found: dict[frozenset[tuple[str, Any]], MetricPoint] = {}
        for point in self.points:
            if point.name == name:
                found[frozenset(point.attributes.items())] = point
        return found

    def wait_for(self, condition: Callable[[OtlpReceiver], bool], timeout: float = 10.0) -> bool:
        """Block until ``condition(self)`` holds (re-checked whenever a request arrives) or
        ``timeout`` seconds passed; returns whether it holds.
        """
        with self._cond:
            return self._cond.wait_for(lambda: condition(self), timeout=timeout)

    # -- decoding ----------------------------------------------------------------------

    def _store_traces(self, body: bytes) -> None:
        request = ExportTraceServiceRequest.FromString(body)
        spans = []
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                scope = scope_spans.scope.name
                for span in scope_spans.spans:
                    kind = SpanProto.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_")
                    status = StatusProto.StatusCode.Name(span.status.code).removeprefix("STATUS_CODE_")
                    spans.append(
                        ReceivedSpan(
                            name=span.name,
                            kind=kind,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            attributes=_attributes(span.attributes),
                            events=[Event(e.name, _attributes(e.attributes)) for e in span.events],
                            status_code=status,
                            status_message=span.status.message,
                            resource=resource,
                            scope=scope,
                        )
                    )
        with self._cond:
            self._spans.extend(spans)
            self._cond.notify_all()

    def _store_metrics(self, body: bytes) -> None:
        request = ExportMetricsServiceRequest.FromString(body)
        with self._cond:
            self._exports += 1
            export = self._exports
        points = []
        for resource_metrics in request.resource_metrics:
            resource = _attributes(resource_metrics.resource.attributes)
            for scope_metrics in resource_metrics.scope_metrics:
                scope = scope_metrics.scope.name
                for metric in scope_metrics.metrics:
                    points.extend(_points(metric, resource, scope, export))
        with self._cond:
            self._points.extend(points)
            self._cond.notify_all()

    def _handle(self, path: str, encoding: str, body: bytes) -> tuple[int, bytes]:
        """Decode one request; the HTTP status and body to answer."""
        routes = {
            "/v1/traces": (self._store_traces, ExportTraceServiceResponse),
            "/v1/metrics": (self._store_metrics, ExportMetricsServiceResponse),
        }
        if path not in routes:
            return HTTPStatus.NOT_FOUND, b""
        store, response = routes[path]
        try:
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            elif encoding not in {"", "identity"}:
                raise ValueError(f"unsupported Content-Encoding {encoding!r}")
            store(body)
        except (OSError, EOFError, zlib.error, ValueError, DecodeError) as exc:
            with self._cond:
                self.errors.append(f"{path}: {type(exc).__name__}: {exc}")
                self._cond.notify_all()
            return HTTPStatus.BAD_REQUEST, b""
        return HTTPStatus.OK, response().SerializeToString()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the exporters' sessions expect

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                encoding = (self.headers.get("Content-Encoding") or "").strip().lower()
                path = self.path.split("?", 1)[0]
                status, answer = receiver._handle(path, encoding, body)
                with receiver._cond:
                    receiver.requests.append((path, encoding, int(status)))
                    receiver._cond.notify_all()
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base signature
                """Quiet: the tests assert on what arrived, not on an access log."""

        return Handler
