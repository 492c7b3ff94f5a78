"""Fork safety: a process forked while other threads were inside otelres gets working locks, an
empty in-flight retry budget and no stale per-call state (otelres._fork).

Each test forks with ``os.fork()``; the child does its work and writes one line to a pipe, then
leaves with ``os._exit``. The parent waits for that line within CHILD_TIMEOUT and kills a child
that did not answer: that is a deadlock. Nothing sleeps to arrange timing: threads meet on
Barriers and Events, and time is a FakeClock where it matters.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import re
import select
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import pytest
from opentelemetry.metrics import NoOpMeterProvider

import otelres
from otelres import (
    BreakerPolicy,
    BudgetPolicy,
    CircuitOpenError,
    Fallback,
    Listener,
    Registry,
    RetryPolicy,
    State,
    _config,
    _events,
    _instrument,
    _limit,
    _registry,
)
from otelres.instrumentation import _rejections
from otelres.instrumentation._postgres import Subclasses
from otelres.server import _frameworks
from otelres.server._core import RequestRules
from otelres.server.health import Readiness
from otelres.telemetry import _activation, _calls
from otelres.telemetry._logs import LogEvents
from otelres.testing import CapturedEvents, FakeClock

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX only")

NAME = "https://forked.example.com:443"
#: How long a child may take to answer before it counts as deadlocked (it needs milliseconds).
CHILD_TIMEOUT = 10.0
#: Forks in the hammer test, and threads hammering meanwhile.
FORKS = 25
THREADS = 4
#: Bound on every wait of the parent's own threads.
WAIT = 10.0
DEADLOCK = "deadlock"
#: Retries with no delay: the retry path without waiting.
NO_DELAY = RetryPolicy(attempts=3, base_delay=0.0, max_delay=0.0, jitter="none")


class Child:
    """A forked child, seen from the parent: :meth:`answer` waits for the line it writes."""

    #: In the child: the pipe's end to write the answer to.
    write_end = -1

    def __init__(self, pid: int, read_end: int) -> None:
        self.pid = pid
        self.read_end = read_end

    @classmethod
    def fork(cls) -> Child | None:
        """Fork: the parent gets the child, the child gets None (and answers with :meth:`finish`)."""
        read_end, write_end = os.pipe()
        with warnings.catch_warnings():
            # Python 3.12+ warns (DeprecationWarning) that fork() in a multi-threaded process may
            # deadlock the child. Provoking exactly that and checking that otelres survives it is
            # the point of these tests, so the warning is expected here and only here.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # pragma: no cover - the child; its coverage is never saved (os._exit)
            os.close(read_end)
            cls.write_end = write_end
            return None
        os.close(write_end)
        return cls(pid, read_end)

    @classmethod
    def finish(cls, work: Callable[[], str]) -> NoReturn:  # pragma: no cover - the child
        """In the child: run ``work``, write what it returns (or ``error: ...``), leave with
        ``os._exit`` (no pytest or atexit code runs in a child).
        """
        code = 1
        try:
            try:
                line = work()
                code = 0
            except BaseException as exc:
                line = f"error: {exc!r}"
            os.write(cls.write_end, line.encode("utf-8", "replace")[:8000])
        finally:
            os._exit(code)

    def answer(self, timeout: float = CHILD_TIMEOUT) -> str:
        """The child's line, or DEADLOCK when none came within ``timeout`` (the child is killed)."""
        chunks: list[bytes] = []
        deadline = time.monotonic() + timeout
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not select.select([self.read_end], [], [], remaining)[0]:
                    os.kill(self.pid, signal.SIGKILL)
                    return DEADLOCK
                chunk = os.read(self.read_end, 65536)
                if not chunk:
                    return b"".join(chunks).decode("utf-8", "replace")
                chunks.append(chunk)
        finally:
            os.close(self.read_end)
            os.waitpid(self.pid, 0)


