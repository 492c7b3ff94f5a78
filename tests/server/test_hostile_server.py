"""The server side against hostile input: deadline headers a caller controls, secrets in breaker
names and errors, names no header can carry, and a probe flood against a hanging check; each
through a real server (uvicorn, and a threaded wsgiref server) where a server is involved."""

from __future__ import annotations

import http.client
import logging
import math
import threading
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pytest
import requests
import structlog
from hypothesis import example, given
from hypothesis import strategies as st

import otelres
import otelres.telemetry
from otelres import asgi, wsgi
from otelres._deadline import MAX_DEADLINE, time_left
from otelres._registry import Registry, set_default_registry
from otelres.health import Readiness
from otelres.server._core import RequestRules, header_value, parse_deadline
from otelres.testing import FakeClock

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator, MutableMapping

    Routes = dict[str, Callable[[], bytes]]
    Message = MutableMapping[str, Any]

SECRET = "S3CRET"  # noqa: S105 - the password nothing published may hold
DSN = f"postgresql://app:{SECRET}@db:5432/app"
SAFE_DSN = "postgresql://db:5432/app"
HEADER = "X-Request-Timeout"
HOSTILE_HEADERS = [
    "1e308",
    "1e999",
    "inf",
    "-inf",
    "Infinity",
    "nan",
    "NaN",
    "-1",
    "+1",
    "0",
    "0.0",
    "-0",
    "1e-400",
    "0x10",
    "1_0",
    "  2  ",
    "\t3",
    "",
    " ",
    "\u0661",  # ARABIC-INDIC DIGIT ONE: float() takes it, a header parser must not
    "\uff11",  # FULLWIDTH DIGIT ONE
    "推荐",
    "9" * 5000,
    "1." + "0" * 5000 + "1",
]


# -- apps and servers ---------------------------------------------------------------------------


def wsgi_app(routes: Routes) -> Callable[..., list[bytes]]:
    """A WSGI app answering 200 with what the route for the path returns."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        body = routes[environ["PATH_INFO"]]()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]

    return app


def asgi_app(routes: Routes) -> Callable[..., Awaitable[None]]:
    """The same app in ASGI (lifespan answered, so uvicorn starts quietly)."""

    async def app(scope: Message, receive: Callable[[], Awaitable[Message]], send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = routes[scope["path"]]()
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
        )
        await send({"type": "http.response.body", "body": body})

    return app


@pytest.fixture(params=["wsgiref", "uvicorn"])
def serve(request: pytest.FixtureRequest, wsgi_server: Any, asgi_server: Any) -> Callable[..., str]:
    """Start the routes under ResilienceMiddleware(**options) in a real server; gives the base URL."""

    def start(routes: Routes, **options: Any) -> str:
        if request.param == "wsgiref":
            return str(wsgi_server(wsgi.ResilienceMiddleware(wsgi_app(routes), **options)))
        return str(asgi_server(asgi.ResilienceMiddleware(asgi_app(routes), **options)))

    return start


def left() -> bytes:
    """A route: the request's time left, or ``none``."""
    seconds = time_left()
    return b"none" if seconds is None else repr(seconds).encode()


def raw_get(base: str, path: str, headers: list[tuple[str, bytes]]) -> tuple[int, bytes]:
    """A GET with header values sent as given (bytes, leading spaces and all): status and body."""
    url = urllib.parse.urlsplit(base)
    connection = http.client.HTTPConnection(url.hostname or "", url.port, timeout=10)
    try:
        connection.putrequest("GET", path)
        for name, value in headers:
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


# -- the deadline header ------------------------------------------------------------------------


