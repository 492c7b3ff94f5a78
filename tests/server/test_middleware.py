"""The WSGI and ASGI middlewares: probes, the 503 mapping, request deadlines."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest
import requests
from server_stubs import StubReadiness, StubReport

import otelres
from otelres import asgi, wsgi
from otelres._deadline import time_left
from otelres._degrade import note_degraded

Scope = MutableMapping[str, Any]

# -- WSGI --------------------------------------------------------------------------

_barrier: threading.Barrier | None = None


def wsgi_app(environ: dict[str, Any], start_response: Any) -> Any:
    path = environ["PATH_INFO"]
    if path == "/open":
        raise otelres.CircuitOpenError("db", 2.3)
    if path == "/started":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"partial")
        raise otelres.CircuitOpenError("db", 1.0)
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _stream()
    if path == "/late":
        start_response("200 OK", [("Content-Type", "text/plain")])
        raise otelres.CircuitOpenError("db", 0.2)
    if path == "/degraded":
        note_degraded("reviews")
        note_degraded("pricing")
    if path == "/together" and _barrier is not None:
        _barrier.wait()
    left = time_left()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"none" if left is None else repr(left).encode()]


def _stream() -> Any:
    yield b"first"
    yield repr(time_left()).encode()
    raise otelres.CircuitOpenError("db", 1.0)


def call_wsgi(
    app: Any, path: str = "/", query: str = "", **headers: str
) -> tuple[str, dict[str, str], bytes]:
    environ: dict[str, Any] = {"PATH_INFO": path, "QUERY_STRING": query}
    for name, value in headers.items():
        environ["HTTP_" + name.upper()] = value
    setup_testing_defaults(environ)
    seen: dict[str, Any] = {}

    def start_response(status: str, hdrs: list[tuple[str, str]], exc_info: Any = None) -> Any:
        seen["status"], seen["headers"] = status, dict(hdrs)
        return lambda _data: None

    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        getattr(result, "close", lambda: None)()
    return seen["status"], seen["headers"], body


def test_wsgi_livez_answers_without_app_or_checks(readiness: StubReadiness) -> None:
    """GET /livez answers 200 JSON from liveness_report(), calling neither the app nor a check."""
    pytest.importorskip("otelres.health")
    app = wsgi.ResilienceMiddleware(lambda _e, _s: pytest.fail("app called"), readiness=readiness)
    status, headers, _ = call_wsgi(app, "/livez")
    assert status == "200 OK"
    assert headers["Content-Type"] == "application/json"
    assert readiness.calls == 0


@pytest.mark.parametrize(("code", "line"), [(200, "200 OK"), (503, "503 Service Unavailable")])
def test_wsgi_readyz_reports_json_and_verbose_text(code: int, line: str) -> None:
    """GET /readyz with show_details gives the report's JSON and status; ?verbose gives the text form."""
    stub = StubReadiness(StubReport(code))
    app = wsgi.ResilienceMiddleware(wsgi_app, readiness=stub, ready_path="/ready", show_details=True)
    status, headers, body = call_wsgi(app, "/ready")
    assert (status, headers["Content-Type"]) == (line, "application/json")
    assert body == stub.report.to_json()
    status, headers, body = call_wsgi(app, "/ready", query="verbose")
    assert status == line
    assert headers["Content-Type"].startswith("text/plain")
    assert body.decode() == stub.report.to_text(True)


@pytest.mark.parametrize(("code", "verdict"), [(200, "ok"), (503, "fail")])
def test_wsgi_readyz_shows_the_overall_status_only_by_default(code: int, verdict: str) -> None:
    """By default /readyz is {"status": ...} and ?verbose only the last line: no check or breaker named."""
    stub = StubReadiness(StubReport(code))
    app = wsgi.ResilienceMiddleware(wsgi_app, readiness=stub)
    status, _, body = call_wsgi(app, "/readyz")
    assert (int(status[:3]), json.loads(body)) == (code, {"status": verdict})
    status, _, body = call_wsgi(app, "/readyz", query="verbose")
    assert int(status[:3]) == code
    assert body.decode() == stub.report.to_text(False)
    assert "stub" not in body.decode()


def test_wsgi_default_readiness_reports_breakers() -> None:
    """Without a readiness, /readyz evaluates a default Readiness (breakers only)."""
    pytest.importorskip("otelres.health")
    status, headers, _ = call_wsgi(wsgi.ResilienceMiddleware(wsgi_app), "/readyz")
    assert status == "200 OK"
    assert headers["Content-Type"] == "application/json"


