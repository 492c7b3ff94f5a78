"""Where otelres's events go: through structlog when the application configured it, else as
structured records on the standard library logger ``otelres`` (the application's logging set-up
decides level, format and destination), decided at each event; never printed by otelres itself."""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest
import requests
import structlog
from structlog.testing import capture_logs
from telemetry_support import NAME, NO_JITTER, Script

import otelres
import otelres.telemetry
from otelres import wsgi
from otelres.telemetry import names
from otelres.testing import FakeClock, forced_state

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

TRIPS_AT_3 = otelres.BreakerPolicy(consecutive_failures=3)


def resilience(name: str = NAME, **options: Any) -> otelres.Resilience:
    """A Resilience on a fake clock, without jitter: the delays are 0.1, 0.2, ..."""
    return otelres.Resilience(name, retry=NO_JITTER, clock=FakeClock(), **options)


def fails(res: otelres.Resilience, script: Script) -> BaseException:
    with pytest.raises(Exception) as info:
        res.call(script)
    return info.value


def records(caplog: pytest.LogCaptureFixture, logger: str = "otelres") -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == logger]


def fields(record: logging.LogRecord, *keys: str) -> tuple[Any, ...]:
    """The record's attributes that ``extra=`` gave it."""
    return tuple(getattr(record, key) for key in keys)


def events(caplog: pytest.LogCaptureFixture, logger: str = "otelres") -> list[str]:
    return [fields(r, "event")[0] for r in records(caplog, logger)]


@pytest.fixture
def enabled() -> Iterator[None]:
    """otelres's events on, as instrument() turns them on (no providers: logs only)."""
    otelres.telemetry.enable()
    yield
    otelres.telemetry.disable()


