"""otelres.health: readiness checks, statuses, caching, renderings, sanitizing, and the
built-in checks against a real PostgreSQL, a real redis-server and a local HTTP server.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import importlib
import importlib.util
import json
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

import otelres
from otelres import health
from otelres._breaker import State
from otelres._registry import Registry
from otelres.health import (
    CheckResult,
    Readiness,
    Report,
    http_check,
    liveness_report,
    postgres_check,
    redis_check,
    sanitize,
    sql_check,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from otelres.testing import FakeClock

# The real-server helpers of the database and store tests (tests/ is not a package).
for _helpers in ("db", "store"):
    _path = str(Path(__file__).resolve().parent.parent / _helpers)
    if _path not in sys.path:
        sys.path.append(_path)
pg_server_module: Any = importlib.import_module("pg_server")
store_servers: Any = importlib.import_module("store_servers")

SECRET = "hunter2-s3cr3t"  # noqa: S105 - the password no report may show
WAIT = 10.0  # generous bound on waits that end as soon as the other side acts


def ok() -> str:
    return "fine"


async def aok() -> str:
    await asyncio.sleep(0)
    return "fine"


def boom() -> None:
    raise ConnectionError("refused")


async def aboom() -> None:
    await asyncio.sleep(0)
    raise ConnectionError("refused")


def closed_port() -> int:
    return int(pg_server_module.free_port())


# -- statuses ---------------------------------------------------------------


def test_all_passing_sync_and_async_checks_report_ok() -> None:
    """Sync and async checks that return report ok, 200, one result each."""
    ready = Readiness(cache_seconds=0)
    ready.add("sync", ok)
    ready.add("async", aok)
    report = asyncio.run(ready.evaluate())
    assert report.status == "ok"
    assert report.http_status == 200
    assert [(c.name, c.status, c.critical, c.error) for c in report.checks] == [
        ("sync", "ok", True, None),
        ("async", "ok", True, None),
    ]
    assert all(c.duration >= 0 for c in report.checks)
    assert ready.evaluate_sync().status == "ok"


@pytest.mark.parametrize("failing", [boom, aboom], ids=["sync", "async"])
def test_failing_non_critical_check_reports_degraded(failing: Any) -> None:
    """A non-critical check that raises makes the report degraded, still 200."""
    ready = Readiness(cache_seconds=0)
    ready.add("db", ok)
    ready.add("recommendations", failing, critical=False)
    report = ready.evaluate_sync()
    assert report.status == "degraded"
    assert report.http_status == 200
    failed = report.checks[1]
    assert (failed.status, failed.critical) == ("fail", False)
    assert failed.error == "ConnectionError: refused"


@pytest.mark.parametrize("failing", [boom, aboom], ids=["sync", "async"])
def test_failing_critical_check_reports_fail(failing: Any) -> None:
    """A critical check that raises makes the report fail with 503."""
    ready = Readiness(cache_seconds=0)
    ready.add("db", failing)
    ready.add("cache", boom, critical=False)
    report = asyncio.run(ready.evaluate())
    assert report.status == "fail"
    assert report.http_status == 503


def test_no_checks_and_liveness_report_ok() -> None:
    """No checks gives ok; liveness is ok with no check and says livez."""
    assert Readiness().evaluate_sync().status == "ok"
    live = liveness_report()
    assert (live.status, live.checks, live.http_status) == ("ok", (), 200)
    assert live.to_text() == "livez check passed\n"


def test_duplicate_name_and_bad_arguments_are_refused() -> None:
    """A name registered twice, a non-positive timeout or a non-callable raise."""
    ready = Readiness()
    ready.add("db", ok)
    with pytest.raises(ValueError, match="already registered"):
        ready.add("db", ok)
    with pytest.raises(ValueError, match="positive"):
        ready.add("x", ok, timeout=0)
    with pytest.raises(TypeError):
        ready.add("y", "not callable")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive"):
        Readiness(timeout=0)
    assert ready.names == ("db",)


# -- concurrency and timeouts ----------------------------------------------


def test_sync_checks_run_concurrently() -> None:
    """Two sync checks that each wait for the other can only pass when run at the same time."""
    first, second = threading.Event(), threading.Event()

    def a() -> None:
        first.set()
        if not second.wait(WAIT):
            raise AssertionError("b never ran")

    def b() -> None:
        second.set()
        if not first.wait(WAIT):
            raise AssertionError("a never ran")

    ready = Readiness(timeout=WAIT, cache_seconds=0)
    ready.add("a", a)
    ready.add("b", b)
    report = ready.evaluate_sync()
    assert report.status == "ok", report


def test_async_checks_run_concurrently() -> None:
    """Two async checks that each wait for the other can only pass when run at the same time."""

    async def main() -> Report:
        first, second = asyncio.Event(), asyncio.Event()

        async def a() -> None:
            first.set()
            await second.wait()

        async def b() -> None:
            second.set()
            await first.wait()

        ready = Readiness(timeout=WAIT, cache_seconds=0)
        ready.add("a", a)
        ready.add("b", b)
        return await ready.evaluate()

    assert asyncio.run(main()).status == "ok"


def test_hung_checks_time_out_with_their_own_timeout() -> None:
    """A sync and an async check that never finish fail as timed out, per-check timeout first."""
    release = threading.Event()

    def hangs() -> None:
        release.wait(WAIT)

    async def ahangs() -> None:
        await asyncio.Event().wait()

    ready = Readiness(timeout=WAIT, cache_seconds=0)
    ready.add("sync", hangs, timeout=0.05)
    ready.add("async", ahangs, critical=False, timeout=0.1)
    ready.add("fast", ok)
    try:
        report = ready.evaluate_sync()
    finally:
        release.set()
    errors = {c.name: c.error for c in report.checks}
    assert errors == {"sync": "timed out after 0.05 s", "async": "timed out after 0.1 s", "fast": None}
    assert report.status == "fail"
    assert report.checks[0].duration < WAIT


def test_a_hung_sync_check_has_one_run_in_flight() -> None:
    """Evaluations while a sync check hangs wait on its one run (one thread), which leaves the
    running set once the check returns."""
    release = threading.Event()
    runs: list[None] = []

    def hangs() -> bool:
        runs.append(None)
        return release.wait(WAIT)

    ready = Readiness(timeout=0.05, cache_seconds=0)
    ready.add("hangs", hangs)
    try:
        for _ in range(5):
            assert ready.evaluate_sync().checks[0].error == "timed out after 0.05 s"
        assert asyncio.run(ready.evaluate()).status == "fail"
        assert (len(runs), ready.running) == (1, ("hangs",))
    finally:
        release.set()
    for thread in threading.enumerate():
        if thread.name == "otelres-readiness-hangs":
            thread.join(WAIT)
    assert ready.running == ()


def test_default_timeout_message() -> None:
    """The readiness timeout applies to a check without its own, named in the error."""
    release = threading.Event()
    ready = Readiness(timeout=0.05, cache_seconds=0)
    ready.add("slow", lambda: release.wait(WAIT))
    try:
        report = ready.evaluate_sync()
    finally:
        release.set()
    assert report.checks[0].error == "timed out after 0.05 s"


def test_sync_callable_returning_a_coroutine_is_awaited() -> None:
    """A lambda that returns a coroutine counts as async: its exception fails the check."""
    ready = Readiness(cache_seconds=0)

    def returns_coroutine() -> Any:
        return aboom()

    ready.add("lambda", returns_coroutine)
    assert ready.evaluate_sync().checks[0].error == "ConnectionError: refused"


# -- caching ----------------------------------------------------------------


def test_report_is_cached_for_cache_seconds(clock: FakeClock) -> None:
    """Within cache_seconds the checks do not run again; after, they do."""
    runs = []
    ready = Readiness(cache_seconds=1.0, clock=clock)
    ready.add("counted", lambda: runs.append(1))
    first = ready.evaluate_sync()
    clock.advance(0.9)
    assert ready.evaluate_sync() is first
    assert asyncio.run(ready.evaluate()) is first
    assert len(runs) == 1
    clock.advance(0.1)
    assert ready.evaluate_sync() is not first
    assert len(runs) == 2


def test_concurrent_evaluations_share_one_run() -> None:
    """Probes arriving while a run is in flight wait for it instead of running the checks again."""
    runs = []

    async def main() -> list[Report]:
        gate, started = asyncio.Event(), asyncio.Event()

        async def counted() -> None:
            runs.append(1)
            started.set()
            await gate.wait()

        ready = Readiness(cache_seconds=0, timeout=WAIT)
        ready.add("counted", counted)
        probes = [asyncio.ensure_future(ready.evaluate()) for _ in range(5)]
        await started.wait()
        gate.set()
        return await asyncio.gather(*probes)

    reports = asyncio.run(main())
    assert len(runs) == 1
    assert all(r is reports[0] for r in reports)


# -- breakers -----------------------------------------------------------------


def test_open_breaker_makes_report_degraded() -> None:
    """An open, forced-open or half-open breaker gives degraded; closed ones are listed as ok."""
    registry = otelres.default_registry()
    registry.get("postgresql://db:5432/app")
    payments = registry.get("payments")
    ready = Readiness(cache_seconds=0)
    ready.add("db", ok)
    assert ready.evaluate_sync().status == "ok"
    for state in (State.OPEN, State.FORCED_OPEN, State.HALF_OPEN):
        payments.transition_to(state)
        report = ready.evaluate_sync()
        assert report.status == "degraded", state
        assert report.breakers == (("postgresql://db:5432/app", "closed"), ("payments", state.value))
    assert Readiness(include_breakers=False).evaluate_sync() == Report(status="ok")


def test_breakers_come_from_the_given_registry() -> None:
    """A registry passed in replaces the process-wide one."""
    registry = Registry()
    registry.get("search").transition_to(State.OPEN)
    otelres.default_registry().get("other")
    report = Readiness(registry=registry).evaluate_sync()
    assert report.breakers == (("search", "open"),)
    assert report.status == "degraded"


# -- renderings ---------------------------------------------------------------

SAMPLE = Report(
    status="degraded",
    checks=(
        CheckResult("db", "ok", True, 0.0123456),
        CheckResult("recs", "fail", False, 1.0, "timed out after 1.0 s"),
    ),
    breakers=(("payments", "open"), ("db", "closed")),
)


def test_json_rendering() -> None:
    """The JSON body has one entry a check (error only when failed) and one a breaker."""
    assert json.loads(SAMPLE.to_json()) == {
        "status": "degraded",
        "checks": {
            "db": {"status": "ok", "critical": True, "duration_ms": 12.346},
            "recs": {
                "status": "fail",
                "critical": False,
                "duration_ms": 1000.0,
                "error": "timed out after 1.0 s",
            },
        },
        "breakers": {"payments": "open", "db": "closed"},
    }
    assert isinstance(SAMPLE.to_json(), bytes)


def test_text_rendering() -> None:
    """Verbose text lists each check and breaker Kubernetes-style; plain text is the verdict only."""
    assert SAMPLE.to_text(verbose=True) == (
        "[+]db ok\n"
        "[-]recs failed: timed out after 1.0 s\n"
        "[-]breaker:payments open\n"
        "[+]breaker:db closed\n"
        "readyz check passed\n"
    )
    assert SAMPLE.to_text(verbose=False) == "readyz check passed\n"
    failed = Report(status="fail", checks=(CheckResult("db", "fail", True, 0.1, "OSError: down"),))
    assert failed.to_text(verbose=True) == "[-]db failed: OSError: down\nreadyz check failed\n"
    assert failed.http_status == 503


# -- sanitize -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://app:s3cret@db:5432/app", "postgresql://***@db:5432/app"),
        ("redis://:s3cret@cache:6379/0", "redis://***@cache:6379/0"),
        ("failed for app:s3cret@db:5432", "failed for ***@db:5432"),
        ("GET https://api.example/v1?token=abc&page=2 failed", "GET https://api.example/v1?*** failed"),
        ("host=db user=app password=s3cret dbname=app", "host=db user=app password=*** dbname=app"),
        ("host=db password='s3 cret' port=5", "host=db password=*** port=5"),
        ('{"password": "s3cret", "user": "app"}', '{"password": ***, "user": "app"}'),
        ("token=abc; api_key=def, client_secret=ghi", "token=***; api_key=***, client_secret=***"),
        ("X-Api-Key: abc123 rejected", "X-Api-Key: *** rejected"),
        ("Authorization: Bearer eyJhbGciOi.x.y", "Authorization: ***"),
        ("sent bearer abc.def-ghi to host", "sent bearer *** to host"),
        ("Authorization: Basic dXNlcjpwYXNz", "Authorization: ***"),
        ("ConnectionError: refused", "ConnectionError: refused"),
        ("timed out after 1.0 s", "timed out after 1.0 s"),
        ("user@example.com not found", "user@example.com not found"),
    ],
)
def test_sanitize(text: str, expected: str) -> None:
    """Passwords, tokens, userinfo, query strings and credentials are masked; the rest is kept."""
    assert sanitize(text) == expected


def test_check_errors_are_sanitized() -> None:
    """An exception quoting a DSN and a URL with a token leaves no secret in any rendering."""
    dsn = f"postgresql://app:{SECRET}@db:5432/app?sslpassword={SECRET}"

    def leaky() -> None:
        raise RuntimeError(f"cannot connect to {dsn}\nvia https://h/x?token={SECRET} password={SECRET}")

    ready = Readiness(cache_seconds=0)
    ready.add("leaky", leaky)
    report = ready.evaluate_sync()
    assert report.checks[0].error is not None
    assert report.checks[0].error.startswith("RuntimeError: cannot connect to postgresql://***@db:5432/app")
    for rendering in (report.to_json().decode(), report.to_text(verbose=True), repr(report)):
        assert SECRET not in rendering


# -- built-in checks against real servers ----------------------------------


@pytest.fixture(scope="module")
def pg_server() -> Iterator[Any]:
    """A real PostgreSQL on 127.0.0.1 for this module (trust auth: any password works)."""
    bin_dir = pg_server_module.find_bin_dir()
    if bin_dir is None:
        message = "PostgreSQL's initdb and pg_ctl are not installed (apt-get install postgresql)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    server = pg_server_module.PgServer(bin_dir)
    try:
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture(autouse=True)
def _uninstrumented() -> Iterator[None]:
    """Nothing patched before or after a test: the checks use the plain clients."""
    otelres.uninstrument()
    yield
    otelres.uninstrument()


def pg_dsn(server: Any, *, port: int | None = None) -> str:
    return f"postgresql://postgres:{SECRET}@{server.host}:{port or server.port}/postgres?application_name=x"


def test_postgres_check_psycopg(pg_server: Any) -> None:
    """postgres_check (psycopg) passes against the real server and fails, sanitized, on a closed port."""
    ready = Readiness(timeout=WAIT, cache_seconds=0)
    ready.add("pg", postgres_check(pg_dsn(pg_server)))
    ready.add("pg-down", postgres_check(pg_dsn(pg_server, port=closed_port())), critical=False)
    ready.add("sql", sql_check(lambda: psycopg.connect(pg_dsn(pg_server))))
    report = ready.evaluate_sync()
    results = {c.name: c for c in report.checks}
    assert results["pg"].status == "ok", results["pg"]
    assert results["sql"].status == "ok", results["sql"]
    down = results["pg-down"]
    assert down.status == "fail"
    assert down.error is not None
    assert down.error.startswith("OperationalError: ")
    assert report.status == "degraded"
    assert SECRET not in report.to_json().decode()


def test_postgres_check_asyncpg(pg_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without psycopg, postgres_check is an async asyncpg check: passes, and fails sanitized."""
    find_spec = importlib.util.find_spec

    def no_psycopg(name: str, *args: Any) -> Any:
        return None if name == "psycopg" else find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", no_psycopg)
    check = postgres_check(pg_dsn(pg_server))
    assert asyncio.iscoroutinefunction(check)
    ready = Readiness(timeout=WAIT, cache_seconds=0)
    ready.add("pg", check)
    ready.add("pg-down", postgres_check(pg_dsn(pg_server, port=closed_port())))
    report = asyncio.run(ready.evaluate())
    results = {c.name: c for c in report.checks}
    assert results["pg"].status == "ok", results["pg"]
    assert results["pg-down"].status == "fail"
    assert report.status == "fail"
    assert SECRET not in report.to_json().decode()


