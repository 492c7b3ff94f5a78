"""otelres.testing: the fake clock, testing mode, forced states and event capture each restore
what they changed; a listener that raises never breaks a call.
"""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

import otelres
from otelres import _events, testing
from otelres.testing import FakeClock, capture_events, forced_state


def failing(log: list[int]) -> None:
    log.append(1)
    raise ConnectionError("refused")


def attempts_and_sleeps(retry: otelres.RetryPolicy | None = None) -> tuple[int, list[float]]:
    """Run one always-failing call on a fresh fake clock: (attempts made, delays slept)."""
    clock = FakeClock()
    res = otelres.Resilience("dep", clock=clock, retry=retry or otelres.RetryPolicy(jitter="none"))
    log: list[int] = []
    with pytest.raises(ConnectionError):
        res.call(failing, log)
    return len(log), clock.sleeps


# -- FakeClock ----------------------------------------------------------------------------------


def test_fake_clock_starts_where_told() -> None:
    """FakeClock starts at ``start`` (monotonic) and ``wall`` (epoch): 1000 s and 1.7e9 s by default."""
    assert FakeClock().monotonic() == 1000.0
    assert FakeClock().wall() == 1_700_000_000.0
    clock = FakeClock(start=5.0, wall=100.0)
    assert (clock.monotonic(), clock.wall()) == (5.0, 100.0)


def test_fake_clock_is_a_clock() -> None:
    """FakeClock satisfies the otelres.Clock protocol, so it can be injected anywhere a clock goes."""
    assert isinstance(FakeClock(), otelres.Clock)


def test_fake_clock_stands_still_until_advanced(clock: FakeClock) -> None:
    """Time does not move by itself; advance() moves it by exactly the given seconds."""
    assert clock.monotonic() == clock.monotonic() == 1000.0
    clock.advance(2.5)
    assert clock.monotonic() == 1002.5
    clock.advance(0)
    assert clock.monotonic() == 1002.5
    assert clock.sleeps == []  # advancing is not sleeping


def test_fake_clock_wall_moves_with_monotonic(clock: FakeClock) -> None:
    """The wall clock moves together with the monotonic one (advance and sleep alike)."""
    offset = clock.wall() - clock.monotonic()
    clock.advance(10)
    clock.sleep(3)
    assert clock.monotonic() == 1013.0
    assert clock.wall() - clock.monotonic() == offset
    assert clock.wall() == 1_700_000_013.0


def test_fake_clock_rejects_going_back(clock: FakeClock) -> None:
    """advance() with a negative number raises ValueError and leaves the time as it was."""
    with pytest.raises(ValueError, match="cannot go back"):
        clock.advance(-0.001)
    assert clock.monotonic() == 1000.0


def test_fake_clock_sleep_records_and_advances(clock: FakeClock) -> None:
    """sleep() records each delay in order and advances time by it, without waiting."""
    clock.sleep(0.1)
    clock.sleep(0.2)
    clock.sleep(0.0)
    assert clock.sleeps == [0.1, 0.2, 0.0]
    assert clock.monotonic() == pytest.approx(1000.3)


def test_fake_clock_negative_sleep_is_recorded_but_does_not_go_back(clock: FakeClock) -> None:
    """A negative sleep is recorded (for assertions) but never moves time backwards."""
    clock.sleep(-1.0)
    assert clock.sleeps == [-1.0]
    assert clock.monotonic() == 1000.0


def test_fake_clock_asleep_records_advances_and_yields(clock: FakeClock) -> None:
    """asleep() records and advances like sleep() and lets another task run before it returns."""
    order: list[str] = []

    async def sleeper() -> None:
        order.append("sleeper before")
        await clock.asleep(5.0)
        order.append("sleeper after")

    async def other() -> None:
        order.append("other")

    async def main() -> None:
        # Scheduled in this order: without a yield inside asleep() the sleeper would finish first.
        await asyncio.gather(sleeper(), other())

    asyncio.run(main())
    assert order == ["sleeper before", "other", "sleeper after"]
    assert clock.sleeps == [5.0]
    assert clock.monotonic() == 1005.0


