"""The readiness probe: registered checks run concurrently, each bounded by its
timeout, plus every breaker's state, with the report cached briefly so that a
flood of probes does not hammer the dependencies.

A check is any callable, sync or async: it passes unless it raises or times
out. Sync checks run in daemon threads of their own, so a hung one holds
neither the event loop nor a worker of its default executor; a check has at
most one run in flight, so a hung one holds one thread, however many probes
arrive (a probe that finds it still running waits for that run, within its
timeout, instead of starting another). A forked child starts its checks afresh
on first use: the parent's check threads are not in it.
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

from otelres import _fork
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


def _settle(future: asyncio.Future[object], result: object, error: BaseException | None) -> None:
    if future.done():  # timed out and cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class _Run:
    """One run of a sync check in a daemon thread of its own, shared by every
    evaluation that needs the check while it lasts: however many probes arrive
    while a check hangs, it holds one thread.

    Not ``asyncio.to_thread``: a hung check must not hold a worker of the loop's
    default executor, nor hold up the loop's shutdown. Each waiting evaluation
    gets a future of its own loop (:meth:`waiter`) and gives it back when it
    stops waiting (:meth:`forget`), so waiters do not pile up on a hung run.
    """

    __slots__ = ("_lock", "_outcome", "_waiters")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._outcome: tuple[object, BaseException | None] | None = None
        self._waiters: dict[asyncio.Future[object], asyncio.AbstractEventLoop] = {}

    def waiter(self) -> asyncio.Future[object]:
        """A future of the running loop, settled with the run's outcome."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[object] = loop.create_future()
        with self._lock:
            outcome = self._outcome
            if outcome is None:
                self._waiters[future] = loop
                return future
        _settle(future, *outcome)
        return future

    def forget(self, future: asyncio.Future[object]) -> None:
        """Stop settling ``future`` (its evaluation no longer waits)."""
        with self._lock:
            self._waiters.pop(future, None)

    def finish(self, result: object, error: BaseException | None) -> None:
        """Settle every waiter, and any that comes later, with the outcome."""
        with self._lock:
            self._outcome = (result, error)
            waiters, self._waiters = self._waiters, {}
        for future, loop in waiters.items():
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(_settle, future, result, error)


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
        #: The sync checks running now, by name: at most one run each.
        self._running: dict[str, _Run] = {}
        _fork.renew(self, "_lock")

    def _after_fork_in_child(self) -> None:
        """The runs and the evaluation in flight were the parent's threads', which a forked
        child does not have: forget them, so that the next evaluation runs every check afresh
        (a probe would otherwise wait on a run that never ends). The cached report stays.
        """
        self._inflight = None
        self._running = {}
        self._tasks = set()

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

    @property
    def running(self) -> tuple[str, ...]:
        """The sync checks with a run in flight now (a hung one stays here until it returns)."""
        with self._lock:
            return tuple(self._running)

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

    def _start(self, check: _Check) -> _Run:
        """The check's run in flight, or a new one started in a daemon thread."""
        with self._lock:
            run = self._running.get(check.name)
            if run is not None:
                return run
            run = self._running[check.name] = _Run()
        context = contextvars.copy_context()

        def target() -> None:
            result: object = None
            error: BaseException | None = None
            try:
                result = context.run(check.call)
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting evaluations
                error = exc
            with self._lock:
                if self._running.get(check.name) is run:
                    del self._running[check.name]
            run.finish(result, error)

        try:
            threading.Thread(target=target, name=f"otelres-readiness-{check.name}", daemon=True).start()
        except RuntimeError as exc:  # no thread to be had: this run fails, the next one tries again
            with self._lock:
                del self._running[check.name]
            run.finish(None, exc)
        return run

    async def _call(self, check: _Check) -> None:
        if _is_async(check.call):
            result = await cast("Awaitable[object]", check.call())
        else:
            run = self._start(check)
            future = run.waiter()
            try:
                result = await future
            finally:
                run.forget(future)
        if inspect.isawaitable(result):  # a sync callable that returned a coroutine
            await result

    async def _run_check(self, check: _Check) -> CheckResult:
        timeout = check.timeout if check.timeout is not None else self.timeout
        started = time.perf_counter()
        error: str | None = None
        task = asyncio.ensure_future(self._call(check))
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
