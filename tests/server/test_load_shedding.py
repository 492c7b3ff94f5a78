"""ResilienceMiddleware(..., limit=...) under a real threaded WSGI server and a real uvicorn: a
request over the limit is shed with 503 and Retry-After, probes never, critical requests last;
a place is released by an exception, a client that goes away, a streamed body's close() (not
before) and in a forked child; bad values are ConfigErrors; the metrics and rate-bounded logs.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import json
import logging
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit
from wsgiref.util import setup_testing_defaults

import pytest
import requests
from limit_support import WAIT, Gate, eventually, fork_and_read
from server_stubs import StubReadiness

import otelres
from otelres import AdaptiveLimit, ConfigError, FixedLimit, asgi, wsgi
from otelres._limit import LIVE, shed_total
from otelres.server._shedding import Shedding
from otelres.telemetry import names

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from otelres.testing import FakeClock

CRITICAL = {"X-Critical": "1"}
#: Chunks a streamed body yields at most (64 KiB each): it ends once its client is gone.
CHUNKS = 2000


@pytest.fixture(autouse=True, scope="module")
def _no_limiter_left() -> Iterator[None]:
    """After this module, no limiter of its tests is alive: the gauges read every live limiter,
    and the telemetry tests that run later count the instruments that report.
    """
    yield
    gc.collect()
    assert not list(LIVE), list(LIVE)


def wsgi_app(gate: Gate) -> Callable[..., Any]:
    """/block waits at the gate; /boom raises; /broken raises in its body; /stream streams until its
    client goes away; anything else answers ok.
    """

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        path = environ["PATH_INFO"]
        if path == "/block":
            gate.hold()
        if path == "/boom":
            raise RuntimeError("boom")
        start_response("200 OK", [("Content-Type", "text/plain")])
        if path == "/broken":
            return broken_body()
        if path == "/stream":
            return (b"x" * 65536 for _ in range(CHUNKS))
        return [b"ok"]

    return app


def broken_body() -> Iterator[bytes]:
    yield b"first"
    raise RuntimeError("broken body")


def asgi_app(gate: Gate) -> Callable[..., Any]:
    """The same routes as wsgi_app(); /stream sends one chunk and returns when its client leaves."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/block":
            await gate.ahold()
        if path == "/boom":
            raise RuntimeError("boom")
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
        )
        if path == "/broken":
            await send({"type": "http.response.body", "body": b"first", "more_body": True})
            raise RuntimeError("broken body")
        if path == "/stream":
            await send({"type": "http.response.body", "body": b"x" * 65536, "more_body": True})
            while (await receive())["type"] != "http.disconnect":
                pass
            return
        await send({"type": "http.response.body", "body": b"ok"})

    return app


def is_critical_environ(environ: dict[str, Any]) -> bool:
    return environ.get("HTTP_X_CRITICAL") == "1"


def is_critical_scope(scope: dict[str, Any]) -> bool:
    return (b"x-critical", b"1") in scope.get("headers", [])


class Served:
    """A middleware with a limit, its gate, and the base URL of the real server running it."""

    def __init__(self, kind: str, start: Callable[[Any], str], limit: Any, **options: Any) -> None:
        self.gate = Gate()
        self.readiness = StubReadiness()
        if kind == "wsgi":
            self.middleware: Any = wsgi.ResilienceMiddleware(
                wsgi_app(self.gate),
                limit=limit,
                critical=is_critical_environ,
                readiness=self.readiness,
                **options,
            )
        else:
            self.middleware = asgi.ResilienceMiddleware(
                asgi_app(self.gate),
                limit=limit,
                critical=is_critical_scope,
                readiness=self.readiness,
                **options,
            )
        self.limiter = self.middleware.limiter
        self.url = start(self.middleware)

    def get(self, path: str, **headers: str) -> requests.Response:
        return requests.get(self.url + path, headers=headers, timeout=WAIT)


