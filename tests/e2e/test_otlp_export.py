"""End to end over OTLP/HTTP: an app in its own process calls ``otelres.instrument()``
with nothing but ``OTEL_SERVICE_NAME`` and ``OTEL_EXPORTER_OTLP_ENDPOINT`` set, and
what reaches a real receiver on loopback (the stand-in for Jaeger) is what a user
would see: the call spans, their CLIENT attempt spans, the events, the status and
every metric under its fixed name.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from typing import TYPE_CHECKING

import pytest
from e2e_helpers import CHILD_TIMEOUT, clean_environ
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from otlp_receiver import OtlpReceiver, ReceivedSpan

from otelres.telemetry import names

if TYPE_CHECKING:
    from collections.abc import Iterator

API = "https://api.example.com:443"
FLAKY = "https://flaky.example.com:443"

APP = """
import json

import otelres
from opentelemetry import trace

otelres.instrument()
tracer = trace.get_tracer("app")
retry = otelres.RetryPolicy(base_delay=0.001, jitter="none")
api = otelres.Resilience("https://api.example.com:443", retry=retry)
# A private breaker that opens after two failures in a row.
flaky = otelres.Resilience(
    "https://flaky.example.com:443", retry=retry, breaker=otelres.BreakerPolicy(consecutive_failures=2)
)


def endpoint(failures):
    # A dependency failing its first `failures` attempts (None: every attempt);
    # each attempt is a CLIENT span, like an instrumented HTTP client makes.
    count = 0

    def attempt():
        nonlocal count
        count += 1
        with tracer.start_as_current_span("GET", kind=trace.SpanKind.CLIENT) as span:
            span.set_attribute("app.attempt", count)
            if failures is None or count <= failures:
                raise ConnectionError(f"connection refused (attempt {count})")
            return "ok"

    return attempt


results = {"recovered": api.call(endpoint(1))}
for label, res in (("exhausted", api), ("tripped", flaky), ("rejected", flaky)):
    try:
        res.call(endpoint(None))
    except Exception as exc:
        results[label] = type(exc).__name__
print("RESULT " + json.dumps(results))
"""


@dataclasses.dataclass
class Exported:
    """What the app printed and what the receiver got from it."""

    receiver: OtlpReceiver
    results: dict[str, str]
    stderr: str

    def call_spans(self, breaker: str) -> list[ReceivedSpan]:
        """otelres's INTERNAL call spans for ``breaker``, in the order they arrived."""
        return [s for s in self.receiver.spans if s.name == f"otelres {breaker}"]

    def call_span(self, breaker: str, outcome: str) -> ReceivedSpan:
        """The one call span of ``breaker`` that ended with ``outcome``."""
        found = [s for s in self.call_spans(breaker) if s.attributes.get(names.ATTR_OUTCOME) == outcome]
        assert len(found) == 1, f"{breaker} {outcome}: {found}"
        return found[0]

    def children(self, span: ReceivedSpan) -> list[ReceivedSpan]:
        """The spans whose parent is ``span``, by the app's attempt number."""
        found = [s for s in self.receiver.spans if s.parent_span_id == span.span_id]
        return sorted(found, key=lambda s: s.attributes.get("app.attempt", 0))

    def counts(self, metric: str) -> dict[tuple[str, ...], float]:
        """The latest value of each series of ``metric``, keyed by its attribute values (sorted by key)."""
        return {
            tuple(value for _, value in sorted(key)): point.value
            for key, point in self.receiver.latest(metric).items()
        }


EXPECTED_METRICS = {
    names.CALLS,
    names.CALL_DURATION,
    names.RETRIES,
    names.RETRIES_SUPPRESSED,
    names.CIRCUIT_STATE,
    names.CIRCUIT_TRANSITIONS,
    names.RETRY_DELAY,
    names.REJECTIONS,
}
# Call spans: 2 for API, 2 for FLAKY; CLIENT spans: 2 + 3 for API, 2 for FLAKY (the rejection makes none).
EXPECTED_SPANS = 4 + 7


