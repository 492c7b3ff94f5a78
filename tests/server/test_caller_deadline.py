"""A caller can only shorten its own request: timeouts caused by a deadline header shorter than
the attempt's own timeout never open a circuit to a healthy dependency (uvicorn, httpx, requests)."""

from __future__ import annotations

import asyncio
import socket
import threading
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import requests

import otelres
from otelres.asgi import ResilienceMiddleware
from otelres.testing import capture_events

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

ATTACKS = 40
HEADER = "X-Request-Timeout"


class SlowUpstream:
    """A healthy upstream that takes its time: it accepts every connection and answers none
    before the test ends (longer than any deadline a caller sends, shorter than nothing)."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._held: list[socket.socket] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self._held.append(conn)

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        for conn in self._held:
            conn.close()
        self._thread.join(5)


@pytest.fixture
def upstream() -> Iterator[SlowUpstream]:
    slow = SlowUpstream()
    yield slow
    slow.close()


@pytest.fixture
def instrumented() -> Iterator[None]:
    otelres.instrument(retry_attempts=2, retry_base_delay=0.001, retry_max_delay=0.002)
    yield
    otelres.uninstrument()


def app_calling(upstream: SlowUpstream, client: str, timeout: float) -> Any:
    """An ASGI app whose route calls the upstream with httpx or requests (own timeout ``timeout``).
    The httpx client is made once, at start-up: making one per request (its TLS context) can take
    longer than a tiny deadline on a loaded machine, and the call would end before reaching otelres.
    """
    clients: dict[str, httpx.AsyncClient] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                clients["http"] = httpx.AsyncClient(timeout=timeout)
                await send({"type": "lifespan.startup.complete"})
            await clients.pop("http").aclose()
            await send({"type": "lifespan.shutdown.complete"})
            return
        try:
            if client == "httpx":
                await clients["http"].get(upstream.url + "/data")
            else:
                await asyncio.to_thread(requests.get, upstream.url + "/data", timeout=timeout)
            status = 200
        except (httpx.TimeoutException, requests.Timeout):
            status = 504
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    return app


def attack(url: str, header: str | None) -> list[int]:
    """ATTACKS requests to ``url`` (urllib: not patched), with the deadline header when given."""
    statuses = []
    for _ in range(ATTACKS):
        request = urllib.request.Request(url, headers={"X-Request-Timeout": header} if header else {})  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
                statuses.append(response.status)
        except urllib.error.HTTPError as error:
            statuses.append(error.code)
    return statuses


@pytest.mark.parametrize("client", ["httpx", "requests"])
def test_tiny_deadline_headers_leave_a_healthy_circuit_closed(
    client: str, upstream: SlowUpstream, instrumented: None, asgi_server: Callable[[Any], str]
) -> None:
    """40 requests carrying X-Request-Timeout: 0.05 time out, but the upstream's circuit stays
    closed with no failure counted; each is reported as a retry suppressed for the deadline."""
    app = ResilienceMiddleware(
        app_calling(upstream, client, timeout=5.0), deadline_header="X-Request-Timeout"
    )
    url = asgi_server(app)
    with capture_events() as events:
        statuses = attack(url, "0.05")
    assert statuses == [504] * ATTACKS
    breaker = otelres.default_registry().get(upstream.url)
    assert breaker.state is otelres.State.CLOSED
    assert breaker.stats().failures == 0
    suppressed = [e for e in events.of("retry_suppressed") if e.breaker == upstream.url]
    assert {e.reason for e in suppressed} == {"deadline"}
    calls = [e for e in events.of("call") if e.breaker == upstream.url]
    assert {e.outcome for e in calls} == {"failure"}


def test_the_dependencys_own_timeouts_still_open_the_circuit(
    upstream: SlowUpstream, instrumented: None, asgi_server: Callable[[Any], str]
) -> None:
    """The control: the same 40 timeouts under the attempt's own short timeout (no header) open it."""
    app = ResilienceMiddleware(
        app_calling(upstream, "httpx", timeout=0.005), deadline_header="X-Request-Timeout"
    )
    url = asgi_server(app)
    statuses = attack(url, None)
    assert 504 in statuses
    assert otelres.default_registry().get(upstream.url).state is otelres.State.OPEN


def test_the_services_own_deadline_still_counts(
    upstream: SlowUpstream, instrumented: None, asgi_server: Callable[[Any], str]
) -> None:
    """A deadline the operator configured (not a caller's header) is the service's own budget: an
    upstream too slow for it times out as a failing dependency, and its circuit opens."""
    app = ResilienceMiddleware(app_calling(upstream, "httpx", timeout=5.0), deadline=0.05)
    url = asgi_server(app)
    statuses = attack(url, None)
    assert 504 in statuses
    assert otelres.default_registry().get(upstream.url).state is otelres.State.OPEN


def test_a_header_longer_than_the_services_deadline_is_not_the_callers() -> None:
    """The header binds only when it shortens the service's own deadline."""
    rules = ResilienceMiddleware(None, deadline=1.0, deadline_header=HEADER).rules
    assert rules.request_deadline("0.5") == (0.5, True)
    assert rules.request_deadline("5") == (1.0, False)
    assert rules.request_deadline(None) == (1.0, False)
    assert rules.request_deadline("nonsense") == (1.0, False)