def test_postgres_check_needs_a_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    """With neither psycopg nor asyncpg, postgres_check says what to install."""
    monkeypatch.setattr(importlib.util, "find_spec", lambda *_: None)
    with pytest.raises(ModuleNotFoundError, match="psycopg or asyncpg"):
        postgres_check("postgresql://db/app")


def test_redis_check(tmp_path: Path) -> None:
    """redis_check pings a real redis-server; a stopped one fails without leaking the password."""
    with store_servers.RedisServer(tmp_path) as server:
        ready = Readiness(timeout=WAIT, cache_seconds=0)
        ready.add("redis", redis_check(f"redis://127.0.0.1:{server.port}/0"))
        ready.add(
            "redis-down",
            redis_check(f"redis://:{SECRET}@127.0.0.1:{closed_port()}/0?client_name=probe"),
            critical=False,
        )
        report = ready.evaluate_sync()
    results = {c.name: c for c in report.checks}
    assert results["redis"].status == "ok", results["redis"]
    assert results["redis-down"].status == "fail"
    assert results["redis-down"].error is not None
    assert results["redis-down"].error.startswith("ConnectionError: ")
    assert report.status == "degraded"
    assert SECRET not in report.to_json().decode()


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        status = {"/ok": 200, "/missing": 404, "/broken": 500, "/moved": 302}.get(path, 404)
        self.send_response(status)
        if status == 302:
            self.send_header("Location", "/ok")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


