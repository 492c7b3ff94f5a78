"""The adaptive throttle beside a closed breaker: BreakerPolicy(throttle=...), the config keys,
the rejection with its own reason, and what the telemetry and the server make of it."""

from __future__ import annotations

import asyncio
import pickle

import pytest

import otelres
from otelres import _events
from otelres.testing import FakeClock, capture_events

#: Throttles from the 4th call in the window, k = 1 (the dependency gets what it accepts).
EAGER = otelres.ThrottlePolicy(k=1.0, min_requests=4, window_seconds=10.0, max_rejection=0.9)


def failing() -> None:
    raise ConnectionError("refused")


def throttled_resilience(clock: FakeClock, *, random: float = 0.0) -> otelres.Resilience:
    """A Resilience whose breaker throttles (EAGER) and trips late, on a fake clock; its throttle
    draws ``random`` (0.0: every draw under the probability rejects)."""
    policy = otelres.BreakerPolicy(throttle=EAGER, minimum_calls=1000)
    res = otelres.Resilience("search", breaker=policy, clock=clock, retry=otelres.RetryPolicy(attempts=1))
    res.breaker._throttle._random = lambda: random  # type: ignore[union-attr]
    return res


def test_a_struggling_dependency_is_throttled_with_its_own_reason(clock: FakeClock) -> None:
    """Four failures: the next call is rejected locally, no attempt, while the circuit stays closed;
    the error says throttled, with no wait."""
    res = throttled_resilience(clock)
    for _ in range(4):
        with pytest.raises(ConnectionError):
            res.call(failing)
    attempts: list[int] = []
    with capture_events() as events, pytest.raises(otelres.CircuitOpenError) as info:
        res.call(lambda: attempts.append(1))
    assert attempts == []
    assert res.breaker.state is otelres.State.CLOSED
    error = info.value
    assert (error.breaker, error.reason, error.retry_after) == ("search", "throttled", 0.0)
    assert "throttled" in str(error)
    assert [(e.kind, e.fields) for e in events.events] == [
        ("rejected", {"retry_after": 0.0, "reason": "throttled"}),
        ("call", {"outcome": "rejected", "duration": 0.0, "attempts": 0}),
    ]
    assert res.breaker.stats().rejected == 1
    clone = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes
    assert (clone.breaker, clone.reason) == ("search", "throttled")


def test_a_throttled_async_call_is_rejected_the_same_way(clock: FakeClock) -> None:
    res = throttled_resilience(clock)
    for _ in range(4):
        with pytest.raises(ConnectionError):
            res.call(failing)

    async def fine() -> str:
        return "ok"

    with pytest.raises(otelres.CircuitOpenError) as info:
        asyncio.run(res.acall(fine))
    assert info.value.reason == "throttled"


def test_the_draw_decides_and_accepts_bring_the_load_back(clock: FakeClock) -> None:
    """Below the probability the draw lets calls through; once the failures leave the window the
    throttle rejects nothing."""
    res = throttled_resilience(clock, random=0.95)  # above max_rejection: never rejected
    for _ in range(4):
        with pytest.raises(ConnectionError):
            res.call(failing)
    assert res.call(lambda: "ok") == "ok"
    throttle = res.breaker.throttle
    assert throttle is not None
    assert throttle.stats()[:3] == (5, 1, 0)  # requests, accepts, rejected
    # 5 requests (4 failed, 1 accepted), k = 1: (5 - 1) / (5 + 1).
    assert throttle.rejection_probability() == pytest.approx(4 / 6)
    clock.advance(11.0)
    assert throttle.rejection_probability() == 0.0


def test_an_open_circuit_says_circuit_open() -> None:
    error = otelres.CircuitOpenError("db", 3.0)
    assert error.reason == "circuit_open"
    assert "is open" in str(error)
    clone = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes
    assert (clone.args, clone.reason) == (("db", 3.0), "circuit_open")


def test_no_throttle_without_the_policy_and_the_fast_path_stays(clock: FakeClock) -> None:
    res = otelres.Resilience("plain", clock=clock)
    assert res.breaker._throttle is None
    assert otelres.BreakerPolicy().throttle is None


def test_the_configuration_turns_it_on_per_target(monkeypatch: pytest.MonkeyPatch) -> None:
    """throttle.enabled and its keys, from the environment: the registry's breakers throttle."""
    monkeypatch.setenv("OTELRES_THROTTLE_ENABLED", "true")
    monkeypatch.setenv("OTELRES_THROTTLE_K", "1.5")
    settings = otelres.load_settings()
    assert settings.default.throttle == otelres.ThrottlePolicy(k=1.5)
    assert settings.default.breaker.throttle == otelres.ThrottlePolicy(k=1.5)
    monkeypatch.setenv("OTELRES_THROTTLE_ENABLED", "false")
    settings = otelres.load_settings()
    assert settings.default.breaker.throttle is None
    assert settings.default.throttle.k == 1.5  # configured, checked, off


def test_a_bad_throttle_value_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTELRES_THROTTLE_MAX_REJECTION", "2")
    with pytest.raises(otelres.ConfigError) as info:
        otelres.load_settings()
    assert info.value.key == "OTELRES_THROTTLE_MAX_REJECTION"


