"""Metrics, read with an InMemoryMetricReader: the instrument names, kinds and units the README's
telemetry reference fixes, attribute keys and values from closed sets, and counts that match the
calls made exactly."""

from __future__ import annotations

import asyncio
import gc
from typing import TYPE_CHECKING, Any

import pytest
from opentelemetry.sdk.metrics.export import Gauge, Histogram, Sum
from telemetry_support import NAME, NO_JITTER, Script, attempt_call, resilience, run, run_with

import otelres
import otelres.telemetry
from otelres.telemetry import names
from otelres.testing import FakeClock

if TYPE_CHECKING:
    from collections.abc import Callable

    from telemetry_support import Otel

INSTRUMENTS = {
    names.CALLS: (Sum, "{call}"),
    names.CALL_DURATION: (Histogram, "s"),
    names.RETRIES: (Sum, "{retry}"),
    names.RETRIES_SUPPRESSED: (Sum, "{retry}"),
    names.CIRCUIT_STATE: (Gauge, "1"),
    names.CIRCUIT_TRANSITIONS: (Sum, "{transition}"),
    names.RETRY_DELAY: (Histogram, "s"),
    names.REJECTIONS: (Sum, "{call}"),
}
NO_BUDGET = otelres.BudgetPolicy(min_retries=0, ratio=0.0)
TRIPS_AT_2 = otelres.BreakerPolicy(consecutive_failures=2)
RETRY_REASONS = {"connect", "timeout", "error", "result", "status_503"}


def everything_once(mode: str, name: str = NAME) -> list[otelres.Resilience]:
    """Calls that make every instrument report: success, retries, a suppressed retry,
    a transition, a rejection and a fallback. Keep what it returns: the state gauge
    reads the breakers alive."""
    res = resilience(name, breaker=TRIPS_AT_2)
    assert run(mode, res, Script(ConnectionError, "ok")) == "ok"
    assert isinstance(attempt_call(mode, res, Script(ConnectionError)), ConnectionError)  # opens
    assert isinstance(attempt_call(mode, res, Script("ok")), otelres.CircuitOpenError)
    fallback = resilience(name, budget=NO_BUDGET, fallback=otelres.Fallback.value("cached"))
    assert run(mode, fallback, Script(TimeoutError)) == "cached"
    return [res, fallback]


def test_instrument_names_kinds_and_units(otel: Otel, mode: str) -> None:
    """Exactly the eight instruments of otelres.telemetry.names, each of its kind and unit."""
    assert set(INSTRUMENTS) == {
        "otelres.calls",
        "otelres.call.duration",
        "otelres.retries",
        "otelres.retries.suppressed",
        "otelres.circuit.state",
        "otelres.circuit.transitions",
        "otelres.retry.delay",
        "otelres.rejections",
    }
    alive = everything_once(mode)
    metrics = otel.metrics()
    assert set(metrics) == set(INSTRUMENTS)
    assert [r.breaker.state.value for r in alive] == ["open", "closed"]
    for name, (kind, unit) in INSTRUMENTS.items():
        metric = metrics[name]
        assert isinstance(metric.data, kind), name
        assert metric.unit == unit, name
        assert metric.description, name
        if isinstance(metric.data, Sum):
            assert metric.data.is_monotonic, name


def test_calls_and_durations_by_outcome(otel: Otel, mode: str) -> None:
    """otelres.calls and otelres.call.duration count each outcome exactly as often as it happened."""
    clock = FakeClock()
    res = resilience(clock=clock)
    for _ in range(3):
        run(mode, res, Script("ok"))
    run(mode, res, Script(ConnectionError, "ok"))  # success after one retry: 0.1 s
    for _ in range(2):
        assert isinstance(attempt_call(mode, res, Script(TimeoutError)), TimeoutError)  # 0.1 + 0.2 s
    res.breaker.transition_to("forced_open")
    for _ in range(4):
        assert isinstance(attempt_call(mode, res, Script("ok")), otelres.CircuitOpenError)
    with_fallback = resilience(clock=clock, fallback=otelres.Fallback.value(0))
    run(mode, with_fallback, Script(ConnectionError))  # fallback after 0.1 + 0.2 s

    assert otel.values(names.CALLS, names.ATTR_OUTCOME) == {
        "success": 4,
        "failure": 2,
        "rejected": 4,
        "fallback": 1,
    }
    assert otel.values(names.CALL_DURATION, names.ATTR_OUTCOME) == {
        "success": (4, 0.1),
        "failure": (2, 0.6),
        "rejected": (4, 0.0),
        "fallback": (1, 0.3),
    }
    # Collecting again reports the same totals: nothing is counted twice.
    assert otel.values(names.CALLS, names.ATTR_OUTCOME)["success"] == 4