@pytest.fixture(params=["wsgi", "asgi"])
def serve(
    request: pytest.FixtureRequest, wsgi_server: Callable[[Any], str], asgi_server: Callable[[Any], str]
) -> Callable[..., Served]:
    """Start a limited middleware under a real server: a threaded wsgiref server, or uvicorn."""
    kind = request.param
    start = wsgi_server if kind == "wsgi" else asgi_server

    def make(limit: Any, **options: Any) -> Served:
        return Served(kind, start, limit, **options)

    return make


def test_over_the_limit_requests_are_shed_probes_never_and_critical_ones_last(
    serve: Callable[..., Served],
) -> None:
    """Limit 2 (headroom 1): with 2 requests held, a third is shed (503, Retry-After: 1, no details)
    while the probes answer; a critical request takes the headroom, the next critical one is shed;
    once the gate opens every held request succeeds and nothing is left in flight.
    """
    served = serve(FixedLimit(2, critical_headroom=0.5))
    limiter = served.limiter
    with ThreadPoolExecutor(4) as pool:
        held = [pool.submit(served.get, "/block") for _ in range(2)]
        served.gate.wait_entered(2)
        shed = served.get("/other")
        assert shed.status_code == 503
        assert shed.headers["Retry-After"] == "1"
        assert shed.headers["Content-Type"] == "application/json"
        assert shed.json() == {"error": "overloaded"}
        assert served.get("/livez").status_code == 200
        assert served.get("/readyz").status_code == 200
        assert served.readiness.calls == 1
        critical = pool.submit(served.get, "/block", **CRITICAL)
        served.gate.wait_entered(1)
        assert limiter.in_flight == 3
        assert served.get("/other", **CRITICAL).status_code == 503
        assert served.get("/livez").status_code == 200
        served.gate.open()
        assert [f.result(WAIT).status_code for f in [*held, critical]] == [200, 200, 200]
    eventually(lambda: limiter.in_flight == 0, "every place released")
    assert limiter.shed == {"limit": 1, "critical": 1}
    assert served.get("/other").status_code == 200


def test_show_details_says_why_and_the_figures(serve: Callable[..., Served]) -> None:
    """With show_details, the shed 503 says the reason, the limit and the requests in flight."""
    served = serve(1, show_details=True)
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(served.get, "/block")
        served.gate.wait_entered(1)
        body = served.get("/other").json()
        served.gate.open()
        assert held.result(WAIT).status_code == 200
    assert body == {"error": "overloaded", "reason": "limit", "limit": 1, "in_flight": 1, "retry_after": 1}


def test_an_exception_in_the_app_releases_its_place(serve: Callable[..., Served]) -> None:
    """An app that raises before answering (500) or while its body is sent gives its place back."""
    served = serve(1)
    assert served.get("/boom").status_code == 500
    assert served.limiter.in_flight == 0
    with contextlib.suppress(requests.RequestException):  # a truncated body, or a connection cut
        served.get("/broken")
    eventually(lambda: served.limiter.in_flight == 0, "the broken body's place released")
    assert served.get("/ok").status_code == 200


def test_a_client_that_goes_away_releases_its_place(serve: Callable[..., Served]) -> None:
    """A client reads the start of a streamed response and closes its socket: its place comes back
    (WSGI: the server's write fails and it closes the body; ASGI: the app hears the disconnect).
    """
    served = serve(1)
    address = urlsplit(served.url)
    with socket.create_connection((address.hostname, address.port), timeout=WAIT) as sock:
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: test\r\n\r\n")
        assert sock.recv(1024).startswith((b"HTTP/1.0 200", b"HTTP/1.1 200"))
        assert served.limiter.in_flight == 1
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
    eventually(lambda: served.limiter.in_flight == 0, "the place of the client that left released")
    assert served.get("/ok").status_code == 200


def call(app: Any, path: str = "/") -> tuple[dict[str, Any], Any]:
    """Call a WSGI app directly: what start_response got, and the body iterable (not closed)."""
    environ: dict[str, Any] = {"PATH_INFO": path}
    setup_testing_defaults(environ)
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        seen["status"], seen["headers"] = status, dict(headers)
        return lambda _data: None

    return seen, app(environ, start_response)