def test_wsgi_probe_paths_only_for_get(readiness: StubReadiness) -> None:
    """A POST to a probe path goes to the app."""
    app = wsgi.ResilienceMiddleware(wsgi_app, readiness=readiness)
    environ: dict[str, Any] = {"PATH_INFO": "/readyz", "REQUEST_METHOD": "POST"}
    setup_testing_defaults(environ)
    assert list(app(environ, lambda *_a: lambda _d: None)) == [b"none"]
    assert readiness.calls == 0


@pytest.mark.parametrize(
    ("show_details", "expected"),
    [
        (False, {"error": "dependency unavailable"}),
        (True, {"error": "dependency unavailable", "dependency": "db", "retry_after": 3}),
    ],
)
def test_wsgi_circuit_open_becomes_503(
    show_details: bool, expected: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """An uncaught CircuitOpenError becomes 503, Retry-After in whole seconds, a JSON body naming the
    dependency only with show_details, no ERROR log."""
    app = wsgi.ResilienceMiddleware(wsgi_app, show_details=show_details)
    with caplog.at_level(logging.DEBUG, logger="otelres"):
        status, headers, body = call_wsgi(app, "/open")
    assert status == "503 Service Unavailable"
    assert headers["Retry-After"] == "3"
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == expected
    assert [r.levelno for r in caplog.records if r.name.startswith("otelres")] == [logging.WARNING]
    assert not any(r.exc_info for r in caplog.records)


def test_wsgi_circuit_open_after_start_response_but_before_body_is_503() -> None:
    """start_response called but nothing sent: the 503 replaces it (with exc_info); Retry-After >= 1."""
    status, headers, _ = call_wsgi(wsgi.ResilienceMiddleware(wsgi_app), "/late")
    assert status.startswith("503")
    assert headers["Retry-After"] == "1"


@pytest.mark.parametrize("path", ["/started", "/stream"])
def test_wsgi_circuit_open_after_body_started_reraises(path: str) -> None:
    """Once body bytes went out (write() or a streamed body), the error is re-raised."""
    with pytest.raises(otelres.CircuitOpenError):
        call_wsgi(wsgi.ResilienceMiddleware(wsgi_app, deadline=5.0), path)


@pytest.mark.parametrize(
    ("kwargs", "header", "low", "high"),
    [
        ({}, None, None, None),
        ({}, "100", 1.5, 2.0),  # capped by max_deadline
        ({}, "1.5", 1.0, 1.5),
        ({"deadline": 1.0}, "1.5", 0.5, 1.0),  # the configured deadline is lower
        ({"deadline": 1.0}, None, 0.5, 1.0),
        ({}, "abc", None, None),  # malformed: ignored
        ({}, "-3", None, None),  # negative: ignored
        ({"deadline": 1.0}, "nan", 0.5, 1.0),
    ],
)
def test_wsgi_deadline(
    kwargs: dict[str, Any], header: str | None, low: float | None, high: float | None
) -> None:
    """The handler's time_left() is the least of the configured deadline, a valid header and max_deadline."""
    app = wsgi.ResilienceMiddleware(wsgi_app, max_deadline=2.0, deadline_header="X-Request-Timeout", **kwargs)
    headers = {} if header is None else {"X_REQUEST_TIMEOUT": header}
    _, _, body = call_wsgi(app, "/", **headers)
    if low is None:
        assert body == b"none"
    else:
        assert high is not None
        assert low < float(body) <= high


def test_malformed_header_is_counted_and_logged_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    """A malformed deadline header is counted and logged at DEBUG, never raised."""
    app = wsgi.ResilienceMiddleware(wsgi_app, deadline_header="X-Request-Timeout")
    with caplog.at_level(logging.DEBUG, logger="otelres"):
        call_wsgi(app, "/", X_REQUEST_TIMEOUT="soon")
    assert app.rules.malformed_headers == 1
    assert [r.levelno for r in caplog.records if r.name.startswith("otelres")] == [logging.DEBUG]


def test_server_attribute_is_a_deprecated_alias_of_rules() -> None:
    """ResilienceMiddleware.server (the old name) still gives the rules, with a DeprecationWarning."""
    app = wsgi.ResilienceMiddleware(wsgi_app)
    with pytest.warns(DeprecationWarning, match=r"\.rules"):
        assert app.server is app.rules


def test_streamed_body_runs_under_the_deadline() -> None:
    """A body generator iterated by the server still sees the request's deadline."""
    app = wsgi.ResilienceMiddleware(wsgi_app, deadline=2.0)
    chunks: list[bytes] = []
    environ: dict[str, Any] = {"PATH_INFO": "/stream"}
    setup_testing_defaults(environ)
    result = app(environ, lambda *_a: lambda _d: None)
    with pytest.raises(otelres.CircuitOpenError):
        chunks.extend(result)
    assert 1.0 < float(chunks[1]) <= 2.0
    assert time_left() is None


def test_wsgi_degraded_header() -> None:
    """Breakers that fell back during the request are named in X-Degraded with show_details, else it is 1."""
    _, headers, _ = call_wsgi(wsgi.ResilienceMiddleware(wsgi_app, show_details=True), "/degraded")
    assert headers["X-Degraded"] == "pricing,reviews"
    _, headers, _ = call_wsgi(wsgi.ResilienceMiddleware(wsgi_app), "/degraded")
    assert headers["X-Degraded"] == "1"
    _, headers, _ = call_wsgi(wsgi.ResilienceMiddleware(wsgi_app), "/")
    assert "X-Degraded" not in headers


def test_bad_configuration_is_refused() -> None:
    """A non-positive deadline, a relative probe path, a bad header name or show_details: ConfigError."""
    with pytest.raises(otelres.ConfigError, match="max_deadline"):
        wsgi.ResilienceMiddleware(wsgi_app, max_deadline=0)
    with pytest.raises(otelres.ConfigError, match="deadline"):
        asgi.ResilienceMiddleware(asgi_app, deadline=-1.0)
    with pytest.raises(otelres.ConfigError, match="live_path"):
        wsgi.ResilienceMiddleware(wsgi_app, live_path="livez")
    with pytest.raises(otelres.ConfigError, match="deadline_header"):
        asgi.ResilienceMiddleware(asgi_app, deadline_header="X Request\r\nTimeout")
    with pytest.raises(otelres.ConfigError, match="show_details"):
        wsgi.ResilienceMiddleware(wsgi_app, show_details="yes")  # type: ignore[arg-type]


def test_deadline_header_is_off_by_default() -> None:
    """Without deadline_header, a caller's X-Request-Timeout sets no deadline (WSGI and ASGI)."""
    _, _, body = call_wsgi(wsgi.ResilienceMiddleware(wsgi_app), "/", X_REQUEST_TIMEOUT="0.005")
    assert body == b"none"
    scope = http_scope("/", headers=[(b"x-request-timeout", b"0.005")])
    _, _, body = asyncio.run(call_asgi(asgi.ResilienceMiddleware(asgi_app), scope))
    assert body == b"none"


def test_wsgi_real_server(wsgi_server: Any, readiness: StubReadiness) -> None:
    """Under a threaded wsgiref server: probe, 503 mapping, concurrent requests keep their deadlines."""
    global _barrier
    base = wsgi_server(
        wsgi.ResilienceMiddleware(
            wsgi_app,
            readiness=readiness,
            max_deadline=20.0,
            deadline_header="X-Request-Timeout",
            show_details=True,
        )
    )
    assert requests.get(base + "/readyz", timeout=5).json() == {"status": "ok"}
    answer = requests.get(base + "/open", timeout=5)
    assert (answer.status_code, answer.headers["Retry-After"]) == (503, "3")
    assert answer.json()["dependency"] == "db"
    _barrier = threading.Barrier(2, timeout=5)
    try:
        with ThreadPoolExecutor(2) as pool:
            got = list(
                pool.map(
                    lambda s: float(
                        requests.get(base + "/together", headers={"X-Request-Timeout": s}, timeout=10).text
                    ),
                    ["5", "10"],
                )
            )
    finally:
        _barrier = None
    assert 4.0 < got[0] <= 5.0
    assert 9.0 < got[1] <= 10.0


# -- ASGI --------------------------------------------------------------------------

_seen: list[str] = []


async def asgi_app(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            _seen.append(message["type"])
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "websocket":
        _seen.append("websocket")
        await send({"type": "websocket.close"})
        return
    path = scope["path"]
    if path == "/open":
        raise otelres.CircuitOpenError("cache", 0.0)
    if path == "/started":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise otelres.CircuitOpenError("cache", 1.0)
    if path == "/degraded":
        note_degraded("recommendations")
    if path == "/together":
        _together.append(None)
        if len(_together) == 2:
            _both.set()
        await asyncio.wait_for(_both.wait(), 5)
    left = time_left()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"none" if left is None else repr(left).encode()})