@pytest.mark.usefixtures("enabled")
def test_unconfigured_structlog_retry_is_a_stdlib_record(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without structlog configured, a real retry is an INFO record on logger "otelres", its fields
    as attributes and as key=value in the message, and nothing is printed."""
    assert not structlog.is_configured()
    caplog.set_level(logging.DEBUG, logger="otelres")
    assert resilience().call(Script(ConnectionError, "ok")) == "ok"
    (record,) = records(caplog)
    assert record.levelno == logging.INFO
    assert record.getMessage() == f"otelres.retry breaker={NAME} attempt=1 delay=0.1 reason=connect"
    fields = {k: getattr(record, k) for k in ("event", "breaker", "attempt", "delay", "reason")}
    assert fields == {
        "event": names.LOG_RETRY,
        "breaker": NAME,
        "attempt": 1,
        "delay": 0.1,
        "reason": "connect",
    }
    assert capsys.readouterr() == ("", "")


@pytest.mark.usefixtures("enabled")
def test_every_event_reaches_the_stdlib_logger_at_its_level(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """Retries (INFO), then the opening transition, the exhausted call and the rejection (WARNING)
    are records on "otelres" with their figures; nothing goes to stdout or stderr."""
    caplog.set_level(logging.DEBUG, logger="otelres")
    res = resilience(breaker=otelres.CircuitBreaker(NAME, TRIPS_AT_3, clock=FakeClock()))
    assert isinstance(fails(res, Script(ConnectionError)), ConnectionError)
    assert isinstance(fails(res, Script("ok")), otelres.CircuitOpenError)
    seen = [(*fields(r, "event"), r.levelno) for r in records(caplog)]
    assert seen == [
        (names.LOG_RETRY, logging.INFO),
        (names.LOG_RETRY, logging.INFO),
        (names.LOG_CIRCUIT_TRANSITION, logging.WARNING),
        (names.LOG_RETRY_EXHAUSTED, logging.WARNING),
        (names.LOG_CALL_REJECTED, logging.WARNING),
    ]
    transition, exhausted, rejected = records(caplog)[2:]
    assert transition.getMessage() == (
        f"otelres.circuit.transition breaker={NAME} from_state=closed to_state=open failure_rate=1.0"
    )
    assert exhausted.getMessage() == f"otelres.retry.exhausted breaker={NAME} attempts=3 reason=connect"
    assert fields(rejected, "breaker", "retry_after", "suppressed") == (NAME, 5.0, 0)
    assert capsys.readouterr() == ("", "")


@pytest.mark.usefixtures("enabled")
def test_the_applications_level_for_otelres_decides(caplog: pytest.LogCaptureFixture) -> None:
    """With logger "otelres" at WARNING, the INFO retry lines are dropped and the exhausted
    warning is kept."""
    caplog.set_level(logging.WARNING, logger="otelres")
    assert isinstance(fails(resilience(), Script(ConnectionError)), ConnectionError)
    assert [r.getMessage().split()[0] for r in records(caplog)] == [names.LOG_RETRY_EXHAUSTED]


@pytest.mark.usefixtures("enabled")
def test_values_with_spaces_are_quoted_in_the_message(caplog: pytest.LogCaptureFixture) -> None:
    """A value that is not one bare word is written quoted, so that the line parses as logfmt."""
    caplog.set_level(logging.INFO, logger="otelres")
    resilience("my dependency").call(Script(ConnectionError, "ok"))
    (record,) = records(caplog)
    assert record.getMessage().startswith('otelres.retry breaker="my dependency" attempt=1 ')
    assert fields(record, "breaker") == ("my dependency",)


@pytest.mark.usefixtures("enabled")
def test_configured_structlog_gets_the_events_and_stdlib_none(caplog: pytest.LogCaptureFixture) -> None:
    """With structlog configured, the events go through structlog and no record reaches "otelres"."""
    caplog.set_level(logging.DEBUG, logger="otelres")
    with capture_logs() as logs:
        assert resilience().call(Script(ConnectionError, "ok")) == "ok"
    assert [(e["event"], e["log_level"], e["attempt"]) for e in logs] == [(names.LOG_RETRY, "info", 1)]
    assert records(caplog) == []


@pytest.mark.usefixtures("enabled")
def test_the_route_is_decided_at_each_event(caplog: pytest.LogCaptureFixture) -> None:
    """An application that configures structlog after telemetry was enabled gets the later events."""
    caplog.set_level(logging.DEBUG, logger="otelres")
    res = resilience()
    res.call(Script(ConnectionError, "ok"))
    with capture_logs() as logs:
        res.call(Script(TimeoutError, "ok"))
    assert [fields(r, "reason") for r in records(caplog)] == [("connect",)]
    assert [e["reason"] for e in logs] == ["timeout"]


# -- the middleware's 503 line ----------------------------------------------------------------


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's signature
        """No access log: the test asserts nothing is printed."""


@contextlib.contextmanager
def serving(app: Callable[..., Iterable[bytes]]) -> Iterator[str]:
    """``app`` on a real WSGI server on loopback; yields its URL."""
    server = make_server("127.0.0.1", 0, app, handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


def pricing_app(res: otelres.Resilience) -> Callable[..., Iterable[bytes]]:
    """A WSGI app whose one route calls the pricing dependency through ``res``."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        body = res.call(lambda: b"42")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]

    return wsgi.ResilienceMiddleware(app)


def get(url: str) -> requests.Response:
    with requests.Session() as session:
        session.trust_env = False
        return session.get(url, timeout=5)


@pytest.mark.usefixtures("enabled")
def test_middleware_503_line_is_a_stdlib_record(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """A request answered 503 by the WSGI middleware over a real server logs a WARNING record on
    "otelres.server" with the breaker and Retry-After, beside the rejection; nothing is printed."""
    caplog.set_level(logging.DEBUG, logger="otelres")
    res = resilience("pricing")
    with serving(pricing_app(res)) as url, forced_state(res.breaker, "forced_open"):
        response = get(url + "/price")
    assert response.status_code == 503
    (line,) = records(caplog, "otelres.server")
    assert line.levelno == logging.WARNING
    assert fields(line, "event", "breaker", "status") == (names.LOG_REQUEST_REJECTED, "pricing", 503)
    assert line.getMessage().startswith("otelres.request.rejected status=503 breaker=pricing retry_after=")
    assert names.LOG_CALL_REJECTED in events(caplog)
    assert capsys.readouterr() == ("", "")


@pytest.mark.usefixtures("enabled")
def test_middleware_503_line_goes_through_configured_structlog(caplog: pytest.LogCaptureFixture) -> None:
    """With structlog configured, the middleware's 503 line is a structlog event, not a record."""
    caplog.set_level(logging.DEBUG, logger="otelres")
    res = resilience("pricing")
    with capture_logs() as logs, serving(pricing_app(res)) as url, forced_state(res.breaker, "forced_open"):
        assert get(url).status_code == 503
    rejections = [e for e in logs if e["event"] != names.LOG_CIRCUIT_TRANSITION]  # forced_state's own
    assert [(e["event"], e["log_level"], e["breaker"]) for e in rejections] == [
        (names.LOG_CALL_REJECTED, "warning", "pricing"),
        (names.LOG_REQUEST_REJECTED, "warning", "pricing"),
    ]
    assert [r for r in caplog.records if r.name.startswith("otelres")] == []
