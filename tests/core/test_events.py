"""otelres._events: one record type, one dispatch, and the deprecation path of the per-kind methods."""

from __future__ import annotations

import logging

import pytest

import otelres
from otelres import _events
from otelres.testing import FakeClock, capture_events

TRIPS_AT_2 = otelres.BreakerPolicy(consecutive_failures=2, open_seconds=5.0)


class Recorder(otelres.Listener):
    """A listener of today's interface: every event through on_event, calls through end_call."""

    per_call = True

    def __init__(self) -> None:
        self.events: list[otelres.Event] = []
        self.scopes: list[object] = []

    def on_event(self, event: otelres.Event) -> None:
        self.events.append(event)

    def start_call(self, breaker: str) -> object:
        return f"scope:{breaker}"

    def end_call(self, event: otelres.Event, scope: object) -> None:
        self.scopes.append(scope)
        self.events.append(event)


def failing() -> None:
    raise ConnectionError("refused")


def test_one_record_type_for_every_kind(clock: FakeClock) -> None:
    """Retries, exhaustion, transitions, rejections and calls all arrive as Event records."""
    recorder = Recorder()
    otelres.add_listener(recorder)
    res = otelres.Resilience(
        "dep", clock=clock, breaker=TRIPS_AT_2, retry=otelres.RetryPolicy(attempts=2, jitter="none")
    )
    with pytest.raises(ConnectionError):
        res.call(failing)
    with pytest.raises(otelres.CircuitOpenError):
        res.call(failing)
    kinds = [e.kind for e in recorder.events]
    assert kinds == ["retry", "transition", "exhausted", "call", "rejected", "call"]
    assert all(isinstance(e, otelres.Event) and e.breaker == "dep" for e in recorder.events)
    retry, transition, exhausted, call, rejected, rejected_call = recorder.events
    assert (retry.attempt, retry.delay, retry.reason) == (1, 0.1, "connect")
    assert transition.transition is not None
    assert (transition.transition.from_state, transition.transition.to_state) == ("closed", "open")
    assert (exhausted.attempt, exhausted.reason) == (2, "connect")
    assert (call.outcome, call.attempt, type(call.error)) == ("failure", 2, ConnectionError)
    assert rejected.retry_after == 5.0
    assert (rejected_call.outcome, rejected_call.attempt) == ("rejected", 0)
    assert recorder.scopes == ["scope:dep", "scope:dep"]


class OnDemand(Recorder):
    """A per-call listener that starts on demand: the start only for a call with something to say."""

    start_on_demand = True

    def __init__(self) -> None:
        super().__init__()
        self.starts: list[tuple[str, float]] = []

    def start_call(self, breaker: str, elapsed: float = 0.0) -> object:  # type: ignore[override]
        self.starts.append((breaker, elapsed))
        return f"scope:{breaker}"


def test_an_on_demand_listener_hears_every_end_and_only_the_starts_worth_a_scope(clock: FakeClock) -> None:
    """A plain success: end_call with scope None, no start, no Flow. A retried call: the start when
    the retry is decided, with the seconds the call has run, then its end with the scope; while
    the dependency is in trouble, the start comes before the first attempt (elapsed 0)."""
    listener = OnDemand()
    otelres.add_listener(listener)
    assert _events.on_demand_listeners == (listener,)
    assert _events.eager_listeners == ()
    res = otelres.Resilience("dep", clock=clock, retry=otelres.RetryPolicy(attempts=2, jitter="none"))
    assert res.call(lambda: "ok") == "ok"
    assert listener.starts == []
    assert listener.scopes == [None]
    (plain,) = listener.events
    assert (plain.kind, plain.outcome, plain.attempt) == ("call", "success", 1)

    outcomes = iter([ConnectionError("refused"), "ok"])

    def slow_then_ok() -> object:
        clock.advance(0.5)
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert res.call(slow_then_ok) == "ok"
    assert listener.starts == [("dep", 0.5)]  # started when the retry was decided, 0.5 s in
    assert listener.scopes == [None, "scope:dep"]
    assert [e.kind for e in listener.events[1:]] == ["retry", "call"]

    assert res.breaker.troubled()  # the failure above: every call now starts up front
    assert res.call(lambda: "ok") == "ok"
    assert listener.starts == [("dep", 0.5), ("dep", 0.0)]
    assert listener.scopes == [None, "scope:dep", "scope:dep"]
    otelres.remove_listener(listener)
    assert _events.on_demand_listeners == _events.call_listeners == ()


def test_an_on_demand_listener_that_raises_at_the_start_still_hears_the_end(clock: FakeClock) -> None:
    """A start that raises is logged and dropped; the end still comes, with scope None."""

    class Broken(OnDemand):
        def start_call(self, breaker: str, elapsed: float = 0.0) -> object:  # type: ignore[override]  # noqa: ARG002
            raise RuntimeError("broken")

    listener = Broken()
    otelres.add_listener(listener)
    try:
        res = otelres.Resilience("dep", clock=clock, retry=otelres.RetryPolicy(attempts=1))
        with pytest.raises(ConnectionError):
            res.call(failing)
    finally:
        otelres.remove_listener(listener)
    assert listener.scopes == [None]
    assert [(e.kind, e.outcome) for e in listener.events] == [("call", "failure")]


def test_event_is_immutable() -> None:
    """A record is shared by every listener: none can change it for the others."""
    event = otelres.Event("retry", "dep", attempt=1)
    with pytest.raises(AttributeError):
        event.attempt = 2  # type: ignore[misc]