_together: list[None] = []
_both = asyncio.Event()


def http_scope(path: str, query: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None) -> Scope:
    return {
        "type": "http",
        "method": "GET",
        "path": path,
        "query_string": query,
        "headers": headers or [],
    }


async def call_asgi(app: Any, scope: Scope) -> tuple[int, dict[bytes, bytes], bytes]:
    messages: list[Scope] = []

    async def receive() -> Scope:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Scope) -> None:
        messages.append(message)

    await app(scope, receive, send)
    start = messages[0]
    body = b"".join(m.get("body", b"") for m in messages[1:])
    return start["status"], dict(start["headers"]), body


def test_asgi_probes(readiness: StubReadiness) -> None:
    """ASGI /readyz awaits evaluate(): JSON, ?verbose text, 503 when failing; the app is not called."""
    app = asgi.ResilienceMiddleware(asgi_app, readiness=readiness, show_details=True)
    status, headers, body = asyncio.run(call_asgi(app, http_scope("/readyz")))
    assert (status, headers[b"content-type"], body) == (200, b"application/json", b'{"status": "ok"}')
    readiness.report = StubReport(503)
    status, headers, body = asyncio.run(call_asgi(app, http_scope("/readyz", b"verbose")))
    assert (status, body) == (503, b"[+]stub failed\nreadyz check failed\n")
    assert readiness.calls == 2