@pytest.fixture
def http_base() -> Iterator[str]:
    """A local HTTP server: /ok 200, /moved 302 to /ok, /missing 404, /broken 500."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(WAIT)


def test_http_check(http_base: str) -> None:
    """http_check passes on an expected status (redirects followed) and fails, sanitized, otherwise."""
    ready = Readiness(timeout=WAIT, cache_seconds=0)
    ready.add("ok", http_check(f"{http_base}/ok"))
    ready.add("moved", http_check(f"{http_base}/moved"))
    ready.add("missing-expected", http_check(f"{http_base}/missing", expect=range(200, 500)))
    ready.add("broken", http_check(f"{http_base}/broken?token={SECRET}"), critical=False)
    ready.add("down", http_check(f"http://127.0.0.1:{closed_port()}/?token={SECRET}"), critical=False)
    report = ready.evaluate_sync()
    results = {c.name: c for c in report.checks}
    for name in ("ok", "moved", "missing-expected"):
        assert results[name].status == "ok", results[name]
    assert results["broken"].error == "UnexpectedStatusError: HTTP status 500"
    assert results["down"].error is not None
    assert results["down"].error.startswith("URLError: ")
    assert report.status == "degraded"
    for rendering in (report.to_json().decode(), report.to_text(verbose=True)):
        assert SECRET not in rendering


def test_http_check_refuses_other_schemes() -> None:
    """http_check only takes http and https URLs."""
    with pytest.raises(ValueError, match="http or https"):
        http_check("file:///etc/passwd")


def test_public_names() -> None:
    """Every name in __all__ exists; health is not re-exported from otelres."""
    for name in health.__all__:
        assert hasattr(health, name)
    assert not hasattr(otelres, "Readiness")
    with contextlib.suppress(AttributeError):
        assert otelres.health is health


@pytest.mark.parametrize(
    "message",
    [
        "connection to postgresql://app:pa/S3CRET@db:5432/app failed",
        "connection to postgresql://app:p@S3CRET@db:5432/app failed",
        "connection to postgresql://app:p#S3CRET@db:5432/app failed",
    ],
)
def test_sanitize_masks_passwords_holding_raw_separators(message: str) -> None:
    """A password holding a raw '/', '@' or '#' leaves no part of itself in a health body."""
    masked = health.sanitize(message)
    assert "S3CRET" not in masked
    assert "db:5432/app" in masked