def test_fields_give_the_figures_by_name() -> None:
    """Event.fields names a kind's figures as otelres.testing.Event did (attempts for calls)."""
    assert otelres.Event("retry", "d", attempt=1, delay=0.5, reason="x").fields == {
        "attempt": 1,
        "delay": 0.5,
        "reason": "x",
    }
    assert otelres.Event("call", "d", attempt=3, outcome="failure", duration=1.0).fields == {
        "outcome": "failure",
        "duration": 1.0,
        "attempts": 3,
    }
    assert otelres.Event("exhausted", "d", attempt=3, reason="x").fields == {"attempts": 3, "reason": "x"}
    assert otelres.Event("rejected", "d", retry_after=2.0).fields == {"retry_after": 2.0}
    assert otelres.Event("fallback", "d", reason="ConnectionError").fields == {"reason": "ConnectionError"}


class Legacy(otelres.Listener):
    """A listener written for otelres 0.1's per-kind methods."""

    per_call = True

    def __init__(self) -> None:
        self.seen: list[tuple[object, ...]] = []

    def on_retry(self, breaker: str, attempt: int, delay: float, reason: str) -> None:
        self.seen.append(("retry", breaker, attempt, delay, reason))

    def on_transition(self, transition: otelres.Transition) -> None:
        self.seen.append(("transition", transition.to_state.value))

    def on_rejected(self, breaker: str, retry_after: float) -> None:
        self.seen.append(("rejected", breaker, retry_after))

    def on_call_start(self, breaker: str) -> object:  # noqa: ARG002 - the legacy interface
        return "legacy-scope"

    def on_call(self, breaker: str, outcome: str, duration: float, attempts: int) -> None:  # noqa: ARG002
        self.seen.append(("call", breaker, outcome, attempts))

    def on_call_end(
        self,
        breaker: str,  # noqa: ARG002 - the legacy interface
        scope: object,
        outcome: str,  # noqa: ARG002
        attempts: int,  # noqa: ARG002
        duration: float,  # noqa: ARG002
        error: BaseException | None,
    ) -> None:
        self.seen.append(("call_end", scope, type(error).__name__ if error else None))


def test_legacy_listener_warns_once_and_keeps_working(clock: FakeClock) -> None:
    """A listener overriding the per-kind methods is told they are deprecated, and still hears everything."""
    legacy = Legacy()
    with pytest.warns(DeprecationWarning, match="on_event"):
        otelres.add_listener(legacy)
    res = otelres.Resilience(
        "dep", clock=clock, breaker=TRIPS_AT_2, retry=otelres.RetryPolicy(attempts=2, jitter="none")
    )
    with pytest.raises(ConnectionError):
        res.call(failing)
    with pytest.raises(otelres.CircuitOpenError):
        res.call(failing)
    assert legacy.seen == [
        ("retry", "dep", 1, 0.1, "connect"),
        ("transition", "open"),
        ("call", "dep", "failure", 2),
        ("call_end", "legacy-scope", "ConnectionError"),
        ("rejected", "dep", 5.0),
        ("call", "dep", "rejected", 0),
        ("call_end", "legacy-scope", "CircuitOpenError"),
    ]


def test_plain_listener_does_not_warn() -> None:
    """Registering a listener of today's interface warns of nothing (warnings are errors here)."""
    otelres.add_listener(Recorder())
    otelres.add_listener(otelres.Listener())


def test_listener_failures_are_logged_at_a_bounded_rate(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A listener that keeps raising is logged once per interval, with how many failures the silence held."""

    class Broken(otelres.Listener):
        def on_event(self, event: otelres.Event) -> None:  # noqa: ARG002 - always raises
            raise RuntimeError("bug")

    otelres.add_listener(Broken())
    res = otelres.Resilience("dep", clock=clock, retry=otelres.RetryPolicy(attempts=5, jitter="none"))
    with caplog.at_level(logging.WARNING, logger="otelres"), pytest.raises(ConnectionError):
        res.call(failing)  # 4 retries and the exhaustion: 5 failures of the listener
    lines = [r.getMessage() for r in caplog.records if "listener" in r.getMessage()]
    assert len(lines) == 1
    assert "Broken.on_event raised RuntimeError('bug')" in lines[0]
    assert "(0 more failures since the last such line)" in lines[0]
    # Past the interval the next failure is logged again, with the count of the silenced ones.
    _events.failures.INTERVAL = 0.0
    try:
        with caplog.at_level(logging.WARNING, logger="otelres"), pytest.raises(ConnectionError):
            res.call(failing)
    finally:
        del _events.failures.INTERVAL
    lines = [r.getMessage() for r in caplog.records if "listener" in r.getMessage()]
    assert "(4 more failures since the last such line)" in lines[1]


def test_capture_events_holds_the_core_records(clock: FakeClock) -> None:
    """otelres.testing captures the very records listeners get, fallbacks included."""
    res = otelres.Resilience(
        "dep",
        clock=clock,
        retry=otelres.RetryPolicy(attempts=1),
        fallback=otelres.Fallback.value("cached"),
    )
    with capture_events() as events:
        assert res.call(failing) == "cached"
    assert [e.kind for e in events.events] == ["fallback", "call"]
    assert events.events[0].reason == "ConnectionError"
    assert all(isinstance(e, otelres.Event) for e in events.events)


def test_an_eager_listener_registered_during_a_plain_call_hears_nothing_of_it(clock: FakeClock) -> None:
    """The fast path chose its listeners when the call began: one registered meanwhile (another
    thread) hears neither the start nor the end of that call."""
    on_demand = OnDemand()
    eager = Recorder()
    otelres.add_listener(on_demand)
    res = otelres.Resilience("dep", clock=clock)

    def registers() -> str:
        otelres.add_listener(eager)
        return "ok"

    try:
        assert res.call(registers) == "ok"
    finally:
        otelres.remove_listener(eager)
        otelres.remove_listener(on_demand)
    assert eager.events == []
    assert on_demand.scopes == [None]