def fork_and_run(work: Callable[[], str]) -> str:
    """Fork; the child runs ``work``; its answer (see :class:`Child`)."""
    child = Child.fork()
    if child is None:  # pragma: no cover - the child
        Child.finish(work)
    return child.answer()


class Lockless(Listener):
    """A per-call listener that takes no lock (a test lock held at the fork would hang the child
    for reasons of the test's own).
    """

    per_call = True

    def __init__(self) -> None:
        self.seen = itertools.count()

    def on_event(self, event: otelres.Event) -> None:  # noqa: ARG002 - the Listener's signature
        next(self.seen)


def fails_once() -> tuple[Callable[[], str], list[int]]:
    """A function whose first call raises ConnectionError and whose next ones return "ok", and the
    list of its calls.
    """
    calls: list[int] = []

    def attempt() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("refused")
        return "ok"

    return attempt, calls


def call_stats_and_retry(res: otelres.Resilience) -> str:
    """What every child must be able to do at once: a call, the breaker's stats, and a retry."""
    # The threads may have left it open, forced open, or closed with failures in a row: a reset
    # of a closed breaker changes nothing (consecutive_failures=3 would trip on the retry's
    # failure), so it is forced open first; reset from there starts a new closed period.
    res.breaker.force_open()
    res.breaker.reset()
    assert res.call(lambda: "ok") == "ok"
    res.breaker.stats()
    attempt, calls = fails_once()
    result = res.call(attempt)
    assert (result, len(calls)) == ("ok", 2), (result, calls, res.budget.retries_in_flight)
    return "ok"


