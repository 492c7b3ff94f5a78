"""structlog events: retries, suppressed and exhausted retries, transitions and rate-limited
rejections, each with the breaker and the current trace and span ids; otelres.logging.configure()."""

from __future__ import annotations

import io
import json
import logging
import re
from typing import TYPE_CHECKING, Any

import pytest
import structlog
from telemetry_support import NAME, NO_JITTER, Script, attempt_call, resilience, run

import otelres
import otelres.logging
import otelres.telemetry
from otelres.telemetry import _activation, names
from otelres.testing import FakeClock

if TYPE_CHECKING:
    from collections.abc import Callable

    from opentelemetry.sdk.trace import ReadableSpan
    from telemetry_support import Otel

Logs = list[dict[str, Any]]
TRIPS_AT_2 = otelres.BreakerPolicy(consecutive_failures=2)


def of(logs: Logs, event: str) -> Logs:
    return [e for e in logs if e["event"] == event]


def ids_of(span: ReadableSpan) -> dict[str, str]:
    return {"trace_id": f"{span.context.trace_id:032x}", "span_id": f"{span.context.span_id:016x}"}


def assert_ids(entry: dict[str, Any], span: ReadableSpan) -> None:
    assert re.fullmatch(r"[0-9a-f]{32}", entry["trace_id"])
    assert re.fullmatch(r"[0-9a-f]{16}", entry["span_id"])
    assert {k: entry[k] for k in ("trace_id", "span_id")} == ids_of(span)


def test_retry_events(otel: Otel, logs: Logs, mode: str) -> None:
    """One info otelres.retry per retry, with breaker, attempt, delay, reason and the call span's ids."""
    run(mode, resilience(), Script(ConnectionError, TimeoutError, "ok"))
    retries = of(logs, names.LOG_RETRY)
    assert [{k: e[k] for k in ("log_level", "breaker", "attempt", "delay", "reason")} for e in retries] == [
        {"log_level": "info", "breaker": NAME, "attempt": 1, "delay": 0.1, "reason": "connect"},
        {"log_level": "info", "breaker": NAME, "attempt": 2, "delay": 0.2, "reason": "timeout"},
    ]
    call = otel.the_call_span()
    for entry in retries:
        assert_ids(entry, call)
    assert of(logs, names.LOG_RETRY_EXHAUSTED) == []


def test_suppressed_retry_event(otel: Otel, logs: Logs, mode: str) -> None:
    """A retry the budget forbids logs info otelres.retry.suppressed with its attempt and reason."""
    res = resilience(budget=otelres.BudgetPolicy(min_retries=0, ratio=0.0))
    assert isinstance(attempt_call(mode, res, Script(ConnectionError)), ConnectionError)
    (entry,) = of(logs, names.LOG_RETRY_SUPPRESSED)
    assert {k: entry[k] for k in ("log_level", "breaker", "attempt", "reason")} == {
        "log_level": "info",
        "breaker": NAME,
        "attempt": 1,
        "reason": "budget",
    }
    assert_ids(entry, otel.the_call_span())
    assert of(logs, names.LOG_RETRY) == []
    assert of(logs, names.LOG_RETRY_EXHAUSTED) == []


def test_exhausted_once_per_call(otel: Otel, logs: Logs, mode: str) -> None:
    """otelres.retry.exhausted is one warning per exhausted call, not one per attempt."""
    res = resilience()
    for _ in range(2):
        assert isinstance(attempt_call(mode, res, Script(ConnectionError)), ConnectionError)
    exhausted = of(logs, names.LOG_RETRY_EXHAUSTED)
    assert [{k: e[k] for k in ("log_level", "breaker", "attempts", "reason")} for e in exhausted] == [
        {"log_level": "warning", "breaker": NAME, "attempts": 3, "reason": "connect"}
    ] * 2
    assert len(of(logs, names.LOG_RETRY)) == 4
    for entry, call in zip(exhausted, otel.call_spans(), strict=True):
        assert_ids(entry, call)
    # The only warnings of two failing calls (the breaker stays closed: 6 of 20 calls).
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == [names.LOG_RETRY_EXHAUSTED] * 2


def test_single_attempt_failure_is_not_exhaustion(otel: Otel, logs: Logs, mode: str) -> None:
    """A call with one attempt allowed fails without an otelres.retry.exhausted line."""
    res = resilience(retry=NO_JITTER.evolve(attempts=1))
    assert isinstance(attempt_call(mode, res, Script(ConnectionError)), ConnectionError)
    assert logs == []


