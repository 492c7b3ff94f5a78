"""Per-attempt timeouts shrink to the time left of the request's deadline (requests, httpx)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import requests
from requests.adapters import HTTPAdapter

import otelres
import otelres.telemetry

if TYPE_CHECKING:
    from collections.abc import Iterator

#: Retries fast enough that only the deadline limits them.
FAST: dict[str, object] = {"retry_base_delay": 0.001, "retry_max_delay": 0.002}
#: A generous bound on a call under a 0.5 s deadline (never a tight timing assertion).
WITHIN = 3.0


class SlowServer:
    """A loopback HTTP server: ``/slow`` waits until released, ``/fast`` answers at once;
    it counts the requests it received.
    """

    def __init__(self) -> None:
        self.release = threading.Event()
        self.seen = 0
        self.arrived = threading.Condition()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with owner.arrived:
                    owner.seen += 1
                    owner.arrived.notify_all()
                if self.path == "/slow":
                    owner.release.wait(30)
                try:
                    self.send_response(200)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass  # the client gave up

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's signature
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05})
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"

    def wait_seen(self, count: int) -> int:
        """The requests received, once at least ``count`` arrived (or 5 s passed)."""
        with self.arrived:
            self.arrived.wait_for(lambda: self.seen >= count, timeout=5)
            return self.seen

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def server() -> Iterator[SlowServer]:
    """A running slow server, released and stopped after the test."""
    slow = SlowServer()
    yield slow
    slow.close()


@pytest.fixture(autouse=True)
def _instrumented(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """otelres instrumented with fast retries; uninstrumented and reset afterwards."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    otelres.uninstrument()
    otelres.instrument(**FAST)
    yield
    otelres.uninstrument()
    otelres.telemetry.disable()
    otelres.configure(None)


class RecordingAdapter(HTTPAdapter):
    """A requests adapter that records the timeout each attempt received."""

    def __init__(self) -> None:
        super().__init__()
        self.timeouts: list[Any] = []

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        self.timeouts.append(kwargs.get("timeout"))
        return super().send(request, **kwargs)


def recording_session() -> tuple[requests.Session, RecordingAdapter]:
    session = requests.Session()
    adapter = RecordingAdapter()
    session.mount("http://", adapter)
    return session, adapter


