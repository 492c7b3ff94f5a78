"""Retrying a block: Resilience.attempts() and aattempts(), over the same flow as call()."""

from __future__ import annotations

import asyncio
import sys

import pytest

import otelres
from otelres.testing import FakeClock, capture_events


def policy(clock: FakeClock, **retry: object) -> otelres.Resilience:
    return otelres.Resilience("block", clock=clock, retry=otelres.RetryPolicy(jitter="none", **retry))  # type: ignore[arg-type]


def test_block_is_retried_until_it_succeeds(clock: FakeClock) -> None:
    """A block failing twice with ConnectionError runs three times, with the policy's delays between."""
    res = policy(clock)
    numbers = []
    for attempt in res.attempts():
        with attempt:
            numbers.append(attempt.number)
            if len(numbers) < 3:
                raise ConnectionError("refused")
    assert numbers == [1, 2, 3]
    assert clock.sleeps == [0.1, 0.2]


def test_last_error_propagates_once_attempts_are_spent(clock: FakeClock) -> None:
    """After the last attempt the block's own exception leaves the loop, noted with the attempt count."""
    res = policy(clock)
    runs = 0
    with pytest.raises(TimeoutError) as raised:
        for attempt in res.attempts():
            with attempt:
                runs += 1
                raise TimeoutError("slow")
    assert runs == 3
    notes = getattr(raised.value, "__notes__", [])
    if sys.version_info >= (3, 11):  # 3.10 has no exception notes
        assert any("gave up after 3 attempts" in note for note in notes)
    else:
        assert notes == []


def test_error_not_worth_retrying_propagates_at_once(clock: FakeClock) -> None:
    """An exception outside retry_on ends the loop on the first attempt, without a sleep."""
    res = policy(clock, retry_on=ConnectionError)
    runs = 0
    with pytest.raises(KeyError):
        for attempt in res.attempts():
            with attempt:
                runs += 1
                raise KeyError("missing")
    assert runs == 1
    assert clock.sleeps == []


def test_open_circuit_rejects_the_block_without_running_it(clock: FakeClock) -> None:
    """With the breaker forced open, the loop raises CircuitOpenError before the block runs."""
    res = policy(clock)
    res.breaker.force_open()
    ran = False
    with pytest.raises(otelres.CircuitOpenError) as raised:
        for attempt in res.attempts():
            with attempt:
                ran = True
    assert not ran
    assert raised.value.breaker == "block"


def test_disabled_otelres_runs_the_block_once(clock: FakeClock) -> None:
    """With OTELRES_ENABLED=false the loop yields one attempt and lets its exception through."""
    otelres.configure(otelres.load_settings({"OTELRES_ENABLED": "false"}))
    res = otelres.Resilience("block-off")
    runs = 0
    with pytest.raises(ConnectionError):
        for attempt in res.attempts():
            with attempt:
                runs += 1
                raise ConnectionError
    assert runs == 1


def test_block_events_match_those_of_call(clock: FakeClock) -> None:
    """The block loop reports its retry and the finished call like call() does."""
    res = policy(clock)
    with capture_events() as events:
        failed = False
        for attempt in res.attempts():
            with attempt:
                if not failed:
                    failed = True
                    raise ConnectionError
    assert [e.fields["reason"] for e in events.of("retry")] == ["connect"]
    (call,) = events.of("call")
    assert call.fields["outcome"] == "success"
    assert call.fields["attempts"] == 2


def test_async_block_is_retried_with_async_sleeps(clock: FakeClock) -> None:
    """aattempts() retries the block and sleeps through the clock's async sleep."""
    res = policy(clock)

    async def main() -> int:
        runs = 0
        async for attempt in res.aattempts():
            with attempt:
                runs += 1
                if runs < 2:
                    raise ConnectionError
        return runs

    assert asyncio.run(main()) == 2
    assert clock.sleeps == [0.1]


def test_async_block_rejection_and_disabled(clock: FakeClock) -> None:
    """aattempts() raises CircuitOpenError when open, and runs once when otelres is disabled."""
    res = policy(clock)
    res.breaker.force_open()

    async def rejected() -> None:
        async for attempt in res.aattempts():
            with attempt:
                pass

    with pytest.raises(otelres.CircuitOpenError):
        asyncio.run(rejected())

    otelres.configure(otelres.load_settings({"OTELRES_ENABLED": "false"}))
    off = otelres.Resilience("block-off")

    async def once() -> int:
        runs = 0
        async for attempt in off.aattempts():
            with attempt:
                runs += 1
        return runs

    assert asyncio.run(once()) == 1


def test_current_attempt_numbers_each_attempt_and_resets(clock: FakeClock) -> None:
    """current_attempt() is 1, 2, 3 inside successive attempts and 1 again after the call."""
    res = policy(clock)
    seen = []

    def flaky() -> str:
        seen.append(otelres.current_attempt())
        if len(seen) < 3:
            raise ConnectionError
        return "ok"

    assert res.call(flaky) == "ok"
    assert seen == [1, 2, 3]
    assert otelres.current_attempt() == 1


def test_current_attempt_in_async_calls(clock: FakeClock) -> None:
    """Each async attempt sees its own number, and the task's value is restored afterwards."""
    res = policy(clock)
    seen = []

    async def flaky() -> str:
        seen.append(otelres.current_attempt())
        if len(seen) < 2:
            raise ConnectionError
        return "ok"

    async def main() -> int:
        await res.acall(flaky)
        return otelres.current_attempt()

    assert asyncio.run(main()) == 1
    assert seen == [1, 2]
