"""The readiness probe: registered checks run concurrently, each bounded by its
timeout, plus every breaker's state, with the report cached briefly so that a
flood of probes does not hammer the dependencies.

A check is any callable, sync or async: it passes unless it raises or times
out. Sync checks run in daemon threads of their own, so a hung one holds
neither the event loop nor a worker of its default executor.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import dataclasses
import inspect
import threading
import time
from typing import TYPE_CHECKING, cast

from otelres._clock import MONOTONIC, Clock
from otelres._registry import Registry, default_registry
from otelres.server.health._report import CheckResult, Report, overall_status
from otelres.server.health._sanitize import describe

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ["Readiness"]


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
        return Report(status=overall_status(checked, breakers), checks=checked, breakers=breakers)

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
            error = describe(exc)
        return CheckResult(
            name=check.name,
            status="ok" if error is None else "fail",
            critical=check.critical,
            duration=time.perf_counter() - started,
            error=error,
        )