def fully(app: Any, path: str) -> bytes:
    """Call a WSGI app directly as a server does: read its whole body, then close it."""
    body = call(app, path)[1]
    try:
        return b"".join(body)
    finally:
        body.close()


@pytest.mark.parametrize("deadline", [None, 5.0])
def test_a_streamed_wsgi_body_holds_its_place_until_sent_in_full(deadline: float | None) -> None:
    """A body partly iterated still holds the place; iterated to its end it gives it back
    (measured); close() then calls the app's own close() and releases nothing twice.
    """
    closed = []

    class Body:
        def __iter__(self) -> Iterator[bytes]:
            yield b"a"
            yield b"b"

        def close(self) -> None:
            closed.append(True)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [])
        return Body()

    middleware = wsgi.ResilienceMiddleware(app, limit=1, deadline=deadline)
    seen, body = call(middleware)
    assert seen["status"] == "200 OK"
    chunks = iter(body)
    assert next(chunks) == b"a"
    assert middleware.limiter.in_flight == 1
    shed, rejected = call(middleware)
    assert shed["status"].startswith("503")
    assert list(rejected) == [b'{"error": "overloaded"}']
    assert list(chunks) == [b"b"]
    assert middleware.limiter.in_flight == 0
    body.close()
    assert closed == [True]
    assert middleware.limiter.in_flight == 0
    body.close()  # a server that closes twice releases once
    assert middleware.limiter.in_flight == 0


def test_a_wsgi_body_dropped_without_close_gives_its_place_back() -> None:
    """A server or test client that drops the body unread and unclosed (werkzeug's test client
    does) does not lose the place for good: it comes back, unmeasured, when the body is collected.
    """

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [])
        return [b"ok"]

    middleware = wsgi.ResilienceMiddleware(app, limit=1)
    for _ in range(3):
        seen, body = call(middleware)
        assert seen["status"] == "200 OK"
        del body
        gc.collect()
    assert middleware.limiter.in_flight == 0


def test_an_open_circuit_503_releases_its_place_unmeasured(clock: FakeClock) -> None:
    """A CircuitOpenError mapped to 503 frees the place at once and is no latency sample."""

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        clock.advance(0.5)
        raise otelres.CircuitOpenError("db", 2.0)

    limiter = AdaptiveLimit(window=0.1, window_samples=1, clock=clock)
    middleware = wsgi.ResilienceMiddleware(app, limit=limiter)
    for _ in range(5):
        seen, body = call(middleware)
        assert seen["status"].startswith("503")
        assert b"dependency unavailable" in b"".join(body)
        assert limiter.in_flight == 0
    assert limiter.rtt == 0.0


def test_a_forked_child_starts_with_no_request_in_flight() -> None:
    """A request is held in a thread at the fork: the child's limiter has nothing in flight and
    serves a request of its own; the parent's place is released when its request ends.
    """
    gate = Gate()
    middleware = wsgi.ResilienceMiddleware(wsgi_app(gate), limit=1)
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(fully, middleware, "/block")
        gate.wait_entered(1)
        assert middleware.limiter.in_flight == 1

        def child() -> str:
            before = middleware.limiter.in_flight
            seen, body = call(middleware, "/ok")
            during = middleware.limiter.in_flight
            body.close()
            return f"{before} {seen['status']} {during} {middleware.limiter.in_flight}"

        answer = fork_and_read(child)
        gate.open()
        held.result(WAIT)
    assert answer == "0 200 OK 1 0", answer
    assert middleware.limiter.in_flight == 0