def test_transition_levels(otel: Otel, logs: Logs, mode: str) -> None:
    """otelres.circuit.transition is a warning when opening, info otherwise, with from, to and rate."""
    clock = FakeClock()
    res = resilience(breaker=TRIPS_AT_2, clock=clock)
    assert isinstance(attempt_call(mode, res, Script(ConnectionError)), ConnectionError)
    clock.advance(5.0)
    run(mode, res, Script("ok"))
    res.breaker.force_open()
    res.breaker.disable()
    res.breaker.reset()
    transitions = of(logs, names.LOG_CIRCUIT_TRANSITION)
    assert [
        (e["log_level"], e["from_state"], e["to_state"], e["failure_rate"], e["breaker"]) for e in transitions
    ] == [
        ("warning", "closed", "open", 1.0, NAME),
        ("info", "open", "half_open", 0.0, NAME),
        ("info", "half_open", "closed", 0.0, NAME),
        ("warning", "closed", "forced_open", 0.0, NAME),
        ("info", "forced_open", "disabled", 0.0, NAME),
        ("info", "disabled", "closed", 0.0, NAME),
    ]
    calls = otel.call_spans()
    assert_ids(transitions[0], calls[0])
    assert_ids(transitions[1], calls[1])
    assert_ids(transitions[2], calls[1])
    # Outside any span: no ids at all, rather than zeros.
    assert all("trace_id" not in e and "span_id" not in e for e in transitions[3:])


def test_events_carry_the_applications_span_ids_outside_a_call(otel: Otel, logs: Logs) -> None:
    """An event outside any call carries the ids of whatever span is current (the application's)."""
    res = resilience()
    with otel.tracer.start_as_current_span("admin") as admin:
        res.breaker.force_open()
    (entry,) = of(logs, names.LOG_CIRCUIT_TRANSITION)
    assert entry["span_id"] == f"{admin.get_span_context().span_id:016x}"
    assert entry["trace_id"] == f"{admin.get_span_context().trace_id:032x}"


def test_rejections_are_rate_limited(make_otel: Callable[..., Otel], logs: Logs, mode: str) -> None:
    """N rejections within the interval give one line; the next line after it carries suppressed=N-1."""
    otel = make_otel(rejected_log_interval=10.0)
    log_clock = FakeClock()
    assert _activation._logs is not None
    _activation._logs._clock = log_clock.monotonic  # the LogEvents' clock, injected
    res = resilience()
    res.breaker.force_open()
    logs.clear()
    for _ in range(5):
        assert isinstance(attempt_call(mode, res, Script("ok")), otelres.CircuitOpenError)
        log_clock.advance(1.0)
    (first,) = of(logs, names.LOG_CALL_REJECTED)
    assert {k: first[k] for k in ("log_level", "breaker", "retry_after", "suppressed")} == {
        "log_level": "warning",
        "breaker": NAME,
        "retry_after": 5.0,
        "suppressed": 0,
    }
    assert_ids(first, otel.call_spans()[0])
    log_clock.advance(5.5)  # 10.5 s after the first line
    assert isinstance(attempt_call(mode, res, Script("ok")), otelres.CircuitOpenError)
    lines = of(logs, names.LOG_CALL_REJECTED)
    assert [e["suppressed"] for e in lines] == [0, 4]
    assert_ids(lines[1], otel.call_spans()[-1])
    # Every rejection is still on its own span.
    assert len(otel.call_spans()) == 6


def test_rejection_lines_are_limited_per_breaker(logs: Logs, mode: str) -> None:
    """Each breaker has its own allowance: a flood on one does not silence another's first line."""
    otelres.telemetry.enable(rejected_log_interval=3600.0)
    a, b = resilience("https://a.example.com:443"), resilience("https://b.example.com:443")
    a.breaker.force_open()
    b.breaker.force_open()
    for _ in range(3):
        attempt_call(mode, a, Script("ok"))
    attempt_call(mode, b, Script("ok"))
    lines = of(logs, names.LOG_CALL_REJECTED)
    assert [(e["breaker"], e["suppressed"]) for e in lines] == [
        ("https://a.example.com:443", 0),
        ("https://b.example.com:443", 0),
    ]
    # Logs only (no providers): no span, so no ids.
    assert all("trace_id" not in e for e in lines)


def test_logs_flow_without_providers(logs: Logs, mode: str) -> None:
    """With telemetry enabled and no providers, events still reach structlog, without trace ids."""
    otelres.telemetry.enable()
    run(mode, resilience(), Script(ConnectionError, "ok"))
    (entry,) = of(logs, names.LOG_RETRY)
    assert entry["breaker"] == NAME
    assert "trace_id" not in entry
    assert "span_id" not in entry