def test_asgi_readyz_shows_the_overall_status_only_by_default() -> None:
    """By default ASGI /readyz is {"status": ...} and ?verbose only the last line: no check named."""
    app = asgi.ResilienceMiddleware(asgi_app, readiness=StubReadiness(StubReport(503)))
    status, _, body = asyncio.run(call_asgi(app, http_scope("/readyz")))
    assert (status, body) == (503, b'{"status":"fail"}')
    status, _, body = asyncio.run(call_asgi(app, http_scope("/readyz", b"verbose")))
    assert (status, body) == (503, b"readyz check failed\n")


def test_asgi_livez(readiness: StubReadiness) -> None:
    """ASGI /livez answers from liveness_report() without a check."""
    pytest.importorskip("otelres.health")
    app = asgi.ResilienceMiddleware(asgi_app, readiness=readiness)
    status, _, _ = asyncio.run(call_asgi(app, http_scope("/livez")))
    assert status == 200
    assert readiness.calls == 0


@pytest.mark.parametrize(
    ("show_details", "expected"),
    [
        (False, {"error": "dependency unavailable"}),
        (True, {"error": "dependency unavailable", "dependency": "cache", "retry_after": 1}),
    ],
)
def test_asgi_circuit_open_becomes_503(
    show_details: bool, expected: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """An uncaught CircuitOpenError becomes 503 with Retry-After >= 1 and the JSON body (naming the
    dependency only with show_details); one warning."""
    app = asgi.ResilienceMiddleware(asgi_app, show_details=show_details)
    with caplog.at_level(logging.DEBUG, logger="otelres"):
        status, headers, body = asyncio.run(call_asgi(app, http_scope("/open")))
    assert (status, headers[b"retry-after"], headers[b"content-type"]) == (503, b"1", b"application/json")
    assert json.loads(body) == expected
    assert [r.levelno for r in caplog.records if r.name.startswith("otelres")] == [logging.WARNING]


def test_asgi_circuit_open_after_start_reraises() -> None:
    """Once http.response.start went out, the CircuitOpenError is re-raised."""
    with pytest.raises(otelres.CircuitOpenError):
        asyncio.run(call_asgi(asgi.ResilienceMiddleware(asgi_app), http_scope("/started")))


@pytest.mark.parametrize(
    ("header", "low", "high"),
    [(b"100", 1.5, 2.0), (b"1", 0.5, 1.0), (b"bogus", None, None), (b"-1", None, None)],
)
def test_asgi_deadline(header: bytes, low: float | None, high: float | None) -> None:
    """The handler's time_left() follows the header, capped by max_deadline; a malformed one is ignored."""
    app = asgi.ResilienceMiddleware(asgi_app, max_deadline=2.0, deadline_header="X-Request-Timeout")
    scope = http_scope("/", headers=[(b"x-request-timeout", header)])
    _, _, body = asyncio.run(call_asgi(app, scope))
    if low is None:
        assert body == b"none"
    else:
        assert high is not None
        assert low < float(body) <= high


def test_asgi_concurrent_requests_keep_their_deadlines() -> None:
    """Two requests in flight together on one loop each see their own header's deadline."""
    app = asgi.ResilienceMiddleware(asgi_app, deadline_header="X-Request-Timeout")

    async def both() -> list[tuple[int, dict[bytes, bytes], bytes]]:
        global _both
        _together.clear()
        _both = asyncio.Event()
        return list(
            await asyncio.gather(
                call_asgi(app, http_scope("/together", headers=[(b"x-request-timeout", b"5")])),
                call_asgi(app, http_scope("/together", headers=[(b"x-request-timeout", b"10")])),
            )
        )

    first, second = asyncio.run(both())
    assert 4.0 < float(first[2]) <= 5.0
    assert 9.0 < float(second[2]) <= 10.0


def test_asgi_lifespan_and_websocket_pass_through() -> None:
    """lifespan and websocket scopes reach the app untouched, even on a probe path."""
    app = asgi.ResilienceMiddleware(asgi_app, deadline=1.0)
    _seen.clear()
    sent: list[Scope] = []
    inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]

    async def receive() -> Scope:
        return inbox.pop(0)

    async def send(message: Scope) -> None:
        sent.append(message)

    asyncio.run(app({"type": "lifespan"}, receive, send))
    asyncio.run(app({"type": "websocket", "path": "/livez", "headers": []}, receive, send))
    assert _seen == ["lifespan.startup", "lifespan.shutdown", "websocket"]
    assert [m["type"] for m in sent] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
        "websocket.close",
    ]