def test_calls_are_counted_per_breaker(otel: Otel, mode: str) -> None:
    """Two breakers' calls are counted under their own names."""
    a, b = resilience("https://a.example.com:443"), resilience("https://b.example.com:443")
    for _ in range(2):
        run(mode, a, Script("ok"))
    run(mode, b, Script("ok"))
    assert otel.values(names.CALLS, names.ATTR_OUTCOME, breaker="https://a.example.com:443") == {"success": 2}
    assert otel.values(names.CALLS, names.ATTR_OUTCOME, breaker="https://b.example.com:443") == {"success": 1}


def test_retries_and_delays_by_reason(otel: Otel, mode: str) -> None:
    """otelres.retries and otelres.retry.delay count each retry once under its reason."""
    res = resilience(retry=NO_JITTER.evolve(attempts=5))
    run(mode, res, Script(ConnectionError, TimeoutError, ConnectionError, "ok"))
    assert otel.values(names.RETRIES, names.ATTR_RETRY_REASON) == {"connect": 2, "timeout": 1}
    # Delays 0.1 (connect), 0.2 (timeout), 0.4 (connect).
    assert otel.values(names.RETRY_DELAY, names.ATTR_RETRY_REASON) == {
        "connect": (2, 0.5),
        "timeout": (1, 0.2),
    }


def test_result_retries_use_the_policys_reason(otel: Otel, mode: str) -> None:
    """A retry on a result (an HTTP 503) is counted under the reason the policy gives it."""
    policy = NO_JITTER.evolve(
        retry_on_result=lambda status: status >= 500,
        reason=lambda exc, status: "error" if exc is not None else f"status_{status}",
    )
    res = resilience(retry=policy)
    assert run(mode, res, Script(503, 503, 200)) == 200
    assert otel.values(names.RETRIES, names.ATTR_RETRY_REASON) == {"status_503": 2}


@pytest.mark.parametrize("reason", ["budget", "deadline", "not_idempotent", "circuit_open"])
def test_suppressed_retries_by_reason(otel: Otel, mode: str, reason: str) -> None:
    """A retry that was due but not made is counted once under otelres.retries.suppressed with its reason."""
    options: dict[str, Any] = {}
    if reason == "budget":
        options["budget"] = NO_BUDGET
    elif reason == "deadline":
        options["retry"] = NO_JITTER.evolve(deadline=0.25)  # 0.1 fits, 0.1 + 0.2 does not
    elif reason == "circuit_open":
        options["breaker"] = TRIPS_AT_2
    res = resilience(**options)
    if reason == "not_idempotent":
        with pytest.raises(ConnectionError):
            run_with(mode, res, Script(ConnectionError), no_retry="not_idempotent")
    else:
        assert isinstance(attempt_call(mode, res, Script(ConnectionError)), ConnectionError)
    assert otel.values(names.RETRIES_SUPPRESSED, names.ATTR_RETRY_REASON) == {reason: 1}
    retries = 0 if reason in {"budget", "not_idempotent"} else 1
    assert sum(otel.values(names.RETRIES, names.ATTR_RETRY_REASON).values()) == retries


def test_transitions_by_from_and_to(otel: Otel, mode: str) -> None:
    """otelres.circuit.transitions counts each (from, to) pair exactly as often as it happened."""
    clock = FakeClock()
    res = resilience(breaker=TRIPS_AT_2, clock=clock)
    for _ in range(2):
        assert isinstance(attempt_call(mode, res, Script(ConnectionError)), ConnectionError)  # opens
        clock.advance(5.0)
        run(mode, res, Script("ok"))  # half-open probe closes
        clock.advance(60.0)
    res.breaker.force_open()
    res.breaker.reset()
    metric = otel.metrics()[names.CIRCUIT_TRANSITIONS]
    counted = {
        (p.attributes[names.ATTR_FROM_STATE], p.attributes[names.ATTR_TO_STATE]): p.value
        for p in metric.data.data_points
        if p.attributes[names.ATTR_BREAKER] == NAME
    }
    assert counted == {
        ("closed", "open"): 2,
        ("open", "half_open"): 2,
        ("half_open", "closed"): 2,
        ("closed", "forced_open"): 1,
        ("forced_open", "closed"): 1,
    }
    assert {frozenset(p.attributes) for p in metric.data.data_points} == {
        frozenset({names.ATTR_BREAKER, names.ATTR_FROM_STATE, names.ATTR_TO_STATE})
    }


def test_state_gauge_is_one_for_the_current_state(otel: Otel, mode: str) -> None:
    """Per breaker, otelres.circuit.state is 1 for its current state and 0 for the other four."""
    gc.collect()  # breakers of earlier tests must not stand in for these
    api, db = f"https://{mode}.example.com:443", f"postgresql://127.0.0.1:5432/{mode}"
    res_api, res_db = resilience(api, breaker=TRIPS_AT_2), resilience(db)
    run(mode, res_db, Script("ok"))
    assert isinstance(attempt_call(mode, res_api, Script(ConnectionError)), ConnectionError)

    def states(name: str) -> dict[str, int]:
        return otel.values(names.CIRCUIT_STATE, names.ATTR_STATE, breaker=name)

    def one_hot(current: str) -> dict[str, int]:
        return {state: int(state == current) for state in names.STATES}

    assert set(names.STATES) == {"closed", "open", "half_open", "forced_open", "disabled"}
    assert states(api) == one_hot("open")
    assert states(db) == one_hot("closed")
    res_db.breaker.disable()
    res_api.breaker.force_open()
    assert states(api) == one_hot("forced_open")
    assert states(db) == one_hot("disabled")