def test_nothing_is_logged_when_disabled(logs: Logs, mode: str) -> None:
    """Without telemetry enabled, otelres writes no structlog events."""
    otelres.telemetry.enable()
    otelres.telemetry.disable()
    res = resilience(breaker=TRIPS_AT_2)
    assert isinstance(attempt_call(mode, res, Script(ConnectionError)), ConnectionError)
    assert isinstance(attempt_call(mode, res, Script("ok")), otelres.CircuitOpenError)
    assert logs == []


# -- otelres.logging.configure() ----------------------------------------------------------------


def json_lines(stream: io.StringIO) -> Logs:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_configure_writes_json_lines_with_trace_ids(otel: Otel, mode: str) -> None:
    """configure(json=True) makes each event one JSON line with level, timestamp and trace ids."""
    stream = io.StringIO()
    assert otelres.logging.configure(stream=stream, json=True, force=True) is True
    run(mode, resilience(), Script(ConnectionError, "ok"))
    (line,) = json_lines(stream)
    assert line["event"] == names.LOG_RETRY
    assert line["level"] == "info"
    assert line["breaker"] == NAME
    assert line["reason"] == "connect"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", line["timestamp"])
    assert_ids(line, otel.the_call_span())


def test_configure_adds_trace_ids_to_application_events(otel: Otel) -> None:
    """The configured processor gives the application's own events the current span's ids, and none
    outside a span."""
    stream = io.StringIO()
    otelres.logging.configure(stream=stream, json=True, force=True)
    log = structlog.get_logger("app")
    with otel.tracer.start_as_current_span("handler") as handler:
        log.info("inside", user="u1")
    log.info("outside")
    inside, outside = json_lines(stream)
    assert inside["event"] == "inside"
    assert inside["user"] == "u1"
    assert inside["span_id"] == f"{handler.get_span_context().span_id:016x}"
    assert inside["trace_id"] == f"{handler.get_span_context().trace_id:032x}"
    assert outside["event"] == "outside"
    assert "trace_id" not in outside
    assert "span_id" not in outside


def test_configure_level_filters(otel: Otel, mode: str) -> None:
    """configure(level=WARNING) keeps the exhausted warning and drops the info retry lines."""
    stream = io.StringIO()
    otelres.logging.configure(stream=stream, json=True, force=True, level=logging.WARNING)
    assert isinstance(attempt_call(mode, resilience(), Script(ConnectionError)), ConnectionError)
    assert [(e["event"], e["level"]) for e in json_lines(stream)] == [(names.LOG_RETRY_EXHAUSTED, "warning")]


def test_configure_defaults_to_json_when_not_a_terminal() -> None:
    """Without json=, a stream that is not a terminal gets JSON lines."""
    stream = io.StringIO()
    assert otelres.logging.configure(stream=stream) is True
    structlog.get_logger("app").info("hello")
    (line,) = json_lines(stream)
    assert line["event"] == "hello"


def test_configure_does_nothing_when_structlog_is_configured() -> None:
    """configure() returns False and changes nothing when the application configured structlog."""
    own = io.StringIO()
    structlog.configure(
        processors=[structlog.processors.KeyValueRenderer()],
        logger_factory=structlog.PrintLoggerFactory(own),
    )
    before = structlog.get_config()
    ignored = io.StringIO()
    assert otelres.logging.configure(stream=ignored, json=True) is False
    assert structlog.get_config() == before
    structlog.get_logger("app").info("hello")
    assert own.getvalue() == "event='hello'\n"
    assert ignored.getvalue() == ""


def test_configure_force_reconfigures() -> None:
    """configure(force=True) replaces an existing configuration."""
    structlog.configure(processors=[structlog.processors.KeyValueRenderer()])
    stream = io.StringIO()
    assert otelres.logging.configure(stream=stream, json=True, force=True) is True
    structlog.get_logger("app").info("hello")
    assert json_lines(stream)[0]["event"] == "hello"


@pytest.mark.parametrize("configured", [False, True])
def test_enabling_telemetry_never_configures_structlog(configured: bool) -> None:
    """otelres.telemetry.enable() leaves structlog's configuration (or its absence) as it was."""
    if configured:
        structlog.configure(processors=[structlog.processors.KeyValueRenderer()])
    before = (structlog.is_configured(), structlog.get_config())
    otelres.telemetry.enable()
    assert (structlog.is_configured(), structlog.get_config()) == before