def test_a_disabled_throttle_policy_makes_no_throttle(clock: FakeClock) -> None:
    policy = otelres.BreakerPolicy(throttle=otelres.ThrottlePolicy(enabled=False))
    breaker = otelres.CircuitBreaker("x", policy, clock=clock)
    assert breaker._throttle is None


def test_the_reason_reaches_the_listeners_as_before_for_open_circuits(clock: FakeClock) -> None:
    res = otelres.Resilience("open", clock=clock)
    res.breaker.transition_to("forced_open")
    seen: list[otelres.Event] = []

    class Keep(otelres.Listener):
        def on_event(self, event: otelres.Event) -> None:
            seen.append(event)

    listener = Keep()
    otelres.add_listener(listener)
    try:
        with pytest.raises(otelres.CircuitOpenError):
            res.call(lambda: None)
    finally:
        otelres.remove_listener(listener)
    assert [(e.kind, e.reason) for e in seen] == [("rejected", "circuit_open")]
    assert _events.listeners == ()


@pytest.mark.parametrize(
    ("k", "trips_at"), [(2.0, 0.75), (1.5, 1 - 0.5 / 1.5), (1.1, 1 - 0.5 / 1.1), (1.0, 0.5)]
)
def test_with_a_throttle_the_breaker_trips_only_past_what_the_throttle_holds(
    clock: FakeClock, k: float, trips_at: float
) -> None:
    """A throttle holds a struggling dependency at 1 - 1/k failures of the calls it lets through; the
    breaker beside it trips half-way from there to 100 % (at least at its own failure_rate), so
    that the two do not fight: k = 2 with the default failure_rate 0.5 would open and close while
    the throttle holds the load steady."""
    policy = otelres.BreakerPolicy(minimum_calls=20, throttle=otelres.ThrottlePolicy(k=k, min_requests=10**6))
    below = otelres.CircuitBreaker("below", policy, clock=clock)
    at = otelres.CircuitBreaker("at", policy, clock=clock)
    failures = round(trips_at * 100)
    for breaker, failed in ((below, failures - 1), (at, failures)):
        for i in range(100):
            token = breaker.acquire()
            breaker.record(token, i >= 100 - failed, clock.monotonic())
    assert below.state is otelres.State.CLOSED
    assert at.state is otelres.State.OPEN


def test_a_retry_is_not_throttled_and_the_real_error_comes_back(clock: FakeClock) -> None:
    """The throttle refuses calls, not their retries (the retry budget bounds those): a retried
    call whose throttle would refuse everything still makes its retry and ends with its own error."""
    policy = otelres.BreakerPolicy(
        minimum_calls=10_000, throttle=otelres.ThrottlePolicy(min_requests=1, max_rejection=1.0, k=1.0)
    )
    res = otelres.Resilience("svc", clock=clock, breaker=policy, retry=otelres.RetryPolicy(jitter="none"))
    throttle = res.breaker.throttle
    assert throttle is not None
    throttle._random = lambda: 0.0
    attempts: list[int] = []

    def fail() -> None:
        attempts.append(1)
        raise ConnectionError("refused")

    with pytest.raises(ConnectionError):
        res.call(fail)  # the first attempt: the window is empty, nothing to throttle yet
    assert len(attempts) == 3
    with pytest.raises(otelres.CircuitOpenError) as info:
        res.call(fail)  # a new call: throttled before its first attempt
    assert info.value.reason == "throttled"
    assert len(attempts) == 3


def test_a_circuit_closed_by_its_probes_starts_its_throttle_afresh(clock: FakeClock) -> None:
    """The failures that opened the circuit do not go on throttling a dependency its probes proved
    healthy: closing after half-open clears the throttle's window."""
    breaker = otelres.CircuitBreaker(
        "svc", otelres.BreakerPolicy(throttle=otelres.ThrottlePolicy()), clock=clock
    )
    for _ in range(20):
        breaker.on_failure(breaker.acquire(), clock.monotonic())
    assert breaker.state is otelres.State.OPEN
    throttle = breaker.throttle
    assert throttle is not None
    assert throttle.rejection_probability() > 0.8
    clock.advance(5.0)
    breaker.on_success(breaker.acquire(), clock.monotonic())
    assert breaker.state is otelres.State.CLOSED
    assert throttle.stats()[:3] == (0, 0, 0)
    assert throttle.rejection_probability() == 0.0


def test_a_throttle_given_in_code_is_kept() -> None:
    """From code, as a BreakerPolicy's or as a ThrottlePolicy of its own (then the environment's
    throttle keys give way to it, as for every section given whole in code)."""
    settings = otelres.load_settings(env={}, overrides={"breaker": otelres.BreakerPolicy(throttle=EAGER)})
    assert settings.default.breaker.throttle == EAGER
    assert settings.default.throttle == EAGER
    settings = otelres.load_settings(
        env={"OTELRES_THROTTLE_K": "3"}, overrides={"throttle": otelres.ThrottlePolicy(k=1.5)}
    )
    assert settings.default.breaker.throttle == otelres.ThrottlePolicy(k=1.5)
    settings = otelres.load_settings(
        env={"OTELRES_THROTTLE_ENABLED": "true"}, overrides={"breaker": otelres.BreakerPolicy(throttle=EAGER)}
    )
    assert settings.default.breaker.throttle == EAGER
    with pytest.raises(otelres.ConfigError):
        otelres.load_settings(env={}, overrides={"throttle": 2.0})
