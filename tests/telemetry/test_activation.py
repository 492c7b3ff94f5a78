"""Turning telemetry on and off: what is registered, what active() says, and the fast path that
keeps otelres's cost near zero when no SDK is installed (structurally: no Flow is built)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest
from telemetry_support import Script, in_trouble, resilience, run

import otelres
import otelres._resilience
import otelres.telemetry
from otelres import _events
from otelres._flow import Flow
from otelres._sdk import has_meter_provider, has_tracer_provider
from otelres.telemetry import names

if TYPE_CHECKING:
    from collections.abc import Callable

    from telemetry_support import Otel

    Logs = list[dict[str, Any]]

OFF = {"logs": False, "traces": False, "metrics": False}


def test_no_global_providers_in_the_test_process() -> None:
    """The test process has no global SDK providers (the in-process tests rely on it)."""
    assert not has_tracer_provider()
    assert not has_meter_provider()


def test_active_is_all_off_by_default() -> None:
    """Before enable(), active() reports nothing and no listener is registered."""
    assert otelres.telemetry.active() == OFF
    assert _events.listeners == ()
    assert _events.call_listeners == ()


def test_enable_without_providers_keeps_the_fast_path(logs: Logs, mode: str) -> None:
    """With no providers anywhere, enable() registers the log listener only: no per-call listener."""
    otelres.telemetry.enable()
    assert otelres.telemetry.active() == {"logs": True, "traces": False, "metrics": False}
    assert _events.call_listeners == ()
    assert len(_events.listeners) == 1
    run(mode, resilience(), Script(ConnectionError, "ok"))
    assert [e["event"] for e in logs] == [names.LOG_RETRY]


def test_enable_with_providers_registers_a_per_call_listener(otel: Otel) -> None:
    """Given providers, enable() reports traces and metrics through one per-call listener."""
    assert otelres.telemetry.active() == {"logs": True, "traces": True, "metrics": True}
    assert len(_events.listeners) == 2
    assert len(_events.call_listeners) == 1


@pytest.mark.parametrize("signal", ["traces", "metrics"])
def test_one_provider_one_signal(fresh_providers: Callable[[], Otel], mode: str, signal: str) -> None:
    """A tracer provider alone gives spans and no metrics; a meter provider alone, the reverse."""
    otel = fresh_providers()
    if signal == "traces":
        otelres.telemetry.enable(tracer_provider=otel.tracer_provider)
    else:
        otelres.telemetry.enable(meter_provider=otel.meter_provider)
    assert otelres.telemetry.active() == {
        "logs": True,
        "traces": signal == "traces",
        "metrics": signal == "metrics",
    }
    run(mode, resilience(), Script(ConnectionError, "ok"))
    assert len(otel.call_spans()) == (1 if signal == "traces" else 0)
    assert otel.values(names.CALLS, names.ATTR_OUTCOME) == ({} if signal == "traces" else {"success": 1})


def test_disable_removes_everything(otel: Otel, logs: Logs, mode: str) -> None:
    """After disable(), no listener is left, active() is all off, and calls report nothing."""
    otelres.telemetry.disable()
    assert otelres.telemetry.active() == OFF
    assert _events.listeners == ()
    assert _events.call_listeners == ()
    res = resilience(breaker=otelres.BreakerPolicy(consecutive_failures=2))
    run(mode, res, Script(ConnectionError, "ok"))
    res.breaker.force_open()
    with pytest.raises(otelres.CircuitOpenError):
        run(mode, res, Script("ok"))
    assert otel.spans() == []
    # Instruments already created stay with their meter (disable()'s docstring): the state gauge
    # still reads the breakers, but nothing is counted.
    assert set(otel.metrics()) <= {names.CIRCUIT_STATE}
    assert logs == []
    otelres.telemetry.disable()  # idempotent
    assert otelres.telemetry.active() == OFF


def test_enable_twice_registers_nothing_twice(otel: Otel, logs: Logs, mode: str) -> None:
    """A second enable() with the same providers adds no listener: one span and one line per event."""
    otelres.telemetry.enable(tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider)
    otelres.telemetry.enable()
    assert len(_events.listeners) == 2
    assert len(_events.call_listeners) == 1
    run(mode, resilience(), Script(ConnectionError, "ok"))
    assert len(otel.call_spans()) == 1
    assert [e["event"] for e in logs] == [names.LOG_RETRY]
    assert otel.values(names.CALLS, names.ATTR_OUTCOME) == {"success": 1}
    assert otel.values(names.RETRIES, names.ATTR_RETRY_REASON) == {"connect": 1}


def test_enable_twice_without_providers_registers_one_listener() -> None:
    """enable() twice with no providers keeps exactly one (log) listener."""
    otelres.telemetry.enable()
    otelres.telemetry.enable()
    assert len(_events.listeners) == 1
    assert _events.call_listeners == ()


def test_enable_again_after_disable_reports_again(fresh_providers: Callable[[], Otel], mode: str) -> None:
    """disable() then enable() with new providers reports spans to the new ones only."""
    first, second = fresh_providers(), fresh_providers()
    otelres.telemetry.enable(tracer_provider=first.tracer_provider)
    otelres.telemetry.disable()
    otelres.telemetry.enable(tracer_provider=second.tracer_provider)
    run(mode, resilience(), Script(ConnectionError, "ok"))
    assert first.spans() == []
    assert len(second.call_spans()) == 1


def test_enable_with_new_providers_uses_them(fresh_providers: Callable[[], Otel]) -> None:
    """enable() with other providers, without disable() in between, reports to the providers given last."""
    first, second = fresh_providers(), fresh_providers()
    otelres.telemetry.enable(tracer_provider=first.tracer_provider)
    otelres.telemetry.enable(tracer_provider=second.tracer_provider)
    resilience().call(Script(ConnectionError, "ok"))
    assert (len(first.spans()), len(second.spans())) == (0, 1)
    assert len(_events.call_listeners) == 1


def test_enable_with_the_other_provider_keeps_the_first(fresh_providers: Callable[[], Otel]) -> None:
    """enable(tracer_provider=...) then enable(meter_provider=...) reports spans and metrics both."""
    otel = fresh_providers()
    otelres.telemetry.enable(tracer_provider=otel.tracer_provider)
    otelres.telemetry.enable(meter_provider=otel.meter_provider)
    assert otelres.telemetry.active() == {"logs": True, "traces": True, "metrics": True}
    resilience().call(Script(ConnectionError, "ok"))
    assert len(otel.call_spans()) == 1
    assert otel.values(names.CALLS, names.ATTR_OUTCOME) == {"success": 1}
    assert len(_events.call_listeners) == 1


# -- the fast path, structurally ----------------------------------------------------------------


class Flows:
    """Counts the Flows built (each call that leaves the drivers' fast path builds one)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.built = 0
        counter = self

        class CountingFlow(Flow):
            __slots__ = ()

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                counter.built += 1
                super().__init__(*args, **kwargs)

        monkeypatch.setattr(otelres._resilience, "Flow", CountingFlow)


@pytest.fixture
def flows(monkeypatch: pytest.MonkeyPatch) -> Flows:
    return Flows(monkeypatch)


def test_success_without_sdk_builds_no_flow(flows: Flows, logs: Logs, mode: str) -> None:
    """Telemetry enabled, no SDK: a successful call takes the fast path (no Flow), and a failing first
    attempt still hands over to the flow, which logs its retry."""
    otelres.telemetry.enable()
    res = resilience()
    for _ in range(3):
        assert run(mode, res, Script("ok")) == "ok"
    assert flows.built == 0
    assert run(mode, res, Script(ConnectionError, "ok")) == "ok"
    assert flows.built == 1
    assert [e["event"] for e in logs] == [names.LOG_RETRY]


def test_decorated_success_without_sdk_builds_no_flow(flows: Flows) -> None:
    """The decorator forms (sync and async) take the fast path too while no SDK is installed."""
    otelres.telemetry.enable()
    res = resilience()

    @res
    def fetch() -> str:
        return "ok"

    @res
    async def afetch() -> str:
        return "ok"

    assert fetch() == "ok"
    assert asyncio.run(afetch()) == "ok"
    assert flows.built == 0


def test_success_with_sdk_builds_no_flow(otel: Otel, flows: Flows, mode: str) -> None:
    """With real providers a plain success keeps the fast path: no Flow, no call span; it is
    counted and its duration recorded all the same."""
    res = resilience()
    for _ in range(3):
        run(mode, res, Script("ok"))
    assert flows.built == 0
    assert otel.call_spans() == []
    assert otel.values(names.CALLS, names.ATTR_OUTCOME) == {"success": 3}
    assert otel.values(names.CALL_DURATION, names.ATTR_OUTCOME)["success"][0] == 3


def test_success_in_trouble_builds_a_flow(otel: Otel, flows: Flows, mode: str) -> None:
    """While the dependency is in trouble every call goes through the flow, with its span up front."""
    res = in_trouble(resilience())
    for _ in range(3):
        run(mode, res, Script("ok"))
    assert flows.built == 3
    assert len(otel.call_spans()) == 3
    assert otel.values(names.CALLS, names.ATTR_OUTCOME) == {"success": 3}


def test_a_result_a_check_passes_keeps_the_fast_path(otel: Otel, flows: Flows, mode: str) -> None:
    """With result predicates (an HTTP integration's 5xx check), a result they pass builds no Flow
    and no span; one they flag goes to the Flow, which judges it in full (a failure, its span)."""
    judged = otelres.BreakerPolicy(failure_result=lambda r: r == 503)
    res = resilience(breaker=judged, retry=otelres.RetryPolicy(attempts=1))
    for _ in range(3):
        assert run(mode, res, Script(200)) == 200
    assert flows.built == 0
    assert otel.call_spans() == []
    assert run(mode, res, Script(503)) == 503
    assert flows.built == 1
    (span,) = otel.call_spans()
    assert span.attributes[names.ATTR_OUTCOME] == "failure"
    assert otel.values(names.CALLS, names.ATTR_OUTCOME) == {"success": 3, "failure": 1}
    assert res.breaker.stats().failures == 1


def test_a_result_check_that_raises_sends_the_call_to_the_flow(otel: Otel, flows: Flows) -> None:
    """A predicate that raises is the Flow's to read (the breaker counts a failure and the bug
    reaches the caller, as before the fast path asked), not the fast path's to ignore."""

    def broken(result: object) -> bool:
        raise RuntimeError("bug in the predicate")

    res = resilience(
        breaker=otelres.BreakerPolicy(failure_result=broken), retry=otelres.RetryPolicy(attempts=1)
    )
    with pytest.raises(RuntimeError, match="bug in the predicate"):
        res.call(Script("ok"))
    assert flows.built == 1
    assert res.breaker.stats().failures == 1
