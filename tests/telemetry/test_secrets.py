"""Secrets never leave in telemetry: a breaker named with a password, retried, opened and
rejecting, exports no trace of the password in spans, metrics or logs."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

import pytest

import otelres

if TYPE_CHECKING:
    from telemetry_support import Otel

    from otelres.testing import FakeClock

SECRET = "S3CRET"  # noqa: S105 - the secret the test hunts for
WRITTEN = f"postgresql://app:{SECRET}@db:5432/app?sslpassword={SECRET}&sslmode=require"


def refuse() -> None:
    raise ConnectionRefusedError("connection refused")


def test_no_secret_in_spans_metrics_or_logs(
    otel: Otel, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Spans (names, attributes, events, exceptions), metric points and log records are searched."""
    res = otelres.Resilience(
        WRITTEN,
        clock=clock,
        retry=otelres.RetryPolicy(attempts=3, jitter="none"),
        breaker=otelres.BreakerPolicy(consecutive_failures=2),
    )
    with caplog.at_level(logging.DEBUG, logger="otelres"):
        with pytest.raises(ConnectionRefusedError):
            res.call(refuse)
        with pytest.raises(otelres.CircuitOpenError) as rejected:
            res.call(refuse)
    assert SECRET not in str(rejected.value)
    spans = [span.to_json() for span in otel.spans()]
    assert spans
    data = otel.reader.get_metrics_data()
    assert data is not None
    metrics = data.to_json()
    assert "postgresql://db:5432/app?sslmode=require" in metrics
    logs = [record.getMessage() + json.dumps(record.__dict__, default=str) for record in caplog.records]
    assert logs
    for exported in (*spans, metrics, *logs):
        assert SECRET not in exported