@pytest.mark.parametrize("middleware", [wsgi.ResilienceMiddleware, asgi.ResilienceMiddleware])
@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": -3}, "limit"),
        ({"limit": True}, "limit"),
        ({"limit": 2.5}, "limit"),
        ({"limit": float("nan")}, "limit"),
        ({"limit": "10"}, "limit"),
        ({"limit": 10, "critical": "yes"}, "critical"),
        ({"critical": is_critical_environ}, "critical"),
    ],
)
def test_bad_limit_options_are_config_errors(middleware: Any, options: dict[str, Any], key: str) -> None:
    """A limit must be a whole number >= 1 or a limiter; critical a callable, and only with a limit."""
    with pytest.raises(ConfigError) as caught:
        middleware(wsgi_app(Gate()), **options)
    assert caught.value.key == key


def test_a_middleware_dropped_takes_its_limiter_out_of_the_gauges_at_once() -> None:
    """No reference cycle between a middleware's shedding and its limiter: gone together, at once."""
    gc.collect()
    gc.disable()
    try:
        before = len(list(LIVE))
        middleware = wsgi.ResilienceMiddleware(wsgi_app(Gate()), limit=AdaptiveLimit())
        assert middleware.limiter in set(LIVE)
        del middleware
        assert len(list(LIVE)) == before
    finally:
        gc.enable()


def test_no_limit_by_default() -> None:
    """Without limit=, nothing is limited and there is no limiter."""
    middleware = wsgi.ResilienceMiddleware(wsgi_app(Gate()))
    assert middleware.limiter is None
    assert middleware.shedding is None
    assert wsgi.ResilienceMiddleware(wsgi_app(Gate()), limit=3).limiter.limit == 3


def test_a_critical_predicate_that_raises_counts_as_not_critical(caplog: pytest.LogCaptureFixture) -> None:
    """A predicate's bug sheds the request as not critical (503, not 500), logged once."""

    def broken(environ: dict[str, Any]) -> bool:
        raise KeyError("HTTP_X_CRITICAL")

    gate = Gate()
    middleware = wsgi.ResilienceMiddleware(wsgi_app(gate), limit=1, critical=broken)
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(fully, middleware, "/block")
        gate.wait_entered(1)
        with caplog.at_level(logging.WARNING, logger="otelres"):
            for _ in range(3):
                assert call(middleware, "/x")[0]["status"].startswith("503")
        gate.open()
        held.result(WAIT)
    raised = [r for r in caplog.records if "critical predicate" in r.getMessage()]
    assert len(raised) == 1
    assert raised[0].exc_info is not None
    assert middleware.limiter.shed == {"limit": 3, "critical": 0}