@given(
    header=st.one_of(st.text(), st.sampled_from(HOSTILE_HEADERS), st.floats().map(repr), st.none()),
    configured=st.one_of(st.none(), st.floats(min_value=1e-6, max_value=MAX_DEADLINE)),
    cap=st.floats(min_value=1e-6, max_value=MAX_DEADLINE),
)
@example(header="1e308", configured=None, cap=MAX_DEADLINE)
@example(header="\u0661", configured=None, cap=30.0)
def test_any_header_gives_a_capped_deadline_or_none(
    header: str | None, configured: float | None, cap: float
) -> None:
    """RequestRules.deadline_for never raises: a finite deadline > 0 and at most every cap, or None."""
    rules = RequestRules(
        readiness=None,
        live_path="/livez",
        ready_path="/readyz",
        deadline=configured,
        deadline_header=HEADER,
        max_deadline=cap,
    )
    seconds = rules.deadline_for(header)
    if seconds is None:
        assert configured is None
    else:
        assert math.isfinite(seconds)
        assert 0 < seconds <= min(cap, MAX_DEADLINE, math.inf if configured is None else configured)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("2", 2.0),
        (" 2.5\t", 2.5),
        (".5", 0.5),
        ("5.", 5.0),
        ("1e2", 100.0),
        ("1e308", MAX_DEADLINE),
        ("1e999", MAX_DEADLINE),  # too large to represent: the longest deadline, not an error
        ("inf", None),
        ("nan", None),
        ("-1", None),
        ("+1", None),
        ("0", None),
        ("1e-400", None),  # rounds to 0
        ("0x10", None),
        ("1_0", None),
        ("\u0661", None),
        ("\uff11", None),
        ("1 2", None),
        ("1\x00", None),  # a server refuses it before the middleware sees it; the parser too
    ],
)
def test_a_deadline_header_is_a_plain_decimal_number(header: str, seconds: float | None) -> None:
    """Only ASCII digits (a fraction, an exponent) parse, capped at a day; no sign, inf, nan, hex, _ or
    non-ASCII digit."""
    assert parse_deadline(header) == seconds


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, MAX_DEADLINE * 2, 0, -1.0, True, "5"])
@pytest.mark.parametrize("key", ["max_deadline", "deadline"])
def test_deadlines_must_be_finite_and_at_most_a_day(key: str, value: Any) -> None:
    """max_deadline (and deadline) inf, NaN, past a day, <= 0 or not a number: ConfigError naming the key."""
    for middleware in (wsgi.ResilienceMiddleware, asgi.ResilienceMiddleware):
        with pytest.raises(otelres.ConfigError, match=key) as info:
            middleware(lambda *_a: None, **{key: value})
        assert f"{MAX_DEADLINE:g}" in str(info.value)
    wsgi.ResilienceMiddleware(lambda *_a: None, **{key: MAX_DEADLINE})  # a day is allowed


def test_hostile_deadline_headers_through_a_real_server(serve: Callable[..., str]) -> None:
    """Under a real server, every hostile header value answers 200 with no deadline or one within
    max_deadline; nothing is raised."""
    base = serve({"/left": left}, deadline_header=HEADER, max_deadline=7.0)
    for value in HOSTILE_HEADERS:
        status, body = raw_get(base, "/left", [(HEADER, value.encode("utf-8"))])
        assert status == 200, (value, body)
        assert body == b"none" or 0 < float(body) <= 7.0, (value, body)


def test_the_deadline_header_is_ignored_unless_named(serve: Callable[..., str]) -> None:
    """By default a caller's X-Request-Timeout: 0.005 sets no deadline: it cannot make calls time out."""
    base = serve({"/left": left})
    for _ in range(25):
        assert raw_get(base, "/left", [(HEADER, b"0.005")]) == (200, b"none")


# -- secrets ------------------------------------------------------------------------------------


@pytest.fixture
def log_events() -> Iterator[None]:
    """otelres's log events on (as instrument() turns them on), written as stdlib records."""
    assert not structlog.is_configured(), "the records would go through structlog, past caplog"
    otelres.telemetry.enable()
    yield
    otelres.telemetry.disable()


def refused() -> bytes:
    """A dependency whose error repeats its DSN, password and all."""
    raise ConnectionRefusedError(f"could not connect to {DSN}")