def test_no_attribute_value_leaks_url_parts(otel: Otel, mode: str) -> None:
    """Every metric and span attribute value is from a closed set or is the breaker name, even when
    the errors carry a URL with user, password, path and query."""
    leak = "https://alice:s3cret@api.example.com:443/v1/users?token=t0ken"
    alive = [*everything_once(mode), resilience(budget=NO_BUDGET)]
    assert attempt_call(mode, alive[-1], Script(ConnectionError(leak))) is not None

    closed: dict[str, set[object]] = {
        names.ATTR_BREAKER: {NAME},
        names.ATTR_OUTCOME: set(names.OUTCOMES),
        names.ATTR_STATE: set(names.STATES),
        names.ATTR_FROM_STATE: set(names.STATES),
        names.ATTR_TO_STATE: set(names.STATES),
        names.ATTR_RETRY_REASON: RETRY_REASONS | set(names.SUPPRESSED_REASONS),
        names.ATTR_REJECTION_REASON: set(names.REJECTION_REASONS),
    }
    seen: list[tuple[str, str, object]] = []
    for name, metric in otel.metrics().items():
        for point in metric.data.data_points:
            attributes = dict(point.attributes or {})
            if name == names.CIRCUIT_STATE and attributes[names.ATTR_BREAKER] != NAME:
                continue  # breakers of other tests still alive in the process
            seen.extend((name, key, value) for key, value in attributes.items())
    for span in otel.call_spans():
        seen.extend((span.name, key, value) for key, value in (span.attributes or {}).items())
        for event in span.events:
            if event.name.startswith("otelres."):
                seen.extend((event.name, k, v) for k, v in (event.attributes or {}).items())
    assert {key for _, key, _ in seen} >= set(closed)
    for where, key, value in seen:
        if key in closed:
            assert value in closed[key], (where, key, value)
        else:
            assert isinstance(value, (int, float)), (where, key, value)  # attempts, delays, rates
        assert not any(part in str(value) for part in ("alice", "s3cret", "/v1", "token", "?")), where


def test_calls_keep_counting_after_re_enabling(fresh_providers: Callable[[], Otel]) -> None:
    """Disabling and enabling again with the same meter provider keeps otelres.calls counting."""
    otel = fresh_providers()
    res = resilience()
    otelres.telemetry.enable(meter_provider=otel.meter_provider)
    res.call(Script("ok"))
    otelres.telemetry.disable()
    otelres.telemetry.enable(meter_provider=otel.meter_provider)
    res.call(Script("ok"))
    res.call(Script("ok"))
    assert otel.values(names.CALLS, names.ATTR_OUTCOME) == {"success": 3}
    assert otel.values(names.CALL_DURATION, names.ATTR_OUTCOME)["success"][0] == 3


def test_durations_measure_the_whole_call(otel: Otel) -> None:
    """otelres.call.duration spans the attempts and the backoffs between them (fake clock)."""
    clock = FakeClock()
    res = resilience(clock=clock)

    async def slow() -> str:
        clock.advance(1.5)
        await asyncio.sleep(0)
        return "ok"

    assert asyncio.run(res.acall(slow)) == "ok"
    assert otel.values(names.CALL_DURATION, names.ATTR_OUTCOME) == {"success": (1, 1.5)}


@pytest.mark.parametrize("how", ["new tracer provider", "re-enabled with the meter provider alone"])
def test_calls_keep_counting_when_only_the_meter_provider_is_kept(
    fresh_providers: Callable[[], Otel], how: str
) -> None:
    """otelres.calls keeps counting when the meter provider stays and the tracer provider changes."""
    otel, other = fresh_providers(), fresh_providers()
    res = resilience()
    otelres.telemetry.enable(tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider)
    res.call(Script("ok"))
    if how == "new tracer provider":
        otelres.telemetry.enable(tracer_provider=other.tracer_provider)
    else:
        otelres.telemetry.disable()
        otelres.telemetry.enable(meter_provider=otel.meter_provider)
    res.call(Script("ok"))
    assert otel.values(names.CALLS, names.ATTR_OUTCOME) == {"success": 2}


def test_a_degraded_handler_part_counts_as_a_fallback_call(otel: Any) -> None:
    """otelres.degrade() falling back counts one otelres.calls with outcome fallback for its part."""

    @otelres.degrade(["popular items"], name="recommendations")
    def recommendations() -> list[str]:
        raise otelres.CircuitOpenError("https://recs.internal:443", 1.0)

    assert recommendations() == ["popular items"]
    assert otel.values(names.CALLS, names.ATTR_OUTCOME, breaker="recommendations") == {"fallback": 1}