def test_shed_lines_are_rate_bounded_and_count_what_they_stand_for(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """One otelres.request.shed line per reason per interval; the next says how many it stands for."""
    shedding: Shedding[dict[str, Any]] = Shedding(FixedLimit(1, clock=clock), log_interval=10.0)
    permit = shedding.admit({})
    assert not isinstance(permit, tuple)
    with caplog.at_level(logging.DEBUG, logger="otelres"):
        for _ in range(5):
            status, headers, _ = shedding.admit({})  # type: ignore[misc]
            assert status == 503
            assert ("Retry-After", "1") in headers
        clock.advance(10.0)
        shedding.admit({})
    lines = [r for r in caplog.records if getattr(r, "event", None) == names.LOG_REQUEST_SHED]
    assert [(r.levelno, r.reason, r.suppressed, r.limit, r.in_flight) for r in lines] == [  # type: ignore[attr-defined]
        (logging.WARNING, "limit", 0, 1, 1),
        (logging.WARNING, "limit", 4, 1, 1),
    ]
    assert lines[0].getMessage().startswith("otelres.request.shed status=503 reason=limit")


def test_large_moves_of_an_adaptive_limit_are_logged_at_a_bounded_rate(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """otelres.limit.changed: when the limit moved by a quarter since the last line, at most once an
    interval; a fall is a warning, a rise information.
    """
    limiter = AdaptiveLimit(min_limit=5, initial_limit=40, clock=clock)
    shedding = Shedding(limiter, log_interval=10.0)

    def busy(rtt: float, seconds: float) -> None:
        end = clock.monotonic() + seconds
        while clock.monotonic() < end:
            permits = [limiter.try_acquire() for _ in range(limiter.limit)]
            clock.advance(rtt)
            for permit in permits:
                assert permit is not None
                permit.release()

    with caplog.at_level(logging.DEBUG, logger="otelres"):
        busy(0.05, 12.0)
        busy(0.5, 30.0)  # latency x10: falls to the minimum
        busy(0.05, 60.0)  # back: rises
    lines = [r for r in caplog.records if getattr(r, "event", None) == names.LOG_LIMIT_CHANGED]
    assert lines
    moves = [(r.levelno, r.from_limit, r.to_limit) for r in lines]  # type: ignore[attr-defined]
    falls = [(before, after) for level, before, after in moves if level == logging.WARNING]
    rises = [(before, after) for level, before, after in moves if level == logging.INFO]
    assert falls
    assert all(after <= 0.75 * before for before, after in falls)
    assert rises
    assert all(after >= 1.25 * before for before, after in rises)
    for earlier, later in itertools.pairwise(lines):
        assert later.from_limit == earlier.to_limit  # type: ignore[attr-defined]
    assert len(lines) <= 11  # 102 s of fake time: at most one line every 10 s
    assert shedding.limiter is limiter


def metrics_of(reader: Any) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    found: dict[str, list[Any]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found[metric.name] = list(metric.data.data_points)
    return found


def test_the_limit_in_flight_and_sheds_are_metrics() -> None:
    """otelres.server.limit and .in_flight (gauges) and .shed (a counter by reason) report the
    process's limiters.
    """
    from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: PLC0415

    gc.collect()  # the limiters of earlier tests are gone: the gauges sum the live ones
    before = shed_total()  # the shed counter is the process's: earlier tests' sheds are in it
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    otelres.telemetry.enable(meter_provider=provider)
    try:
        gate = Gate()
        middleware = wsgi.ResilienceMiddleware(wsgi_app(gate), limit=3)
        with ThreadPoolExecutor(2) as pool:
            held = [pool.submit(fully, middleware, "/block") for _ in range(2)]
            gate.wait_entered(2)
            seen = metrics_of(reader)
            gate.open()
            for future in held:
                future.result(WAIT)
        middleware.limiter.record_shed("limit")
        middleware.limiter.record_shed("critical")
        after = metrics_of(reader)
    finally:
        otelres.telemetry.disable()
        provider.shutdown()
    assert [p.value for p in seen[names.SERVER_LIMIT]] == [3]
    assert [p.value for p in seen[names.SERVER_IN_FLIGHT]] == [2]
    assert [p.value for p in after[names.SERVER_IN_FLIGHT]] == [0]
    shed = {
        p.attributes[names.ATTR_SHED_REASON]: p.value - before[p.attributes[names.ATTR_SHED_REASON]]
        for p in after[names.SERVER_SHED]
    }
    assert shed == {"limit": 1, "critical": 1}
    assert names.PROMETHEUS[names.SERVER_SHED] == "otelres_server_shed_total"
    assert json.dumps(sorted(shed)) == json.dumps(sorted(names.SHED_REASONS))


def test_the_shed_counter_never_goes_down_when_a_limiter_is_collected() -> None:
    """Sheds are counted for the process: a limiter collected after shedding keeps its sheds in
    otelres.server.shed (a counter that went down would read as a reset, or a negative delta)."""
    from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: PLC0415

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    otelres.telemetry.enable(meter_provider=provider)
    try:
        keeper = otelres.FixedLimit(1)
        gone = otelres.FixedLimit(1)
        for _ in range(5):
            gone.record_shed("limit")
        keeper.record_shed("limit")
        first = {p.attributes[names.ATTR_SHED_REASON]: p.value for p in metrics_of(reader)[names.SERVER_SHED]}
        del gone
        gc.collect()
        second = {
            p.attributes[names.ATTR_SHED_REASON]: p.value for p in metrics_of(reader)[names.SERVER_SHED]
        }
    finally:
        otelres.telemetry.disable()
        provider.shutdown()
    assert second["limit"] == first["limit"] >= 6
    assert keeper.shed["limit"] == 1