def test_asgi_degraded_header() -> None:
    """Breakers that fell back during the request are named in x-degraded with show_details, else it is 1."""
    app = asgi.ResilienceMiddleware(asgi_app, show_details=True)
    _, headers, _ = asyncio.run(call_asgi(app, http_scope("/degraded")))
    assert headers[b"x-degraded"] == b"recommendations"
    _, headers, _ = asyncio.run(call_asgi(asgi.ResilienceMiddleware(asgi_app), http_scope("/degraded")))
    assert headers[b"x-degraded"] == b"1"


def test_asgi_real_uvicorn(asgi_server: Any, readiness: StubReadiness) -> None:
    """Under uvicorn: lifespan passes through, probes, the 503 mapping, concurrent deadlines."""
    global _both
    _seen.clear()
    _together.clear()
    base = asgi_server(
        asgi.ResilienceMiddleware(
            asgi_app, readiness=readiness, max_deadline=20.0, deadline_header="X-Request-Timeout"
        )
    )
    assert _seen == ["lifespan.startup"]
    assert requests.get(base + "/readyz", timeout=5).json() == {"status": "ok"}
    answer = requests.get(base + "/open", timeout=5)
    assert (answer.status_code, answer.headers["Retry-After"]) == (503, "1")
    assert answer.headers["Content-Type"] == "application/json"
    _both = asyncio.Event()  # bound to uvicorn's loop on first wait
    with ThreadPoolExecutor(2) as pool:
        got = list(
            pool.map(
                lambda s: float(
                    requests.get(base + "/together", headers={"X-Request-Timeout": s}, timeout=10).text
                ),
                ["5", "10"],
            )
        )
    assert 4.0 < got[0] <= 5.0
    assert 9.0 < got[1] <= 10.0


@pytest.mark.parametrize(("show_details", "header"), [(False, "1"), (True, "https://recs.internal:443")])
def test_a_real_fallback_names_its_breaker_in_x_degraded(show_details: bool, header: str) -> None:
    """A Resilience call that returns its fallback during a request sets X-Degraded: its breaker's
    name with show_details, else 1."""
    recommendations = otelres.Resilience(
        "https://recs.internal:443",
        breaker=otelres.BreakerPolicy(),
        fallback=otelres.Fallback.value(["popular items"]),
    )
    recommendations.breaker.force_open()

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        items = recommendations.call(lambda: ["for you"])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [", ".join(items).encode()]

    status, headers, body = call_wsgi(wsgi.ResilienceMiddleware(app, show_details=show_details), "/product")
    assert status.startswith("200")
    assert body == b"popular items"
    assert headers["X-Degraded"] == header