class RecordingTransport(httpx.HTTPTransport):
    """An httpx transport that records each attempt's timeouts."""

    def __init__(self) -> None:
        super().__init__()
        self.timeouts: list[dict[str, Any]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.timeouts.append(dict(request.extensions["timeout"]))
        return super().handle_request(request)


class AsyncRecordingTransport(httpx.AsyncHTTPTransport):
    """The async :class:`RecordingTransport`."""

    def __init__(self) -> None:
        super().__init__()
        self.timeouts: list[dict[str, Any]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.timeouts.append(dict(request.extensions["timeout"]))
        return await super().handle_async_request(request)


def _all_capped(values: list[Any], limit: float) -> bool:
    return all(v is not None and 0 < v <= limit for v in values)


# -- requests ----------------------------------------------------------------------


def test_requests_timeout_shrinks_to_deadline(server: SlowServer) -> None:
    """Under a 0.5 s deadline a GET with timeout=30 attempts with at most 0.5 s and fails in time."""
    session, adapter = recording_session()
    started = time.monotonic()
    with otelres.deadline(0.5), pytest.raises(requests.Timeout):
        session.get(f"{server.url}/slow", timeout=30)
    assert time.monotonic() - started < WITHIN
    assert len(adapter.timeouts) == 1
    assert _all_capped(adapter.timeouts, 0.5)
    assert server.wait_seen(1) == len(adapter.timeouts)


def test_requests_tuple_timeout_caps_both_parts(server: SlowServer) -> None:
    """A (connect, read) timeout has both parts capped; an unbounded part becomes the time left."""
    session, adapter = recording_session()
    with otelres.deadline(0.5), pytest.raises(requests.Timeout):
        session.get(f"{server.url}/slow", timeout=(None, 30))
    (connect, read) = adapter.timeouts[0]
    assert _all_capped([connect, read], 0.5)


def test_requests_no_timeout_becomes_time_left(server: SlowServer) -> None:
    """A GET without a timeout is bounded by the deadline."""
    session, adapter = recording_session()
    with otelres.deadline(10):
        assert session.get(f"{server.url}/fast").status_code == 200
    assert _all_capped(adapter.timeouts, 10)


def test_requests_positional_timeout_is_capped(server: SlowServer) -> None:
    """A timeout passed positionally to Session.request is capped too."""
    session, adapter = recording_session()
    with otelres.deadline(10):
        response = session.request("GET", f"{server.url}/fast", None, None, None, None, None, None, 30)
    assert response.status_code == 200
    assert _all_capped(adapter.timeouts, 10)


def test_requests_no_time_left_makes_no_attempt(server: SlowServer) -> None:
    """With the deadline already passed the request is not sent and raises requests' Timeout."""
    session, adapter = recording_session()
    with otelres.deadline(0), pytest.raises(requests.Timeout, match="deadline exceeded"):
        session.get(f"{server.url}/fast", timeout=30)
    assert adapter.timeouts == []
    assert server.seen == 0


def test_requests_without_deadline_timeouts_untouched(server: SlowServer) -> None:
    """Without a deadline the caller's timeout (or its absence) reaches the adapter as given."""
    session, adapter = recording_session()
    session.get(f"{server.url}/fast", timeout=30)
    session.get(f"{server.url}/fast")
    session.get(f"{server.url}/fast", timeout=(3, 30))
    assert adapter.timeouts == [30, None, (3, 30)]


# -- httpx -------------------------------------------------------------------------


def test_httpx_timeouts_shrink_to_deadline(server: SlowServer) -> None:
    """Under a 0.5 s deadline every httpx timeout of the attempt is at most 0.5 s."""
    transport = RecordingTransport()
    started = time.monotonic()
    with httpx.Client(transport=transport) as client:
        request = client.build_request("GET", f"{server.url}/slow", timeout=30)
        with otelres.deadline(0.5), pytest.raises(httpx.TimeoutException):
            client.send(request)
    assert time.monotonic() - started < WITHIN
    assert len(transport.timeouts) == 1
    assert _all_capped(list(transport.timeouts[0].values()), 0.5)
    assert request.extensions["timeout"] == httpx.Timeout(30).as_dict()
    assert server.wait_seen(1) == len(transport.timeouts)


def test_httpx_client_default_timeout_is_capped(server: SlowServer) -> None:
    """A request without its own timeout is capped from the client's timeout."""
    transport = RecordingTransport()
    with httpx.Client(transport=transport, timeout=httpx.Timeout(None)) as client, otelres.deadline(10):
        assert client.get(f"{server.url}/fast").status_code == 200
    assert _all_capped(list(transport.timeouts[0].values()), 10)


def test_httpx_no_time_left_makes_no_attempt(server: SlowServer) -> None:
    """With the deadline already passed httpx raises its TimeoutException and sends nothing."""
    transport = RecordingTransport()
    with (
        httpx.Client(transport=transport) as client,
        otelres.deadline(0),
        pytest.raises(httpx.TimeoutException, match="deadline exceeded"),
    ):
        client.get(f"{server.url}/fast")
    assert transport.timeouts == []
    assert server.seen == 0


def test_httpx_without_deadline_timeouts_untouched(server: SlowServer) -> None:
    """Without a deadline httpx's timeouts reach the transport as configured."""
    transport = RecordingTransport()
    with httpx.Client(transport=transport, timeout=7) as client:
        client.get(f"{server.url}/fast")
        client.get(f"{server.url}/fast", timeout=30)
    assert transport.timeouts == [httpx.Timeout(7).as_dict(), httpx.Timeout(30).as_dict()]


def test_httpx_async_timeouts_shrink_to_deadline(server: SlowServer) -> None:
    """The async client's attempt gets timeouts of at most 0.5 s under a 0.5 s deadline."""
    transport = AsyncRecordingTransport()

    async def run() -> None:
        async with httpx.AsyncClient(transport=transport) as client:
            with otelres.deadline(0.5), pytest.raises(httpx.TimeoutException):
                await client.get(f"{server.url}/slow", timeout=30)

    started = time.monotonic()
    asyncio.run(run())
    assert time.monotonic() - started < WITHIN
    assert len(transport.timeouts) == 1
    assert _all_capped(list(transport.timeouts[0].values()), 0.5)
    assert server.wait_seen(1) == len(transport.timeouts)


def test_httpx_async_without_deadline_timeouts_untouched(server: SlowServer) -> None:
    """Without a deadline the async client's timeouts are untouched."""
    transport = AsyncRecordingTransport()

    async def run() -> None:
        async with httpx.AsyncClient(transport=transport) as client:
            await client.get(f"{server.url}/fast", timeout=30)

    asyncio.run(run())
    assert transport.timeouts == [httpx.Timeout(30).as_dict()]
