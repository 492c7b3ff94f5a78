"""A throttled call in the telemetry: counted as rejected and in otelres.rejections with its own
reason, an otelres.circuit.rejected span event saying throttled, a log line saying so."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pytest
from telemetry_support import NAME, Script, event_names, events, resilience, run

import otelres
from otelres.telemetry import names
from otelres.testing import FakeClock

if TYPE_CHECKING:
    from telemetry_support import Otel

EAGER = otelres.ThrottlePolicy(k=1.0, min_requests=2, window_seconds=10.0)


def throttled(mode: str) -> otelres.Resilience:
    """A Resilience whose throttle rejects its next call (two failures; the draw pinned to 0)."""
    res = resilience(
        breaker=otelres.BreakerPolicy(throttle=EAGER, minimum_calls=1000),
        retry=otelres.RetryPolicy(attempts=1),
        clock=FakeClock(),
    )
    res.breaker._throttle._random = lambda: 0.0  # type: ignore[union-attr]
    for _ in range(2):
        with pytest.raises(ConnectionError):
            run(mode, res, Script(ConnectionError))
    return res


def test_a_throttled_call_is_a_rejection_with_its_reason(
    otel: Otel, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    res = throttled(mode)
    otel.exporter.clear()
    with caplog.at_level(logging.WARNING, logger="otelres"), pytest.raises(otelres.CircuitOpenError):
        run(mode, res, Script("ok", tracer=otel.tracer))
    assert otel.values(names.CALLS, names.ATTR_OUTCOME) == {"failure": 2, "rejected": 1}
    assert otel.values(names.REJECTIONS, names.ATTR_REJECTION_REASON) == {"throttled": 1}
    (span,) = otel.spans()  # no attempt: the call span alone
    assert event_names(span) == [names.EVENT_CIRCUIT_REJECTED, "exception"]
    assert events(span, names.EVENT_CIRCUIT_REJECTED) == [
        {names.ATTR_RETRY_AFTER: 0.0, names.ATTR_REJECTION_REASON: "throttled"}
    ]
    (line,) = [r for r in caplog.records if r.getMessage().startswith(names.LOG_CALL_REJECTED)]
    assert line.reason == "throttled"  # type: ignore[attr-defined]
    assert line.breaker == NAME  # type: ignore[attr-defined]


def test_an_open_circuit_counts_as_circuit_open(otel: Otel, mode: str) -> None:
    res = resilience()
    res.breaker.transition_to("forced_open")
    with pytest.raises(otelres.CircuitOpenError):
        run(mode, res, Script("ok"))
    assert otel.values(names.REJECTIONS, names.ATTR_REJECTION_REASON) == {"circuit_open": 1}