def test_fake_clock_is_thread_safe(clock: FakeClock) -> None:
    """Concurrent advance() and sleep() from many threads lose no time and no recorded sleep."""
    start = threading.Barrier(8)

    def work() -> None:
        start.wait(timeout=10)
        for _ in range(2000):
            clock.advance(1.0)
            clock.sleep(1.0)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert clock.monotonic() == 1000.0 + 8 * 2000 * 2
    assert len(clock.sleeps) == 8 * 2000


# -- testing_mode ----------------------------------------------------------------------------


def test_testing_mode_skips_sleeps_but_keeps_attempts() -> None:
    """testing_mode(): every attempt of the policy is made, and none of its delays is slept."""
    with testing.testing_mode():
        assert attempts_and_sleeps() == (3, [])


def test_testing_mode_caps_attempts() -> None:
    """testing_mode(attempts=1): one attempt whatever the policy; attempts=2 caps a 5-attempt policy."""
    with testing.testing_mode(attempts=1):
        assert attempts_and_sleeps() == (1, [])
    with testing.testing_mode(attempts=2):
        assert attempts_and_sleeps(otelres.RetryPolicy(attempts=5, jitter="none")) == (2, [])


def test_testing_mode_never_raises_attempts() -> None:
    """testing_mode(attempts=10) is a cap, not a target: a 3-attempt policy still makes 3."""
    with testing.testing_mode(attempts=10):
        assert attempts_and_sleeps() == (3, [])


def test_testing_mode_can_keep_sleeping() -> None:
    """testing_mode(sleep=True) sleeps the delays (on the injected clock)."""
    with testing.testing_mode(attempts=2, sleep=True):
        assert attempts_and_sleeps() == (2, [0.1])


def test_testing_mode_restores_on_exit() -> None:
    """After the block, attempts and sleeps are back to the policy's own."""
    assert attempts_and_sleeps() == (3, [0.1, 0.2])
    with testing.testing_mode(attempts=1):
        pass
    assert attempts_and_sleeps() == (3, [0.1, 0.2])


def test_testing_mode_restores_on_exception() -> None:
    """An exception escaping the block still restores the previous mode."""
    with pytest.raises(RuntimeError, match="boom"), testing.testing_mode(attempts=1):
        raise RuntimeError("boom")
    assert attempts_and_sleeps() == (3, [0.1, 0.2])


def test_testing_mode_nests() -> None:
    """An inner testing_mode restores the outer one on exit, not the default."""
    with testing.testing_mode(attempts=2):
        with testing.testing_mode(attempts=1):
            assert attempts_and_sleeps() == (1, [])
        assert attempts_and_sleeps() == (2, [])
    assert attempts_and_sleeps() == (3, [0.1, 0.2])


@pytest.mark.parametrize("attempts", [0, -1, True, False, 1.0, 2.5, "2"])
def test_testing_mode_validates_attempts(attempts: object) -> None:
    """attempts must be an integer >= 1 (not a bool, float or string): ValueError, and nothing changes."""
    with (
        pytest.raises(ValueError, match="attempts must be an integer >= 1"),
        testing.testing_mode(attempts=attempts),
    ):  # type: ignore[arg-type]
        pass  # pragma: no cover - never entered
    assert attempts_and_sleeps() == (3, [0.1, 0.2])


# -- forced_state ----------------------------------------------------------------------------


def test_forced_state_open_rejects_then_restores_closed(clock: FakeClock) -> None:
    """forced_state(breaker, "forced_open") rejects every call in the block; afterwards calls pass again."""
    res = otelres.Resilience("dep", clock=clock)
    with forced_state(res.breaker, "forced_open") as breaker:
        assert breaker is res.breaker
        assert breaker.state is otelres.State.FORCED_OPEN
        with pytest.raises(otelres.CircuitOpenError):
            res.call(lambda: "never")
    assert res.breaker.state is otelres.State.CLOSED
    assert res.call(lambda: "ok") == "ok"