@pytest.fixture
def switch_often() -> Iterator[None]:
    """Switch threads every few bytecodes, so that forks land inside otelres's critical sections."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(previous)


@contextlib.contextmanager
def hammering(res: otelres.Resilience) -> Iterator[threading.Semaphore]:
    """THREADS threads calling through ``res`` (failures, retries, successes), resetting and forcing
    its breaker, adding and removing listeners, reloading settings and making guards, until the
    block ends. Yields a semaphore released once per round of the first thread.
    """
    stop = threading.Event()
    progress = threading.Semaphore(0)
    errors: list[BaseException] = []
    fallback = otelres.Resilience(NAME + "/fallback", retry=NO_DELAY, fallback=Fallback.stale(max_size=8))
    listener = Lockless()

    def failing(rng: random.Random) -> None:
        def flaky() -> str:
            if rng.random() < 0.5:
                raise ConnectionError("refused")
            return "ok"

        with contextlib.suppress(ConnectionError, CircuitOpenError):
            res.call(flaky)
        progress.release()

    def retrying(rng: random.Random) -> None:
        with contextlib.suppress(ConnectionError, CircuitOpenError):
            res.call(fails_once()[0])

    def resetting(rng: random.Random) -> None:
        breaker = res.breaker
        breaker.stats()
        if rng.random() < 0.1:
            breaker.force_open()
        breaker.reset()

    def housekeeping(rng: random.Random) -> None:
        otelres.add_listener(listener)
        otelres.remove_listener(listener)
        _config.configure(None)
        _config.current()
        _registry.default_registry().guard(f"https://n{rng.randrange(50)}.example.com:443")
        with contextlib.suppress(ConnectionError):
            fallback.call(fails_once()[0] if rng.random() < 0.5 else (lambda: "fresh"))

    def loop(step: Callable[[random.Random], None], seed: int) -> None:
        rng = random.Random(seed)
        try:
            while not stop.is_set():
                step(rng)
        except BaseException as exc:
            errors.append(exc)

    steps = [failing, retrying, resetting, housekeeping]
    threads = [
        threading.Thread(target=loop, args=(steps[i % len(steps)], i), daemon=True) for i in range(THREADS)
    ]
    otelres.add_listener(Lockless())  # every call takes the full flow, with its listener dispatch
    for thread in threads:
        thread.start()
    try:
        yield progress
    finally:
        stop.set()
        for thread in threads:
            thread.join(WAIT)
    assert not any(thread.is_alive() for thread in threads), "a hammering thread hung"
    assert not errors, errors


def test_forks_while_threads_hammer_a_resilience_never_deadlock(switch_often: None) -> None:
    """25 forks while 4 threads fail, retry, reset, force and reconfigure: every child makes a
    call, reads the breaker's stats and retries at once; none deadlocks.
    """
    res = otelres.Resilience(
        NAME,
        retry=NO_DELAY,
        breaker=BreakerPolicy(consecutive_failures=3, open_seconds=0.001, max_open_seconds=0.001),
        # One retry in flight at a time: a child that inherited one of the threads' could not retry.
        budget=BudgetPolicy(min_retries=1, ratio=0.0),
    )
    answers = []
    with hammering(res) as progress:
        for _ in range(FORKS):
            for _ in range(20):  # let the threads move on between forks
                assert progress.acquire(timeout=WAIT), "the hammering threads made no progress"
            answers.append(fork_and_run(lambda: call_stats_and_retry(res)))
    assert answers.count(DEADLOCK) == 0, answers
    assert answers == ["ok"] * FORKS, answers


@pytest.mark.parametrize("during", ["first attempt", "retry"])
def test_the_forking_threads_own_call_ends_cleanly_in_the_child(during: str) -> None:
    """The forking thread is inside a call (and a retry) at the fork: in the child that call ends
    (popping the budget's emptied counts), the counts start from zero and the next call retries.
    """
    res = otelres.Resilience(NAME, retry=NO_DELAY, budget=BudgetPolicy(min_retries=1, ratio=0.0))
    forked: dict[str, Child | None] = {}
    calls: list[int] = []

    def attempt() -> str:
        calls.append(1)
        if during == "retry" and len(calls) == 1:
            raise ConnectionError("refused")
        assert (res.budget.calls_in_flight, res.budget.retries_in_flight) == (1, len(calls) - 1)
        forked["child"] = Child.fork()
        return "ok"

    assert res.call(attempt) == "ok"
    child = forked["child"]
    if child is None:  # pragma: no cover - the child, its inherited call ended

        def after() -> str:
            counts = (res.budget.calls_in_flight, res.budget.retries_in_flight)
            again, again_calls = fails_once()
            return f"{counts} {res.call(again)} {len(again_calls)}"

        Child.finish(after)
    assert child.answer() == "(0, 0) ok 2"
    assert (res.budget.calls_in_flight, res.budget.retries_in_flight) == (0, 0)


def test_calls_in_flight_when_the_budget_is_emptied_end_without_error() -> None:
    """What a fork does to the budget, done in this process: calls and a retry in flight when the
    counts are emptied (the fast path, the retry path, async) end cleanly and leave zero.
    """
    res = otelres.Resilience(NAME, retry=NO_DELAY)
    budget = res.budget

    def empties() -> str:
        budget._after_fork_in_child()
        return "ok"

    assert res.call(empties) == "ok"  # the fast path's pop
    calls: list[int] = []

    def retried() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("refused")
        return empties()

    assert res.call(retried) == "ok"  # the flow's pops: the call's and the retry's
    assert len(calls) == 2

    async def empties_async() -> str:
        return empties()

    assert asyncio.run(res.acall(empties_async)) == "ok"
    budget.call_ended()
    budget.retry_ended()
    assert (budget.calls_in_flight, budget.retries_in_flight) == (0, 0)


def test_a_child_of_a_full_retry_budget_retries() -> None:
    """Threads hold every retry the budget allows at the fork: the child's budget is empty, so
    its first failure is retried (the parent's next one is still suppressed).
    """
    res = otelres.Resilience(NAME, retry=NO_DELAY, budget=BudgetPolicy(min_retries=2, ratio=0.0))
    holding = threading.Barrier(3)
    release = threading.Event()

    def held_in_retry() -> str:
        calls: list[int] = []

        def attempt() -> str:
            calls.append(1)
            if len(calls) == 1:
                raise ConnectionError("refused")
            holding.wait(WAIT)  # the retry is in flight: hold it
            assert release.wait(WAIT)
            return "ok"

        return res.call(attempt)

    threads = [threading.Thread(target=held_in_retry, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        holding.wait(WAIT)
        assert res.budget.retries_in_flight == 2
        assert not res.budget.try_retry()  # full: the parent's next retry is suppressed

        def child() -> str:
            counts = (res.budget.calls_in_flight, res.budget.retries_in_flight)
            attempt, calls = fails_once()
            return f"{counts} {res.call(attempt)} {len(calls)}"

        answer = fork_and_run(child)
    finally:
        release.set()
        for thread in threads:
            thread.join(WAIT)
    assert answer == "(0, 0) ok 2", answer
    assert (res.budget.calls_in_flight, res.budget.retries_in_flight) == (0, 0)


def test_a_half_open_probe_in_flight_at_the_fork_leaves_the_child_a_probe(clock: FakeClock) -> None:
    """Another thread holds the half-open breaker's one probe at the fork: the parent rejects, the
    child admits a probe of its own, which closes its circuit.
    """
    breaker = otelres.CircuitBreaker(
        NAME, BreakerPolicy(consecutive_failures=1, open_seconds=1.0, half_open_calls=1), clock=clock
    )
    breaker.on_failure(breaker.acquire(), clock.monotonic())
    clock.advance(1.0)
    probing = threading.Event()
    release = threading.Event()

    def probe() -> str:
        probing.set()
        assert release.wait(WAIT)
        return "ok"

    thread = threading.Thread(target=breaker.call, args=(probe,), daemon=True)
    thread.start()
    try:
        assert probing.wait(WAIT)
        assert breaker.state is State.HALF_OPEN
        with pytest.raises(CircuitOpenError):
            breaker.call(lambda: "second probe")

        def child() -> str:
            result = breaker.call(lambda: "probe")
            return f"{result} {breaker.state.value}"

        answer = fork_and_run(child)
    finally:
        release.set()
        thread.join(WAIT)
    assert answer == "probe closed", answer
    assert breaker.state is State.CLOSED  # the parent's own probe closed it


def every_lock() -> list[tuple[str, object, str]]:
    """(what, owner, attribute) of every lock otelres keeps outside the breaker, one owner each."""
    return [
        ("_events", _events, "_lock"),
        ("_events.failures", _events.failures, "_lock"),
        ("_registry", _registry, "_default_lock"),
        ("Registry", Registry(), "_lock"),
        ("_config", _config, "_lock"),
        ("_config warned", _config, "_warned_lock"),
        ("_instrument", _instrument, "_lock"),
        ("Fallback", Fallback.stale(), "_lock"),
        ("telemetry._calls", _calls, "_instruments_lock"),
        ("telemetry._Instruments", _calls._Instruments(NoOpMeterProvider()), "lock"),
        ("telemetry.LogEvents", LogEvents(), "_lock"),
        ("telemetry._activation", _activation, "_lock"),
        (
            "RequestRules",
            RequestRules(
                readiness=None,
                live_path="/livez",
                ready_path="/readyz",
                deadline=None,
                deadline_header=None,
                max_deadline=60.0,
            ),
            "_lock",
        ),
        ("Readiness", Readiness(), "_lock"),
        ("_frameworks", _frameworks._state, "lock"),
        ("_rejections", _rejections, "_lock"),
        ("Subclasses", Subclasses(object), "_lock"),
        ("FakeClock", FakeClock(), "_lock"),
        ("CapturedEvents", CapturedEvents(), "_lock"),
        ("AdaptiveThrottle", otelres.AdaptiveThrottle(), "_lock"),
        ("_limit", _limit, "_shed_lock"),
    ]


def test_every_lock_held_by_another_thread_at_the_fork_is_free_in_the_child() -> None:
    """A thread holds every otelres lock at the fork: in the child each is free at once."""
    locks = every_lock()
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with contextlib.ExitStack() as stack:
            for _, owner, attribute in locks:
                stack.enter_context(getattr(owner, attribute))
            held.set()
            release.wait(WAIT)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    try:
        assert held.wait(WAIT)

        def child() -> str:
            stuck = [
                what for what, owner, attribute in locks if not getattr(owner, attribute).acquire(timeout=1)
            ]
            return f"stuck: {stuck}" if stuck else "all free"

        answer = fork_and_run(child)
    finally:
        release.set()
        thread.join(WAIT)
    assert answer == "all free", answer


_LOCK = re.compile(r"^\s*(?:self\.)?(\w+)(?:: [^=\n]+)? = threading\.R?Lock\(\)", re.MULTILINE)
#: Modules with fork hooks of their own (at_fork): the breaker holds its locks across the fork,
#: the fleet's background task is restarted by its hook. The demo never forks.
_OWN_HOOKS = ("_breaker.py", "_fleet.py", "_fleet_store.py")


def test_every_lock_in_otelres_is_renewed_in_a_forked_child() -> None:
    """Each ``threading.Lock()``/``RLock()`` assigned in otelres is named in a ``_fork.renew`` call
    of its module (but for modules with fork hooks of their own, and the demo), and the test
    above holds it.
    """
    package = Path(otelres.__file__).parent
    missing = []
    found = set()
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package).as_posix()
        if relative.startswith("demo/") or relative in _OWN_HOOKS:
            continue
        source = path.read_text(encoding="utf-8")
        for attribute in _LOCK.findall(source):
            found.add(attribute)
            if not re.search(r'_fork\.renew\([^)]*"' + attribute + '"', source):
                missing.append(f"{relative}: {attribute}")
    assert not missing, f"locks no fork hook renews: {missing}"
    assert found <= {attribute for _, _, attribute in every_lock()}


def test_readiness_checks_restart_in_the_child() -> None:
    """A check run and an evaluation are in flight in the parent's threads at the fork: in the
    child (whose threads they were not) the next evaluation runs the check afresh.
    """
    parent = os.getpid()
    started = threading.Event()
    release = threading.Event()

    def check() -> None:
        if os.getpid() == parent:
            started.set()
            release.wait(WAIT)

    readiness = Readiness(timeout=5.0, cache_seconds=0.0, include_breakers=False)
    readiness.add("upstream", check)
    evaluating = threading.Thread(target=readiness.evaluate_sync, daemon=True)
    evaluating.start()
    try:
        assert started.wait(WAIT)
        assert readiness.running == ("upstream",)

        def child() -> str:
            report = readiness.evaluate_sync()
            return f"{report.status} {readiness.running}"

        answer = fork_and_run(child)
    finally:
        release.set()
        evaluating.join(WAIT)
    assert answer == "ok ()", answer


def test_call_counts_start_at_zero_in_the_child() -> None:
    """The calls a parent counted are its own: a child's ``otelres.calls`` counts only its calls."""
    from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: PLC0415

    from otelres.telemetry import names  # noqa: PLC0415

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    otelres.telemetry.enable(meter_provider=provider)
    try:
        res = otelres.Resilience(NAME, retry=NO_DELAY)
        for _ in range(5):
            res.call(lambda: "ok")

        def calls_counted() -> int:
            data = reader.get_metrics_data()
            assert data is not None
            return sum(
                int(point.value)
                for resource in data.resource_metrics
                for scope in resource.scope_metrics
                for metric in scope.metrics
                if metric.name == names.CALLS
                for point in metric.data.data_points
            )

        assert calls_counted() == 5

        def child() -> str:
            res.call(lambda: "ok")
            return str(calls_counted())

        answer = fork_and_run(child)
    finally:
        otelres.telemetry.disable()
        provider.shutdown()
    assert answer == "1", answer