@pytest.mark.usefixtures("log_events")
@pytest.mark.parametrize("show_details", [False, True])
def test_a_secret_in_a_breaker_name_never_leaves_the_process(
    serve: Callable[..., str],
    show_details: bool,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Resilience named with a DSN and password, its circuit open: the 503 body and headers, a
    fallback's X-Degraded, /readyz (JSON and text) and every log record hold no password; without
    show_details no internal address either, with it the sanitised name."""
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("OTELRES_BREAKER_CONSECUTIVE_FAILURES", "2")
    set_default_registry(Registry(clock=FakeClock()))  # time stands still: the circuits stay open
    retry = otelres.RetryPolicy(attempts=1)
    db = otelres.Resilience(DSN, retry=retry)
    cache = otelres.Resilience(
        DSN.replace("/app", "/cache"), retry=retry, fallback=otelres.Fallback.value(b"cached")
    )
    for _ in range(2):
        with pytest.raises(ConnectionRefusedError):
            db.call(refused)
        cache.call(refused)
    readiness = Readiness(cache_seconds=0)
    readiness.add("db", refused, critical=False)
    routes: Routes = {"/db": lambda: db.call(refused), "/cached": lambda: cache.call(refused)}
    base = serve(routes, readiness=readiness, show_details=show_details)

    answers = {
        path: requests.get(base + path, timeout=10)
        for path in ("/db", "/cached", "/readyz", "/readyz?verbose")
    }
    assert answers["/db"].status_code == 503
    assert int(answers["/db"].headers["Retry-After"]) >= 1
    assert answers["/cached"].text == "cached"
    report = answers["/readyz"].json()
    assert report["status"] == "degraded"
    published = "\n".join(f"{a.status_code} {dict(a.headers)} {a.text}" for a in answers.values())
    logged = "\n".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    assert any(r.name == "otelres.server" and r.levelno == logging.WARNING for r in caplog.records)
    assert SECRET not in published
    assert SECRET not in logged
    if show_details:
        assert answers["/db"].json()["dependency"] == SAFE_DSN
        assert answers["/cached"].headers["X-Degraded"] == SAFE_DSN.replace("/app", "/cache")
        assert report["breakers"][SAFE_DSN] == "open"
        assert report["checks"]["db"]["error"].startswith("ConnectionRefusedError: could not connect to")
        assert f"breaker:{SAFE_DSN} open" in answers["/readyz?verbose"].text
    else:
        assert answers["/db"].json() == {"error": "dependency unavailable"}
        assert answers["/cached"].headers["X-Degraded"] == "1"
        assert report == {"status": "degraded"}
        assert answers["/readyz?verbose"].text == "readyz check passed\n"
        assert "db:5432" not in published


# -- names no header can carry ------------------------------------------------------------------


@pytest.mark.parametrize("show_details", [False, True])
def test_a_non_latin1_name_never_breaks_a_response(serve: Callable[..., str], show_details: bool) -> None:
    """A fallback under a breaker named 推荐 and a degrade part named 推荐 answer 200, the name
    percent-encoded in X-Degraded (the breaker's only with show_details); CR LF adds no header."""
    recommendations = otelres.Resilience("推荐", fallback=otelres.Fallback.value(b"popular"))
    recommendations.breaker.force_open()

    @otelres.degrade(b"later", name="推荐 offers")
    def offers() -> bytes:
        raise otelres.CircuitOpenError("offers", 1.0)

    @otelres.degrade(b"none", name="a\r\nSet-Cookie: session=1")
    def injected() -> bytes:
        raise otelres.CircuitOpenError("cookies", 1.0)

    routes: Routes = {
        "/breaker": lambda: recommendations.call(lambda: b"fresh"),
        "/part": offers,
        "/crlf": injected,
    }
    base = serve(routes, show_details=show_details)
    answer = requests.get(base + "/breaker", timeout=10)
    assert (answer.status_code, answer.text) == (200, "popular")
    assert answer.headers["X-Degraded"] == ("%E6%8E%A8%E8%8D%90" if show_details else "1")
    answer = requests.get(base + "/part", timeout=10)
    assert (answer.status_code, answer.text) == (200, "later")
    assert answer.headers["X-Degraded"] == "%E6%8E%A8%E8%8D%90%20offers"
    assert urllib.parse.unquote(answer.headers["X-Degraded"]) == "推荐 offers"
    answer = requests.get(base + "/crlf", timeout=10)
    assert (answer.status_code, answer.text) == (200, "none")
    assert answer.headers["X-Degraded"] == "a%0D%0ASet-Cookie:%20session=1"
    assert "Set-Cookie" not in answer.headers


@given(st.text())
def test_header_values_are_printable_ascii_and_reversible(text: str) -> None:
    """header_value gives printable ASCII without a comma or space, which percent-decodes back."""
    value = header_value(text)
    assert all("!" <= char <= "~" for char in value)
    assert "," not in value
    assert urllib.parse.unquote(value, errors="strict") == text


# -- a probe flood against a hanging check ------------------------------------------------------


def hanging_threads() -> int:
    return sum(1 for thread in threading.enumerate() if thread.name == "otelres-readiness-hang")


def test_a_hanging_check_holds_one_thread_under_a_probe_flood(serve: Callable[..., str]) -> None:
    """40 concurrent /readyz probes against a check that hangs: each answers (503, in its timeout),
    the check holds one thread; once it returns, the next probe passes."""
    release = threading.Event()
    readiness = Readiness(timeout=0.5, cache_seconds=0)
    readiness.add("hang", lambda: release.wait(30))
    base = serve({}, readiness=readiness)
    before = hanging_threads()
    try:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: requests.get(base + "/readyz", timeout=10), range(40)))
        assert [(a.status_code, a.json()) for a in answers] == [(503, {"status": "fail"})] * 40
        assert hanging_threads() - before <= 1
        assert readiness.running == ("hang",)
    finally:
        release.set()
    assert requests.get(base + "/readyz", timeout=10).json() == {"status": "ok"}
