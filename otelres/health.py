"""Health probes: liveness (the process answers) and readiness (its dependencies do).

:class:`Readiness` runs the registered checks concurrently, each bounded by its
timeout, adds every breaker's state, and caches the :class:`Report` briefly so
that a flood of probes does not hammer the dependencies. A check is any
callable, sync or async: it passes unless it raises or times out. Errors in a
report go through :func:`sanitize`: no password, token or query string ever
appears in a health body.

Liveness never checks a dependency: :func:`liveness_report` is always ``ok``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import dataclasses
import importlib
import importlib.util
import inspect
import json
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING, Any, cast

from ._clock import MONOTONIC, Clock
from ._hooks import State
from ._registry import Registry, default_registry

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = [
    "CheckResult",
    "Readiness",
    "Report",
    "UnexpectedStatusError",
    "http_check",
    "liveness_report",
    "postgres_check",
    "redis_check",
    "sanitize",
    "sql_check",
]

#: Breaker states that make a report ``degraded``.
_DEGRADING_STATES = frozenset({State.OPEN.value, State.FORCED_OPEN.value, State.HALF_OPEN.value})
#: The longest error a report carries (after sanitizing).
_MAX_ERROR = 500

# -- sanitizing ------------------------------------------------------------

_SENSITIVE_NAME = (
    r"[\w.-]*(?:passw(?:or)?d|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|credentials?)[\w.-]*"
)
_URL_QUERY = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s?#\"'<>]*)\?[^\s#\"'<>]*")
_URL_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^\s/?#@\"'<>]*@")
_BARE_USERINFO = re.compile(r"(?<![\w/.-])[^\s:/@\"'<>]+:[^\s/@\"'<>]+@(?=[\w\[])")
_AUTHORIZATION = re.compile(
    r"(?P<head>\b(?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?)(?:(?:bearer|basic|digest|token)\s+)?[^\s\"',;]+",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(?P<head>\b(?:bearer|basic)\s+)(?!\*\*\*)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
_KEY_VALUE = re.compile(
    rf"(?P<head>(?<![\w.-]){_SENSITIVE_NAME}[\"']?\s*[=:]\s*)(?P<value>\"[^\"]*\"|'[^']*'|[^\s&;,\"'<>)}}\]]+)",
    re.IGNORECASE,
)


def sanitize(text: str) -> str:
    """``text`` without secrets: URL userinfo (``user:pass@`` becomes ``***@``), URL
    query strings, ``password=...``/``token: ...``-style pairs (quoted or not) and
    ``Authorization``/``Bearer`` credentials.
    """
    text = _URL_QUERY.sub(r"\g<head>?***", text)
    text = _URL_USERINFO.sub(r"\g<scheme>***@", text)
    text = _BARE_USERINFO.sub("***@", text)
    text = _AUTHORIZATION.sub(r"\g<head>***", text)
    text = _BEARER.sub(r"\g<head>***", text)
    return _KEY_VALUE.sub(r"\g<head>***", text)


def _describe(exc: BaseException) -> str:
    """The sanitized one-line error a report carries for ``exc``."""
    text = sanitize(" ".join(f"{type(exc).__name__}: {exc}".split()))
    return text if len(text) <= _MAX_ERROR else text[: _MAX_ERROR - 3] + "..."


# -- reports ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """One check's outcome: ``status`` is ``"ok"`` or ``"fail"``; ``duration`` in
    seconds; ``error`` sanitized, None when the check passed.
    """

    name: str
    status: str
    critical: bool
    duration: float
    error: str | None = None


@dataclasses.dataclass(frozen=True)
class Report:
    """A probe's answer.

    ``status`` is ``"fail"`` when a critical check fails, ``"degraded"`` when a
    non-critical check fails or a breaker is open, forced open or half-open,
    else ``"ok"``. ``breakers`` holds ``(name, state)`` pairs. ``probe`` names
    the probe in the text form (``readyz`` or ``livez``).
    """

    status: str
    checks: tuple[CheckResult, ...] = ()
    breakers: tuple[tuple[str, str], ...] = ()
    probe: str = "readyz"

    @property
    def http_status(self) -> int:
        """503 when the status is ``fail``, 200 otherwise."""
        return 503 if self.status == "fail" else 200

    def to_dict(self) -> dict[str, Any]:
        """The JSON body as a dict (see :meth:`to_json`)."""
        checks: dict[str, dict[str, Any]] = {}
        for check in self.checks:
            entry: dict[str, Any] = {
                "status": check.status,
                "critical": check.critical,
                "duration_ms": round(check.duration * 1000.0, 3),
            }
            if check.error is not None:
                entry["error"] = check.error
            checks[check.name] = entry
        return {"status": self.status, "checks": checks, "breakers": dict(self.breakers)}

    def to_json(self) -> bytes:
        """``{"status", "checks": {name: {"status", "critical", "duration_ms", "error"?}},
        "breakers": {name: state}}`` in UTF-8.
        """
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()

    def to_text(self, verbose: bool = False) -> str:
        """Kubernetes style: with ``verbose`` one ``[+]name ok`` or ``[-]name failed:
        reason`` line a check (then one a breaker, ``[+]breaker:name closed``),
        always ending with ``readyz check passed`` or ``readyz check failed`` and a newline.
        """
        verdict = "failed" if self.status == "fail" else "passed"
        lines: list[str] = []
        if verbose:
            for check in self.checks:
                if check.status == "ok":
                    lines.append(f"[+]{check.name} ok")
                else:
                    lines.append(f"[-]{check.name} failed: {check.error or 'unknown error'}")
            for name, state in self.breakers:
                mark = "-" if state in _DEGRADING_STATES else "+"
                lines.append(f"[{mark}]breaker:{name} {state}")
        lines.append(f"{self.probe} check {verdict}")
        return "\n".join(lines) + "\n"


def liveness_report() -> Report:
    """The liveness answer: ``ok``, with no check (liveness never checks a dependency)."""
    return Report(status="ok", probe="livez")


def _status(checks: tuple[CheckResult, ...], breakers: tuple[tuple[str, str], ...]) -> str:
    failed = [check for check in checks if check.status != "ok"]
    if any(check.critical for check in failed):
        return "fail"
    if failed or any(state in _DEGRADING_STATES for _, state in breakers):
        return "degraded"
    return "ok"


# -- running checks --------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Check:
    name: str
    call: Callable[[], object]
    critical: bool
    timeout: float | None


def _is_async(call: Callable[[], object]) -> bool:
    return inspect.iscoroutinefunction(call) or inspect.iscoroutinefunction(
        getattr(call, "__call__", None)  # noqa: B004 - an object with an async __call__
    )


def _in_thread(call: Callable[[], object], name: str) -> asyncio.Future[object]:
    """Run ``call`` in a daemon thread (with the caller's context); its result as a future.

    Not ``asyncio.to_thread``: a hung check must not hold a worker of the loop's
    default executor, nor hold up the loop's shutdown.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[object] = loop.create_future()
    context = contextvars.copy_context()

    def settle(result: object, error: BaseException | None) -> None:
        if future.done():  # timed out and cancelled
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def target() -> None:
        result: object = None
        error: BaseException | None = None
        try:
            result = context.run(call)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=target, name=f"otelres-readiness-{name}", daemon=True).start()
    return future


