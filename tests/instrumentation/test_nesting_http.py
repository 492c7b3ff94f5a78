"""Drop-in safety of nesting, against the real flaky server: a decorator around a patched client
never multiplies attempts, never repeats a POST, shares the destination's breaker without a
half-open deadlock, and keeps the client's own verdict on 503s."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import httpx
import pytest
import requests
from flaky_server import RESET

import otelres
from otelres._registry import Registry, set_default_registry
from otelres.testing import capture_events

if TYPE_CHECKING:
    from collections.abc import Callable

    from flaky_server import FlakyServer

    from otelres.testing import FakeClock

#: Three attempts with delays of a millisecond: nothing waits for a real backoff.
QUICK = otelres.RetryPolicy(attempts=3, base_delay=0.001, max_delay=0.002)


def test_decorator_around_requests_makes_three_attempts_not_nine(
    server: FlakyServer, instrument: Callable[..., None]
) -> None:
    """@resilient around a patched requests.get: connection resets are retried by one layer only."""
    instrument()
    server.script(*[RESET] * 10)

    @otelres.resilient("orders", retry=QUICK)
    def fetch() -> int:
        return requests.get(server.url + "/orders", timeout=5).status_code

    with pytest.raises(requests.ConnectionError):
        fetch()
    assert server.count() == 3


def test_decorator_around_a_post_sends_it_once(server: FlakyServer, instrument: Callable[..., None]) -> None:
    """A POST without an Idempotency-Key is sent once however it is wrapped (the inner verdict binds)."""
    instrument()
    server.script(*[RESET] * 10)

    @otelres.resilient("orders", retry=QUICK)
    def create() -> int:
        return requests.post(server.url + "/orders", data=b"{}", timeout=5).status_code

    with capture_events() as events, pytest.raises(requests.ConnectionError):
        create()
    assert server.count("POST") == 1
    assert {e.reason for e in events.of("retry_suppressed")} == {"not_idempotent"}


def test_async_decorator_around_httpx_post_sends_it_once(
    server: FlakyServer, instrument: Callable[..., None]
) -> None:
    """The same with httpx.AsyncClient under an async decorator."""
    instrument()
    server.script(*[RESET] * 10)

    @otelres.resilient("orders", retry=QUICK)
    async def create() -> int:
        async with httpx.AsyncClient() as client:
            return (await client.post(server.url + "/orders", content=b"{}")).status_code

    with pytest.raises(httpx.TransportError):
        asyncio.run(create())
    assert server.count("POST") == 1


def test_decorator_and_client_on_one_destination_close_after_the_outage(
    server: FlakyServer, instrument: Callable[..., None], clock: FakeClock
) -> None:
    """A decorator naming the destination the patched client calls shares its breaker: after the
    outage the half-open probe goes through (no second permit is asked for) and the circuit closes."""
    set_default_registry(Registry(clock=clock))
    instrument(breaker_consecutive_failures=2, breaker_open_seconds=5.0, retry_attempts=1)

    @otelres.resilient(server.breaker, retry=otelres.RetryPolicy(attempts=1))
    def fetch() -> int:
        return requests.get(server.url + "/x", timeout=5).status_code

    server.script(RESET, RESET)
    for _ in range(2):
        with pytest.raises(requests.ConnectionError):
            fetch()
    breaker = otelres.default_registry().get(server.breaker)
    assert breaker.state is otelres.State.OPEN
    clock.advance(5.0)
    assert fetch() == 200
    assert breaker.state is otelres.State.CLOSED


def test_client_verdict_kept_when_a_decorator_named_the_destination_first(
    server: FlakyServer, instrument: Callable[..., None]
) -> None:
    """A decorator built first for the destination does not drop the client's predicates: 40 plain
    requests.get calls answered 503 count as failures and open the circuit."""
    instrument(retry_attempts=1, breaker_minimum_calls=20)
    otelres.resilient(server.breaker)  # built first, never called
    server.script(*[503] * 40)
    answered = 0
    with pytest.raises(otelres.CircuitOpenError):
        for _ in range(40):
            assert requests.get(server.url + "/x", timeout=5).status_code == 503
            answered += 1
    assert answered == 20  # opened once minimum_calls failures were seen
    assert otelres.default_registry().get(server.breaker).state is otelres.State.OPEN


def test_503s_returned_through_a_decorator_on_the_destination_open_the_circuit(
    server: FlakyServer, instrument: Callable[..., None]
) -> None:
    """A decorator naming the destination around a requests.get that returns its 503 responses:
    the client's own verdict (a 503 is a failure) reaches the shared breaker, counted once per call."""
    instrument(retry_attempts=1, breaker_minimum_calls=20)

    @otelres.resilient(server.breaker, retry=otelres.RetryPolicy(attempts=1))
    def fetch() -> int:
        return requests.get(server.url + "/x", timeout=5).status_code

    server.script(*[503] * 40)
    answered = 0
    with pytest.raises(otelres.CircuitOpenError):
        for _ in range(40):
            assert fetch() == 503
            answered += 1
    assert answered == 20
    assert server.count() == 20