def test_forced_state_by_name_uses_the_registered_breaker() -> None:
    """forced_state("name", ...) forces the registry's breaker, the one Resilience("name") shares."""
    res = otelres.Resilience("https://api.example.com:443")
    with forced_state("https://api.example.com:443", otelres.State.FORCED_OPEN) as breaker:
        assert breaker is res.breaker
        with pytest.raises(otelres.CircuitOpenError):
            res.call(lambda: "never")
    assert res.breaker.state is otelres.State.CLOSED


def test_forced_state_restores_on_exception(clock: FakeClock) -> None:
    """An exception escaping the block still puts the breaker back."""
    breaker = otelres.CircuitBreaker("dep", clock=clock)
    with pytest.raises(RuntimeError), forced_state(breaker, "forced_open"):
        raise RuntimeError("boom")
    assert breaker.state is otelres.State.CLOSED


def test_forced_state_restores_a_previous_open_state(clock: FakeClock) -> None:
    """A breaker that was open before the block is open again after it."""
    breaker = otelres.CircuitBreaker("dep", clock=clock)
    breaker.transition_to("open")
    with forced_state(breaker, "disabled"):
        assert breaker.state is otelres.State.DISABLED
    assert breaker.state is otelres.State.OPEN


def test_forced_state_restores_half_open_as_open(clock: FakeClock) -> None:
    """A half-open breaker comes back open (its probes are not restored), as documented."""
    breaker = otelres.CircuitBreaker("dep", otelres.BreakerPolicy(open_seconds=1.0), clock=clock)
    breaker.transition_to("open")
    clock.advance(1.0)
    token = breaker.acquire()  # turns it half-open and takes the one probe permit
    assert breaker.state is otelres.State.HALF_OPEN
    with forced_state(breaker, "forced_open"):
        pass
    assert breaker.state is otelres.State.OPEN
    breaker.on_ignored(token)


def test_forced_disabled_admits_everything_and_records_nothing(clock: FakeClock) -> None:
    """forced_state(..., "disabled") lets every call through and trips on nothing."""
    res = otelres.Resilience(
        "dep",
        clock=clock,
        breaker=otelres.BreakerPolicy(consecutive_failures=1),
        retry=otelres.RetryPolicy(attempts=1),
    )
    with forced_state(res.breaker, "disabled"):
        for _ in range(5):
            with pytest.raises(ConnectionError):
                res.call(failing, [])
        assert res.breaker.state is otelres.State.DISABLED
    assert res.breaker.state is otelres.State.CLOSED
    assert res.call(lambda: "ok") == "ok"


# -- capture_events --------------------------------------------------------------------------


def test_capture_events_records_in_order(clock: FakeClock) -> None:
    """Every event of a call is captured in order: retries, then the call."""
    res = otelres.Resilience("dep", clock=clock, retry=otelres.RetryPolicy(jitter="none"))
    with capture_events() as events, pytest.raises(ConnectionError):
        res.call(failing, [])
    assert [e.kind for e in events.events] == ["retry", "retry", "exhausted", "call"]
    assert all(e.breaker == "dep" for e in events.events)
    assert [e.fields["attempt"] for e in events.of("retry")] == [1, 2]


def test_capture_events_captures_transitions(clock: FakeClock) -> None:
    """Transitions are captured both as events and as Transition records, numbered from 1."""
    breaker = otelres.CircuitBreaker("dep", clock=clock)
    with capture_events() as events:
        breaker.force_open()
        breaker.reset()
    assert [(t.from_state, t.to_state, t.seq) for t in events.transitions] == [
        (otelres.State.CLOSED, otelres.State.FORCED_OPEN, 1),
        (otelres.State.FORCED_OPEN, otelres.State.CLOSED, 2),
    ]
    assert [e.fields["to_state"] for e in events.of("transition")] == ["forced_open", "closed"]