async def _call(check: _Check) -> None:
    if _is_async(check.call):
        result = await cast("Awaitable[object]", check.call())
    else:
        result = await _in_thread(check.call, check.name)
    if inspect.isawaitable(result):  # a sync callable that returned a coroutine
        await result


def _discard(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: no "exception was never retrieved" later


class Readiness:
    """The readiness probe: registered checks plus every breaker's state.

    ``timeout`` bounds each check (unless it has its own), ``cache_seconds`` how
    long a report is reused (0 disables the cache), measured on ``clock``.
    Breakers come from ``registry`` (the process-wide one by default) unless
    ``include_breakers`` is false. Concurrent evaluations share one run.
    """

    def __init__(
        self,
        *,
        timeout: float = 1.0,
        cache_seconds: float = 1.0,
        clock: Clock | None = None,
        include_breakers: bool = True,
        registry: Registry | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        if cache_seconds < 0:
            raise ValueError(f"cache_seconds must not be negative, not {cache_seconds!r}")
        self.timeout = float(timeout)
        self.cache_seconds = float(cache_seconds)
        self.clock: Clock = clock if clock is not None else MONOTONIC
        self.include_breakers = include_breakers
        self.registry = registry
        self._checks: dict[str, _Check] = {}
        self._lock = threading.Lock()
        self._cached: tuple[Report, float] | None = None
        self._inflight: concurrent.futures.Future[Report] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def add(
        self,
        name: str,
        check: Callable[[], object] | Callable[[], Awaitable[object]],
        *,
        critical: bool = True,
        timeout: float | None = None,
    ) -> None:
        """Register ``check`` under ``name`` (unique); it passes unless it raises or times out."""
        if not callable(check):
            raise TypeError(f"check {name!r} is not callable: {check!r}")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        with self._lock:
            if name in self._checks:
                raise ValueError(f"a check named {name!r} is already registered")
            self._checks[name] = _Check(name, check, critical, None if timeout is None else float(timeout))
            self._cached = None

    @property
    def names(self) -> tuple[str, ...]:
        """The registered checks' names, in registration order."""
        return tuple(self._checks)

    # -- evaluating --------------------------------------------------------

    def _claim(self) -> tuple[Report | concurrent.futures.Future[Report], bool]:
        """The cached report, or the future of the run in flight (and whether the
        caller owns that run and must start it).
        """
        with self._lock:
            cached = self._cached
            if cached is not None and self.clock.monotonic() - cached[1] < self.cache_seconds:
                return cached[0], False
            if self._inflight is not None:
                return self._inflight, False
            future: concurrent.futures.Future[Report] = concurrent.futures.Future()
            self._inflight = future
            return future, True

    async def _run(self, future: concurrent.futures.Future[Report]) -> None:
        """Run the checks and settle ``future``, also when cancelled."""
        try:
            report = await self._evaluate_now()
        except BaseException as exc:
            with self._lock:
                self._inflight = None
            if isinstance(exc, Exception):
                future.set_exception(exc)
                return
            future.set_exception(RuntimeError("the readiness evaluation was interrupted"))
            raise
        with self._lock:
            self._inflight = None
            self._cached = (report, self.clock.monotonic())
        future.set_result(report)

    async def evaluate(self) -> Report:
        """Run every check concurrently (sync ones in threads), each bounded by its
        timeout, and report; within ``cache_seconds`` of the last run, that run's report.
        """
        found, owner = self._claim()
        if isinstance(found, Report):
            return found
        if owner:
            task = asyncio.get_running_loop().create_task(self._run(found))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        # Shielded: a caller that goes away does not cancel the run others wait for.
        return await asyncio.shield(asyncio.wrap_future(found))

    def evaluate_sync(self) -> Report:
        """:meth:`evaluate` from sync code: no event loop needed (one runs in a thread)."""
        found, owner = self._claim()
        if isinstance(found, Report):
            return found
        if owner:
            future = found

            def run() -> None:
                asyncio.run(self._run(future))

            threading.Thread(target=run, name="otelres-readiness", daemon=True).start()
        return found.result()

    async def _evaluate_now(self) -> Report:
        with self._lock:
            checks = tuple(self._checks.values())
        results = await asyncio.gather(*(self._run_check(check) for check in checks))
        breakers: tuple[tuple[str, str], ...] = ()
        if self.include_breakers:
            registry = self.registry if self.registry is not None else default_registry()
            breakers = tuple((breaker.name, str(breaker.state.value)) for breaker in registry.breakers())
        checked = tuple(results)
        return Report(status=_status(checked, breakers), checks=checked, breakers=breakers)

    async def _run_check(self, check: _Check) -> CheckResult:
        timeout = check.timeout if check.timeout is not None else self.timeout
        started = time.perf_counter()
        error: str | None = None
        task = asyncio.ensure_future(_call(check))
        task.add_done_callback(_discard)
        try:
            done, _ = await asyncio.wait({task}, timeout=timeout)
        except BaseException:
            task.cancel()
            raise
        if not done:
            task.cancel()
            error = f"timed out after {timeout} s"
        elif (exc := task.exception()) is not None:
            error = _describe(exc)
        return CheckResult(
            name=check.name,
            status="ok" if error is None else "fail",
            critical=check.critical,
            duration=time.perf_counter() - started,
            error=error,
        )


# -- built-in checks -------------------------------------------------------


def sql_check(connect: Callable[[], Any]) -> Callable[[], object]:
    """A check that connects with ``connect()`` (a DB-API connection), runs ``SELECT 1``
    and closes: ``sql_check(lambda: psycopg.connect(dsn))``.
    """

    def check() -> object:
        connection = connect()
        try:
            cursor = connection.cursor()
            try:
                cursor.execute("SELECT 1")
                return cursor.fetchone()
            finally:
                cursor.close()
        finally:
            connection.close()

    return check


def postgres_check(
    dsn: str, *, connect_timeout: float = 5.0
) -> Callable[[], Awaitable[object]] | Callable[[], object]:
    """A PostgreSQL check of ``dsn``: psycopg (sync) when installed, else asyncpg
    (async); the driver is imported when the check first runs.
    """
    if importlib.util.find_spec("psycopg") is not None:

        def connect() -> Any:
            psycopg = importlib.import_module("psycopg")
            # libpq counts whole seconds, and at least 2.
            return psycopg.connect(dsn, connect_timeout=max(2, round(connect_timeout)), autocommit=True)

        return sql_check(connect)
    if importlib.util.find_spec("asyncpg") is not None:

        async def check() -> object:
            asyncpg = importlib.import_module("asyncpg")
            connection = await asyncpg.connect(dsn, timeout=connect_timeout)
            try:
                return await connection.fetchval("SELECT 1")
            finally:
                await connection.close()

        return check
    raise ModuleNotFoundError("postgres_check needs psycopg or asyncpg (pip install psycopg)")


def redis_check(url: str, *, socket_timeout: float = 5.0) -> Callable[[], object]:
    """A Redis check: ``redis.Redis.from_url(url).ping()``, then close."""

    def check() -> object:
        redis = importlib.import_module("redis")
        client = redis.Redis.from_url(
            url, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout
        )
        try:
            return client.ping()
        finally:
            client.close()

    return check


class UnexpectedStatusError(Exception):
    """An HTTP check got a status outside the expected range."""


def http_check(url: str, *, expect: range = range(200, 400), timeout: float = 5.0) -> Callable[[], object]:
    """A check that GETs ``url`` (urllib, redirects followed) and fails unless the
    status is in ``expect``.
    """
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in {"http", "https"}:
        raise ValueError(f"http_check needs an http or https URL, not a {scheme!r} one")

    def check() -> object:
        request = urllib.request.Request(url, method="GET")  # noqa: S310 - the scheme is checked above
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
                status = int(response.status)
        except urllib.error.HTTPError as exc:
            status = int(exc.code)
            exc.close()
        if status not in expect:
            raise UnexpectedStatusError(f"HTTP status {status}")
        return status

    return check