def _complete(receiver: OtlpReceiver) -> bool:
    """Every span arrived, and a metrics export that counts all four calls."""
    calls = receiver.latest(names.CALLS)
    return (
        len(receiver.spans) >= EXPECTED_SPANS
        and receiver.metric_names() >= EXPECTED_METRICS
        and sum(point.value for point in calls.values()) >= 4
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exported]:
    """Run the app once against a receiver; the tests below read what arrived."""
    script = tmp_path_factory.mktemp("otlp") / "app.py"
    script.write_text(textwrap.dedent(APP), encoding="utf-8")
    with OtlpReceiver() as receiver:
        env = {
            **clean_environ(),
            "OTEL_SERVICE_NAME": "checkout",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_METRIC_EXPORT_INTERVAL": "100",
            # Traces gzip-compressed, metrics plain: the receiver decodes both.
            "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION": "gzip",
        }
        proc = subprocess.run(
            [sys.executable, str(script)],
            env=env,
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        assert len(lines) == 1, proc.stdout
        # The SDK's atexit shutdown flushed before the process ended; the wait is a safety net.
        receiver.wait_for(_complete, timeout=10)
        yield Exported(receiver, json.loads(lines[0].removeprefix("RESULT ")), proc.stderr)


# -- the receiver itself -------------------------------------------------------------------------


def _post(url: str, body: bytes, encoding: str | None = None) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/x-protobuf"}
    if encoding:
        headers["Content-Encoding"] = encoding
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310 - loopback
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def _trace_request(name: str) -> bytes:
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    attribute = resource_spans.resource.attributes.add()
    attribute.key, attribute.value.string_value = "service.name", "probe"
    span = resource_spans.scope_spans.add().spans.add()
    span.name, span.trace_id, span.span_id = name, b"\x01" * 16, b"\x02" * 8
    return request.SerializeToString()


def test_receiver_decodes_plain_and_gzip_and_answers_like_a_collector(otlp_receiver: OtlpReceiver) -> None:
    """The receiver decodes plain and gzip OTLP bodies and answers 200 with an empty Export response."""
    url = f"{otlp_receiver.endpoint}/v1/traces"
    status, body = _post(url, _trace_request("plain"))
    assert status == 200
    assert ExportTraceServiceResponse.FromString(body) == ExportTraceServiceResponse()
    status, _ = _post(url, gzip.compress(_trace_request("zipped")), "gzip")
    assert status == 200
    assert otlp_receiver.wait_for(lambda r: len(r.spans) == 2, timeout=5)
    assert [(s.name, s.resource["service.name"], s.span_id) for s in otlp_receiver.spans] == [
        ("plain", "probe", "02" * 8),
        ("zipped", "probe", "02" * 8),
    ]
    assert otlp_receiver.errors == []


def test_receiver_rejects_garbage_and_unknown_paths(otlp_receiver: OtlpReceiver) -> None:
    """A body that is not OTLP protobuf gets 400 and is recorded as an error; an unknown path 404."""
    assert _post(f"{otlp_receiver.endpoint}/v1/traces", b"not gzip", "gzip")[0] == 400
    assert _post(f"{otlp_receiver.endpoint}/v1/nothing", b"")[0] == 404
    assert len(otlp_receiver.errors) == 1
    assert otlp_receiver.spans == []
    assert not otlp_receiver.wait_for(lambda r: bool(r.spans), timeout=0.05)


# -- what the instrumented app exported ----------------------------------------------------------


def test_app_ran_as_expected(exported: Exported) -> None:
    """The app recovered once, exhausted once, tripped its breaker and was then rejected."""
    assert exported.results == {
        "recovered": "ok",
        "exhausted": "ConnectionError",
        "tripped": "ConnectionError",
        "rejected": "CircuitOpenError",
    }


def test_export_went_over_otlp_http_protobuf(exported: Exported) -> None:
    """The endpoint alone meant OTLP over http/protobuf, for traces (gzip as asked) and metrics."""
    receiver = exported.receiver
    assert receiver.errors == []
    seen = {(path, encoding) for path, encoding, status in receiver.requests if status == 200}
    assert ("/v1/traces", "gzip") in seen
    assert ("/v1/metrics", "") in seen


def test_resource_carries_the_service_name(exported: Exported) -> None:
    """Every span and every data point carries service.name=checkout on its resource."""
    receiver = exported.receiver
    assert len(receiver.spans) == EXPECTED_SPANS
    assert {s.resource.get("service.name") for s in receiver.spans} == {"checkout"}
    assert receiver.points
    assert {p.resource.get("service.name") for p in receiver.points} == {"checkout"}


def test_call_span_is_the_parent_of_its_attempts(exported: Exported) -> None:
    """The INTERNAL call span is the parent of the CLIENT attempt spans, in one trace. The first
    call (the dependency quiet until then) gets its span when the retry is decided: its first
    attempt is a root of its own; the next call (the dependency in trouble) has its span up front,
    parent of every attempt."""
    for outcome, attempts, first_child in (("success", 2, 2), ("failure", 3, 1)):
        call = exported.call_span(API, outcome)
        assert call.kind == "INTERNAL"
        assert call.scope == names.METER_NAME
        assert call.parent_span_id == ""
        assert call.attributes[names.ATTR_BREAKER] == API
        assert call.attributes[names.ATTR_ATTEMPTS] == attempts
        children = exported.children(call)
        assert [(c.kind, c.scope, c.attributes["app.attempt"]) for c in children] == [
            ("CLIENT", "app", n) for n in range(first_child, attempts + 1)
        ]
        assert {c.trace_id for c in children} == {call.trace_id}
    # Every attempt span arrived: 2 for the first call, 3 for the second, 2 + 0 for the flaky ones.
    assert len([s for s in exported.receiver.spans if s.kind == "CLIENT"]) == 7
    # Two logical calls are two traces.
    assert exported.call_span(API, "success").trace_id != exported.call_span(API, "failure").trace_id


def test_retry_events_carry_attempt_delay_and_reason(exported: Exported) -> None:
    """Each retry is an otelres.retry event on the call span with its attempt, delay and reason."""

    def retries(span: ReceivedSpan) -> list[dict[str, object]]:
        return [e.attributes for e in span.events_named(names.EVENT_RETRY)]

    assert retries(exported.call_span(API, "success")) == [
        {names.ATTR_ATTEMPT: 1, names.ATTR_RETRY_DELAY: 0.001, names.ATTR_RETRY_REASON: "connect"}
    ]
    assert retries(exported.call_span(API, "failure")) == [
        {names.ATTR_ATTEMPT: 1, names.ATTR_RETRY_DELAY: 0.001, names.ATTR_RETRY_REASON: "connect"},
        {names.ATTR_ATTEMPT: 2, names.ATTR_RETRY_DELAY: 0.002, names.ATTR_RETRY_REASON: "connect"},
    ]


def test_successful_call_span_has_no_error(exported: Exported) -> None:
    """A call that recovered after a retry is not an error and records no exception."""
    call = exported.call_span(API, "success")
    assert call.status_code != "ERROR"
    assert call.events_named("exception") == []


def test_exhausted_call_span_is_an_error_with_one_exception(exported: Exported) -> None:
    """The exhausted call's span has status ERROR and exactly one exception event, the last error."""
    call = exported.call_span(API, "failure")
    assert call.status_code == "ERROR"
    assert call.status_message == "ConnectionError"  # the type only: a message may carry credentials
    exceptions = call.events_named("exception")
    assert len(exceptions) == 1
    assert exceptions[0].attributes["exception.type"] == "ConnectionError"
    assert exceptions[0].attributes["exception.message"] == "connection refused (attempt 3)"


def test_transition_and_rejection_events(exported: Exported) -> None:
    """The call that trips the breaker carries the transition; the rejected call the rejection, no attempt."""
    tripped = exported.call_span(FLAKY, "failure")
    transitions = [e.attributes for e in tripped.events_named(names.EVENT_CIRCUIT_TRANSITION)]
    assert len(transitions) == 1
    assert transitions[0][names.ATTR_FROM_STATE] == "closed"
    assert transitions[0][names.ATTR_TO_STATE] == "open"
    assert isinstance(transitions[0][names.ATTR_FAILURE_RATE], float)
    # Its first attempt came before the span (the dependency was quiet); the retry after the
    # trip was not made.
    assert [c.attributes["app.attempt"] for c in exported.children(tripped)] == [2]
    assert tripped.status_code == "ERROR"

    rejected = exported.call_span(FLAKY, "rejected")
    assert exported.children(rejected) == []
    events = rejected.events_named(names.EVENT_CIRCUIT_REJECTED)
    assert len(events) == 1
    assert events[0].attributes[names.ATTR_RETRY_AFTER] > 0
    assert rejected.status_code == "ERROR"
    exceptions = rejected.events_named("exception")
    assert len(exceptions) == 1
    # The SDK records the qualified name of a non-builtin class.
    assert exceptions[0].attributes["exception.type"].rsplit(".", 1)[-1] == "CircuitOpenError"


def test_metrics_arrive_under_their_fixed_names(exported: Exported) -> None:
    """Every otelres instrument arrives under its exact name, in the otelres scope, with its unit."""
    receiver = exported.receiver
    otelres_names = {p.name for p in receiver.points if p.scope == names.METER_NAME}
    assert otelres_names == EXPECTED_METRICS
    units = {p.name: p.unit for p in receiver.points if p.scope == names.METER_NAME}
    assert units[names.CALL_DURATION] == "s"
    assert units[names.RETRY_DELAY] == "s"


def test_call_metrics_count_each_outcome(exported: Exported) -> None:
    """otelres.calls and otelres.call.duration count the calls by breaker and outcome."""
    expected = {(API, "success"): 1, (API, "failure"): 1, (FLAKY, "failure"): 1, (FLAKY, "rejected"): 1}
    assert exported.counts(names.CALLS) == expected
    durations = exported.receiver.latest(names.CALL_DURATION)
    assert {tuple(v for _, v in sorted(k)): p.value for k, p in durations.items()} == expected
    assert {p.kind for p in durations.values()} == {"histogram"}
    assert all(p.sum is not None and p.sum >= 0 for p in durations.values())


def test_retry_metrics(exported: Exported) -> None:
    """otelres.retries counts by reason; the retry an open circuit made pointless counts as suppressed."""
    assert exported.counts(names.RETRIES) == {(API, "connect"): 3, (FLAKY, "connect"): 1}
    assert exported.counts(names.RETRY_DELAY) == {(API, "connect"): 3, (FLAKY, "connect"): 1}
    assert exported.counts(names.RETRIES_SUPPRESSED) == {(FLAKY, "circuit_open"): 1}


def test_circuit_metrics(exported: Exported) -> None:
    """otelres.circuit.state shows 1 for each breaker's state and 0 for the others; one transition counted."""
    state = exported.counts(names.CIRCUIT_STATE)
    # Attribute values sorted by key: otelres.breaker, otelres.state.
    assert {key: value for key, value in state.items() if value} == {(API, "closed"): 1, (FLAKY, "open"): 1}
    assert set(state) == {(b, s) for b in (API, FLAKY) for s in names.STATES}
    assert exported.counts(names.CIRCUIT_TRANSITIONS) == {(FLAKY, "closed", "open"): 1}