def test_capture_events_unregisters_on_exit(clock: FakeClock) -> None:
    """After the block the capture is unregistered: nothing more is added to it."""
    res = otelres.Resilience("dep", clock=clock)
    with capture_events() as events:
        res.call(lambda: 1)
    assert len(events.events) == 1
    assert _events.listeners == ()
    res.call(lambda: 2)
    assert len(events.events) == 1


def test_capture_events_unregisters_on_exception(clock: FakeClock) -> None:
    """An exception escaping the block still unregisters the capture."""
    with pytest.raises(RuntimeError), capture_events():
        raise RuntimeError("boom")
    assert _events.listeners == ()


def test_capture_events_nests_independently(clock: FakeClock) -> None:
    """Two nested captures both see the inner events; the outer one keeps capturing after the inner ends."""
    res = otelres.Resilience("dep", clock=clock)
    with capture_events() as outer:
        with capture_events() as inner:
            res.call(lambda: 1)
        res.call(lambda: 2)
    assert len(inner.events) == 1
    assert len(outer.events) == 2


# -- listeners that raise ----------------------------------------------------------------------


class Raising(otelres.Listener):
    """A per-call listener that raises on every event and at every call's end."""

    per_call = True

    def __init__(self) -> None:
        self.calls = 0
        self.seen: list[str] = []

    def on_event(self, event: otelres.Event) -> None:
        self.calls += 1
        self.seen.append(event.kind)
        raise RuntimeError("listener bug")

    def end_call(self, event: otelres.Event, scope: object) -> None:  # noqa: ARG002 - no scope here
        self.on_event(event)


def test_raising_listener_never_breaks_a_call(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    """A listener raising on every event changes no result, error or retry; its failures are
    logged at a bounded rate (one line per listener class per minute), not once per raise."""
    bad = Raising()
    otelres.add_listener(bad)
    try:
        res = otelres.Resilience(
            "dep",
            clock=clock,
            retry=otelres.RetryPolicy(jitter="none"),
            breaker=otelres.BreakerPolicy(consecutive_failures=3),
        )
        log: list[int] = []
        with caplog.at_level(logging.WARNING, logger="otelres"):
            assert res.call(lambda: "ok") == "ok"  # call
            with pytest.raises(ConnectionError):
                res.call(failing, log)  # retry x2, transition (opens), call
            with pytest.raises(otelres.CircuitOpenError):
                res.call(failing, log)  # rejected, call
    finally:
        otelres.remove_listener(bad)
    assert len(log) == 3
    assert clock.sleeps == [0.1, 0.2]
    assert bad.seen == ["call", "retry", "retry", "transition", "exhausted", "call", "rejected", "call"]
    raised = [r.getMessage() for r in caplog.records if r.name == "otelres" and "listener" in r.getMessage()]
    assert len(raised) == 1
    assert "Raising.end_call raised RuntimeError('listener bug')" in raised[0]


def test_raising_listener_does_not_starve_the_others(clock: FakeClock) -> None:
    """Listeners after a raising one still get every event, and the raising one stays registered."""
    bad = Raising()
    otelres.add_listener(bad)
    try:
        with capture_events() as events:
            res = otelres.Resilience("dep", clock=clock, retry=otelres.RetryPolicy(jitter="none"))
            with pytest.raises(ConnectionError):
                res.call_with(failing, ([],), {}, no_retry="not_replayable")
        assert [e.kind for e in events.events] == ["retry_suppressed", "call"]
        assert bad in _events.listeners
        assert bad.calls == 2
    finally:
        otelres.remove_listener(bad)


def test_add_listener_is_idempotent_and_remove_ignores_strangers() -> None:
    """Adding a listener twice registers it once; removing one never added is a no-op."""
    listener = otelres.Listener()
    otelres.add_listener(listener)
    otelres.add_listener(listener)
    assert _events.listeners == (listener,)
    otelres.remove_listener(otelres.Listener())
    assert _events.listeners == (listener,)
    otelres.remove_listener(listener)
    assert _events.listeners == ()
