"""otelres against its peers, side by side, in one run: ``python benchmarks/peers.py [--quick]``.

Paths (see benchmarks/README.md for what each measures and the fairness notes):

1. breaker success, sync      otelres Resilience and CircuitBreaker.call, circuitbreaker, pybreaker, purgatory
2. breaker success, async     otelres Resilience (async decorator) and CircuitBreaker.acall, circuitbreaker,
                              aiobreaker, purgatory
3. retry wrapper success      otelres Resilience, backoff, stamina, tenacity
4. rejection, circuit open    otelres Resilience and CircuitBreaker.call, circuitbreaker, pybreaker, purgatory
5. one retry, sleep stubbed   otelres Resilience, backoff, tenacity, stamina
6. 8 threads on one breaker   throughput of 8 threads over 1 thread
7. 8 threads x 10 ms call     wall time: does the breaker hold a lock during the call?

Paths 1-5 report the median ns per call over interleaved rounds: every round
runs every contender once, in a shuffled order. A missing peer prints "not
installed". Nothing here is a test: path 7 sleeps for real, on purpose.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import platform
import random
import statistics
import sys
import time
import warnings
from itertools import repeat
from typing import TYPE_CHECKING, Any, TypeVar

import _harness as h

import otelres
import otelres.testing
from otelres import _hooks

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

backoff = h.optional_import("backoff")
circuitbreaker = h.optional_import("circuitbreaker")
pybreaker = h.optional_import("pybreaker")
aiobreaker = h.optional_import("aiobreaker")
purgatory = h.optional_import("purgatory")
stamina = h.optional_import("stamina")
tenacity = h.optional_import("tenacity")

PEER_DISTS = ("circuitbreaker", "pybreaker", "aiobreaker", "purgatory", "backoff", "stamina", "tenacity")

#: Long enough that no tripped breaker half-opens during the run.
OPEN_FOR = 3600

Contender = h.Contender
_T = TypeVar("_T")


# -- the protected functions ----------------------------------------------------------------


def target() -> int:
    return 1


async def atarget() -> int:
    return 1


class Refused(Exception):
    """What the bare 'rejection' baseline raises."""


def refuse() -> int:
    raise Refused


def fail() -> int:
    raise ConnectionError("down")


class Flaky:
    """Fails every odd call, succeeds every even one: each logical call through a
    retry wrapper is exactly one failed attempt and one successful one.
    """

    __slots__ = ("calls",)

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> int:
        self.calls += 1
        if self.calls & 1:
            raise ConnectionError("flaky")
        return 1


def nap() -> None:
    time.sleep(0.01)


# -- run(n) loops: the loop is the same for every contender of a path ----------------------------


def loop0(fn: Callable[[], Any]) -> Callable[[int], None]:
    def run(n: int) -> None:
        for _ in repeat(None, n):
            fn()

    return run


def loop1(fn: Callable[[Any], Any], arg: Any) -> Callable[[int], None]:
    def run(n: int) -> None:
        for _ in repeat(None, n):
            fn(arg)

    return run


def rejecting(fn: Callable[[], Any], error: type[BaseException]) -> Callable[[int], None]:
    def run(n: int) -> None:
        caught = 0
        for _ in repeat(None, n):
            try:
                fn()
            except error:
                caught += 1
        if caught != n:
            raise AssertionError(f"{n - caught} of {n} calls were not rejected")

    return run


def aloop(loop: asyncio.AbstractEventLoop, afn: Callable[[], Awaitable[Any]]) -> Callable[[int], None]:
    """N awaits inside one coroutine, on one event loop shared by the path's contenders."""

    async def body(n: int) -> None:
        for _ in repeat(None, n):
            await afn()

    def run(n: int) -> None:
        loop.run_until_complete(body(n))

    return run


def set_up(needs: object, setup: Callable[[], _T]) -> tuple[_T | None, str]:
    """``(setup(), "")``, or ``(None, why not)`` when the peer is missing or its set-up fails."""
    if needs is None:
        return None, "not installed"
    try:
        return setup(), ""
    except Exception as exc:
        return None, f"setup failed: {exc!r}"


def build(
    name: str, kind: str, needs: object, setup: Callable[[], Contender | Callable[[int], Any]]
) -> Contender:
    """A contender from ``setup()``, or a row that says why there is none."""
    made, note = set_up(needs, setup)
    if isinstance(made, Contender):
        made.name, made.kind = name, kind
        return made
    return Contender(name, kind, made, note)


def expect(value: object, wanted: object, what: str) -> None:
    if value != wanted:
        raise AssertionError(f"{what}: {value!r}, expected {wanted!r}")


# -- otelres set-ups ---------------------------------------------------------------------------------


def otelres_resilience(name: str, **breaker: Any) -> otelres.Resilience:
    """A private Resilience with the default retry policy and budget (3 attempts,
    full jitter from 0.1 s) and a default breaker unless told otherwise.
    """
    res = otelres.Resilience(name, breaker=otelres.BreakerPolicy(**breaker), retry=otelres.RetryPolicy())
    if not res.enabled:
        raise RuntimeError("otelres is disabled by OTELRES_* settings; unset them")
    return res


def tripped(breaker: otelres.CircuitBreaker) -> otelres.CircuitBreaker:
    """Trip ``breaker`` the way production does: with failing calls."""
    for _ in range(1000):
        if breaker.state is otelres.State.OPEN:
            return breaker
        with contextlib.suppress(ConnectionError, otelres.CircuitOpenError):
            breaker.call(fail)
    raise AssertionError(f"{breaker!r} did not trip")


def trip_peer(decorated_fail: Callable[[], Any], tries: int = 50) -> None:
    """Fail through a peer's breaker until it starts rejecting (a peer error that is not ConnectionError)."""
    for _ in range(tries):
        try:
            decorated_fail()
        except ConnectionError:
            continue
        except Exception:
            return
    raise AssertionError("the breaker did not trip")


@contextlib.contextmanager
def stubbed_sleep() -> Iterator[list[float]]:
    """``time.sleep`` as a no-op for the block: backoff and tenacity (so stamina) call it
    through the ``time`` module, and time.sleep(0) is a real system call. Yields the
    list of delays it was asked for (one append per call, the stub's only cost).
    """
    real = time.sleep
    asked: list[float] = []
    no_sleep = asked.append

    time.sleep = no_sleep
    try:
        yield asked
    finally:
        time.sleep = real


# -- paths -------------------------------------------------------------------------------------------


def path_sync_success() -> list[Contender]:
    def otelres_res() -> Callable[[int], None]:
        fn = otelres_resilience("bench.sync.resilience")(target)
        expect(fn(), 1, "otelres Resilience")
        return loop0(fn)

    def otelres_cb() -> Callable[[int], None]:
        cb = otelres.CircuitBreaker("bench.sync.breaker")
        expect(cb.call(target), 1, "otelres CircuitBreaker")
        return loop1(cb.call, target)

    def cbreaker() -> Callable[[int], None]:
        fn = circuitbreaker.CircuitBreaker(name="bench.sync")(target)
        expect(fn(), 1, "circuitbreaker")
        return loop0(fn)

    def pyb() -> Callable[[int], None]:
        fn = pybreaker.CircuitBreaker(name="bench.sync")(target)
        expect(fn(), 1, "pybreaker")
        return loop0(fn)

    def purg() -> Callable[[int], None]:
        factory = purgatory.SyncCircuitBreakerFactory()
        factory.initialize()
        fn = factory("bench.sync")(target)
        expect(fn(), 1, "purgatory")
        return loop0(fn)

    return [
        build("bare call (no wrapper)", h.BASELINE, True, lambda: loop0(target)),
        build("otelres Resilience (breaker+retry+budget)", h.OTELRES, True, otelres_res),
        build("otelres CircuitBreaker.call", h.OTELRES, True, otelres_cb),
        build("circuitbreaker", h.PEER, circuitbreaker, cbreaker),
        build("pybreaker", h.PEER, pybreaker, pyb),
        build("purgatory (sync)", h.PEER, purgatory, purg),
    ]


def path_async_success(loop: asyncio.AbstractEventLoop) -> list[Contender]:
    def otelres_res() -> Callable[[int], None]:
        fn = otelres_resilience("bench.async.resilience")(atarget)
        expect(loop.run_until_complete(fn()), 1, "otelres Resilience async")
        return aloop(loop, fn)

    def otelres_cb() -> Callable[[int], None]:
        cb = otelres.CircuitBreaker("bench.async.breaker")
        fn = functools.partial(cb.acall, atarget)
        expect(loop.run_until_complete(fn()), 1, "otelres CircuitBreaker.acall")
        return aloop(loop, fn)

    def cbreaker() -> Callable[[int], None]:
        fn = circuitbreaker.CircuitBreaker(name="bench.async")(atarget)
        expect(loop.run_until_complete(fn()), 1, "circuitbreaker async")
        return aloop(loop, fn)

    def aiob() -> Callable[[int], None]:
        fn = aiobreaker.CircuitBreaker(name="bench.async")(atarget)
        expect(loop.run_until_complete(fn()), 1, "aiobreaker")
        return aloop(loop, fn)

    def purg() -> Callable[[int], None]:
        factory = purgatory.AsyncCircuitBreakerFactory()
        loop.run_until_complete(factory.initialize())
        fn = factory("bench.async")(atarget)
        expect(loop.run_until_complete(fn()), 1, "purgatory async")
        return aloop(loop, fn)

    return [
        build("bare await (no wrapper)", h.BASELINE, True, lambda: aloop(loop, atarget)),
        build("otelres Resilience (async decorator)", h.OTELRES, True, otelres_res),
        build("otelres CircuitBreaker.acall", h.OTELRES, True, otelres_cb),
        build("circuitbreaker (async)", h.PEER, circuitbreaker, cbreaker),
        build("aiobreaker", h.PEER, aiobreaker, aiob),
        build("purgatory (async)", h.PEER, purgatory, purg),
    ]


def retry_peers(fn: Callable[[], Any]) -> dict[str, Callable[[], Callable[[], Any]]]:
    """Each peer's decorator with a configuration like otelres's default RetryPolicy:
    3 attempts, jittered exponential backoff from 0.1 s capped at 5 s, any Exception.
    """

    def backoff_() -> Callable[[], Any]:
        return backoff.on_exception(
            backoff.expo, Exception, max_tries=3, factor=0.1, max_value=5.0, logger=None
        )(fn)

    def stamina_() -> Callable[[], Any]:
        # Production mode (not set_testing); its retry hooks were set to () in main().
        return stamina.retry(on=Exception, attempts=3, wait_initial=0.1, wait_max=5.0)(fn)

    def tenacity_() -> Callable[[], Any]:
        return tenacity.retry(
            stop=tenacity.stop_after_attempt(3),
            wait=tenacity.wait_random_exponential(multiplier=0.1, max=5.0),
            retry=tenacity.retry_if_exception_type(Exception),
            reraise=True,
        )(fn)

    return {"backoff": backoff_, "stamina": stamina_, "tenacity": tenacity_}


def path_retry_success() -> list[Contender]:
    makers = retry_peers(target)

    def otelres_res() -> Callable[[int], None]:
        fn = otelres_resilience("bench.retry.success")(target)
        expect(fn(), 1, "otelres Resilience")
        return loop0(fn)

    def peer(name: str) -> Callable[[], Callable[[int], None]]:
        def setup() -> Callable[[int], None]:
            fn = makers[name]()
            expect(fn(), 1, name)
            return loop0(fn)

        return setup

    return [
        build("bare call (no wrapper)", h.BASELINE, True, lambda: loop0(target)),
        build("otelres Resilience (breaker+retry+budget)", h.OTELRES, True, otelres_res),
        build("backoff", h.PEER, backoff, peer("backoff")),
        build("stamina", h.PEER, stamina, peer("stamina")),
        build("tenacity", h.PEER, tenacity, peer("tenacity")),
    ]


def path_rejection() -> list[Contender]:
    def otelres_res() -> Callable[[int], None]:
        res = otelres_resilience("bench.reject.resilience", open_seconds=OPEN_FOR, max_open_seconds=OPEN_FOR)
        tripped(res.breaker)
        return rejecting(res(target), otelres.CircuitOpenError)

    def otelres_cb() -> Callable[[int], None]:
        policy = otelres.BreakerPolicy(open_seconds=OPEN_FOR, max_open_seconds=OPEN_FOR)
        cb = tripped(otelres.CircuitBreaker("bench.reject.breaker", policy))
        return rejecting(functools.partial(cb.call, target), otelres.CircuitOpenError)

    def cbreaker() -> Callable[[int], None]:
        cb = circuitbreaker.CircuitBreaker(
            failure_threshold=5, recovery_timeout=OPEN_FOR, name="bench.reject"
        )
        trip_peer(cb(fail))
        return rejecting(cb(target), circuitbreaker.CircuitBreakerError)

    def pyb() -> Callable[[int], None]:
        cb = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=OPEN_FOR, name="bench.reject")
        trip_peer(cb(fail))
        return rejecting(cb(target), pybreaker.CircuitBreakerError)

    def purg() -> Contender:
        from purgatory.domain.model import OpenedState  # noqa: PLC0415 - only when installed

        factory = purgatory.SyncCircuitBreakerFactory(default_threshold=5, default_ttl=OPEN_FOR)
        factory.initialize()
        trip_peer(factory("bench.reject")(fail))
        fn = factory("bench.reject")(target)
        try:
            fn()
        except OpenedState as exc:
            shared = exc
        else:
            raise AssertionError("purgatory did not reject")

        def forget_tracebacks() -> None:
            # purgatory raises one shared exception object, whose traceback grows
            # with every rejection; dropped between runs so the heap (and the GC
            # work every contender shares) stays the same size.
            shared.__traceback__ = None

        return Contender("", "", rejecting(fn, OpenedState), after_round=forget_tracebacks)

    return [
        build("bare raise + catch (no breaker)", h.BASELINE, True, lambda: rejecting(refuse, Refused)),
        build("otelres Resilience (tripped)", h.OTELRES, True, otelres_res),
        build("otelres CircuitBreaker.call (tripped)", h.OTELRES, True, otelres_cb),
        build("circuitbreaker", h.PEER, circuitbreaker, cbreaker),
        build("pybreaker", h.PEER, pybreaker, pyb),
        build("purgatory (sync)", h.PEER, purgatory, purg),
    ]


def path_one_retry() -> tuple[list[Contender], list[Callable[[], str | None]]]:
    """Contenders, and checks to run after the measurement."""
    checks: list[Callable[[], str | None]] = []

    def bare() -> Callable[[int], None]:
        flaky = Flaky()

        def once() -> int:
            try:
                return flaky()
            except ConnectionError:
                return flaky()

        return loop0(once)

    def otelres_res() -> Callable[[int], None]:
        # failure_rate=1.0: half the attempts fail, which would trip the default (50 %) breaker.
        res = otelres_resilience("bench.retry.one", failure_rate=1.0)
        flaky = Flaky()
        fn = res(flaky)
        expect((fn(), flaky.calls), (1, 2), "otelres Resilience (result, attempts)")

        def check() -> str | None:
            if res.breaker.state is not otelres.State.CLOSED:
                return f"the otelres breaker left the closed state: {res.breaker!r}"
            if flaky.calls & 1:
                return "otelres made an odd number of attempts"
            return None

        checks.append(check)
        return loop0(fn)

    def peer(name: str) -> Callable[[], Callable[[int], None]]:
        def setup() -> Callable[[int], None]:
            flaky = Flaky()
            fn = retry_peers(flaky)[name]()
            expect((fn(), flaky.calls), (1, 2), f"{name} (result, attempts)")
            return loop0(fn)

        return setup

    contenders = [
        build("bare fail, catch, call again", h.BASELINE, True, bare),
        build("otelres Resilience (testing_mode)", h.OTELRES, True, otelres_res),
        build("backoff", h.PEER, backoff, peer("backoff")),
        build("tenacity", h.PEER, tenacity, peer("tenacity")),
        build("stamina", h.PEER, stamina, peer("stamina")),
    ]
    return contenders, checks


def thread_callers(fn: Callable[[], Any]) -> list[tuple[str, Callable[[], Any] | None, str]]:
    """(name, zero-argument caller of ``fn`` through one new breaker or None, why none)
    for the thread paths.
    """

    def res_wrap(fn: Callable[[], Any]) -> Callable[[], Any]:
        return otelres_resilience(f"bench.threads.resilience.{fn.__name__}")(fn)

    def cb_wrap(fn: Callable[[], Any]) -> Callable[[], Any]:
        return functools.partial(otelres.CircuitBreaker(f"bench.threads.breaker.{fn.__name__}").call, fn)

    def pyb_wrap(fn: Callable[[], Any]) -> Callable[[], Any]:
        return pybreaker.CircuitBreaker(name=f"bench.threads.{fn.__name__}")(fn)

    def cbreaker_wrap(fn: Callable[[], Any]) -> Callable[[], Any]:
        return circuitbreaker.CircuitBreaker(name=f"bench.threads.{fn.__name__}")(fn)

    wrappers = [
        ("bare call (no wrapper)", True, lambda fn: fn),
        ("otelres Resilience", True, res_wrap),
        ("otelres CircuitBreaker.call", True, cb_wrap),
        ("pybreaker", pybreaker, pyb_wrap),
        ("circuitbreaker (no lock)", circuitbreaker, cbreaker_wrap),
    ]
    return [(name, *set_up(needs, functools.partial(wrap, fn))) for name, needs, wrap in wrappers]


# -- reporting ---------------------------------------------------------------------------------------


def fastest_peer(contenders: list[Contender]) -> Contender | None:
    peers = [c for c in contenders if c.kind == h.PEER and c.samples]
    return min(peers, key=lambda c: c.median) if peers else None


def ns_table(contenders: list[Contender], versus: str | None = None) -> str:
    baseline = next((c for c in contenders if c.kind == h.BASELINE and c.samples), None)
    best = fastest_peer(contenders)
    other = next((c for c in contenders if c.name == versus and c.samples), None) if versus else None
    header = ["contender", "median ns/call", "IQR", "min ns", "overhead ns", "x fastest peer"]
    if versus:
        header.append(f"x {versus}")
    rows = []
    for c in contenders:
        if not c.samples:
            rows.append([c.name, c.note or "no samples", *[""] * (len(header) - 2)])
            continue
        row = [c.name, h.fmt_ns(c.median), f"{h.spread(c.samples):.0%}", h.fmt_ns(c.best)]
        is_base = c.kind == h.BASELINE
        row.append("-" if is_base or baseline is None else h.fmt_ns(c.median - baseline.median))
        row.append("-" if is_base or best is None else h.fmt_ratio(c.median / best.median))
        if versus:
            row.append("-" if is_base or other is None else h.fmt_ratio(c.median / other.median))
        rows.append(row)
    footer = f"\nfastest peer: {best.name}" if best else "\nno peer measured"
    return h.table(header, rows) + footer


class Report:
    """The figures the goal ratios need, gathered as the paths run."""

    def __init__(self) -> None:
        self.tables: dict[str, list[Contender]] = {}
        self.thread_ratio: dict[str, float] = {}
        self.wall_ms: dict[str, float] = {}

    def ns(self, path: str, name: str) -> tuple[float, float, float] | None:
        """(median ns, median ns net of the path's bare call, fastest round's ns) of one contender."""
        rows = self.tables.get(path, [])
        c = next((c for c in rows if c.name == name and c.samples), None)
        base = next((c for c in rows if c.kind == h.BASELINE and c.samples), None)
        if c is None:
            return None
        return c.median, c.median - (base.median if base else 0.0), c.best


def section(title: str, blurb: str) -> None:
    print(f"\n### {title}\n\n{blurb}\n", flush=True)


def run_ns_path(
    report: Report,
    key: str,
    title: str,
    blurb: str,
    contenders: list[Contender],
    args: argparse.Namespace,
    versus: str | None = None,
    notes: str = "",
) -> None:
    section(title, blurb)
    h.measure(contenders, args.rounds, args.target, args.seed)
    report.tables[key] = contenders
    print(ns_table(contenders, versus), flush=True)
    if notes:
        print(f"\n{notes}", flush=True)


def run_threads(report: Report, args: argparse.Namespace) -> None:
    section(
        "8 threads on one breaker",
        "Throughput of 8 threads sharing one breaker over that of 1 thread, each calling a trivial "
        f"function; {args.thread_rounds} interleaved rounds, each run ~{args.thread_target * 1000:.0f} ms "
        "of 1-thread work. With the GIL, 1.00x is the ceiling: threads add no parallelism here, only "
        "contention.",
    )
    rng = random.Random(args.seed)
    rows: list[tuple[str, str, Callable[[], Any] | None, int]] = []
    for name, call, note in thread_callers(target):
        if call is None:
            rows.append((name, note, None, 0))
            continue
        expect(call(), 1, name)
        n = h.calibrate(loop0(call), args.thread_target)
        rows.append((name, "", call, max(8, n - n % 8)))
    ratios: dict[str, list[float]] = {r[0]: [] for r in rows}
    single: dict[str, list[float]] = {r[0]: [] for r in rows}
    multi: dict[str, list[float]] = {r[0]: [] for r in rows}
    for _ in range(args.thread_rounds):
        live = [r for r in rows if r[2] is not None]
        rng.shuffle(live)
        for name, _note, call, n in live:
            assert call is not None
            one = h.threads_run(call, 1, n)
            eight = h.threads_run(call, 8, n // 8)
            single[name].append(n / one)
            multi[name].append(n / eight)
            ratios[name].append(one / eight)
    out = []
    for name, note, call, _n in rows:
        if call is None:
            out.append([name, note, "", "", ""])
            continue
        ratio = statistics.median(ratios[name])
        report.thread_ratio[name] = ratio
        out.append(
            [
                name,
                f"{statistics.median(single[name]):,.0f}",
                f"{statistics.median(multi[name]):,.0f}",
                f"{ratio:.2f}x",
                f"{min(ratios[name]):.2f}-{max(ratios[name]):.2f}",
            ]
        )
    header = ["contender", "1 thread calls/s", "8 threads calls/s", "8 / 1 (median)", "8 / 1 range"]
    print(h.table(header, out), flush=True)


def run_sleepers(report: Report, args: argparse.Namespace) -> None:
    section(
        "8 threads x 10 ms function",
        "Wall time for 8 threads, started together, each making one call of a function that does "
        f"time.sleep(0.01) through one shared breaker; median of {args.sleep_rounds} interleaved rounds. "
        "~10 ms: the breaker holds no lock during the call; ~80 ms: it serialises the calls.",
    )
    rng = random.Random(args.seed)
    callers = thread_callers(nap)
    walls: dict[str, list[float]] = {name: [] for name, call, _ in callers if call is not None}
    for _ in range(args.sleep_rounds):
        live = [c for c in callers if c[1] is not None]
        rng.shuffle(live)
        for name, call, _note in live:
            assert call is not None
            walls[name].append(h.threads_run(call, 8, 1) * 1000)
    rows = []
    for name, call, note in callers:
        if call is None:
            rows.append([name, note, "", ""])
            continue
        wall = statistics.median(walls[name])
        report.wall_ms[name] = wall
        rows.append(
            [name, f"{wall:.1f}", f"{wall / 10:.1f}x", f"{min(walls[name]):.1f}-{max(walls[name]):.1f}"]
        )
    print(h.table(["contender", "wall ms (median)", "x one call", "range ms"], rows), flush=True)


def goal_rows(report: Report) -> list[list[str]]:
    rows: list[list[str]] = []

    def ns_goal(label: str, path: str, ours: str, theirs: str, limit: float) -> None:
        a, b = report.ns(path, ours), report.ns(path, theirs)
        if a is None or b is None:
            missing = theirs if b is None else ours
            rows.append([label, f"n/a ({missing} not measured)", "", "", f"<= {limit}", ""])
            return
        ratio = a[0] / b[0]
        net = f"{a[1] / b[1]:.2f}" if b[1] > 0 else "n/a"
        rows.append([label, f"{ratio:.2f}", net, f"{a[2] / b[2]:.2f}", f"<= {limit}", _met(ratio <= limit)])

    ns_goal(
        "Resilience success, sync / circuitbreaker",
        "sync",
        "otelres Resilience (breaker+retry+budget)",
        "circuitbreaker",
        1.0,
    )
    ns_goal(
        "Resilience success, async / circuitbreaker (async)",
        "async",
        "otelres Resilience (async decorator)",
        "circuitbreaker (async)",
        1.0,
    )
    ns_goal(
        "Resilience rejection / circuitbreaker rejection",
        "reject",
        "otelres Resilience (tripped)",
        "circuitbreaker",
        0.75,
    )
    ns_goal(
        "Resilience one retry / backoff one retry",
        "retry1",
        "otelres Resilience (testing_mode)",
        "backoff",
        1.0,
    )
    ratio = report.thread_ratio.get("otelres Resilience")
    if ratio is None:
        rows.append(["Resilience 8-thread / 1-thread throughput", "n/a", "", "", ">= 0.8", ""])
    else:
        rows.append(
            [
                "Resilience 8-thread / 1-thread throughput",
                f"{ratio:.2f}",
                "",
                "",
                ">= 0.8",
                _met(ratio >= 0.8),
            ]
        )
    wall = report.wall_ms.get("otelres Resilience")
    pyb = report.wall_ms.get("pybreaker")
    pyb_text = "" if pyb is None else f" (pybreaker: {pyb:.1f} ms)"
    if wall is None:
        rows.append(["8 x 10 ms calls, wall time", "n/a", "", "", "~10 ms", ""])
    else:
        rows.append(
            [
                "8 x 10 ms calls, wall time",
                f"{wall:.1f} ms{pyb_text}",
                "",
                "",
                "~10 ms (< 20)",
                _met(wall < 20),
            ]
        )
    return rows


def _met(ok: bool) -> str:
    return "yes" if ok else "**NO**"


# -- main --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a ~20 s smoke run (fewer, shorter rounds)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds per path (default 15; quick 7)")
    parser.add_argument("--target-ms", type=float, help="time per contender per round (default 20; quick 8)")
    parser.add_argument("--seed", type=int, default=20240601, help="seed of the shuffles")
    parser.add_argument(
        "--only", default="", help="comma-separated paths: sync,async,retry,reject,retry1,threads,sleep"
    )
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (7 if args.quick else 15)
    args.target = (args.target_ms or (8.0 if args.quick else 20.0)) / 1000
    args.thread_rounds = 3 if args.quick else 11
    args.thread_target = 0.03 if args.quick else 0.1
    args.sleep_rounds = 3 if args.quick else 9
    args.only = {p.strip() for p in args.only.split(",") if p.strip()}
    return args


def print_header(args: argparse.Namespace) -> None:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print("## otelres vs peers\n")
    print(
        f"- python {platform.python_version()} ({platform.python_implementation()}), {platform.system()} "
        f"{platform.machine()}, {cpus} CPUs usable, switch interval {sys.getswitchinterval() * 1000:g} ms"
    )
    versions = ", ".join(f"{d} {h.version_of(d)}" for d in PEER_DISTS)
    print(f"- otelres {otelres.__version__}; {versions}")
    print(
        f"- {'quick' if args.quick else 'full'} run: {args.rounds} interleaved rounds x "
        f"~{args.target * 1000:g} ms per contender; figures are medians of the rounds; "
        f"IQR is the rounds' interquartile range over the median; seed {args.seed}"
    )
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(f"- load average at start: {load} (other work on the machine shows up as a wide IQR)")
    print("- otelres: no listeners (telemetry off); stamina: retry hooks set to () (no logging/metrics)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.simplefilter("ignore", DeprecationWarning)  # aiobreaker uses datetime.utcnow()
    if _hooks.listeners:
        print(
            f"otelres listeners are registered ({_hooks.listeners!r}); telemetry must be off", file=sys.stderr
        )
        return 2
    if stamina is not None:
        stamina.instrumentation.set_on_retry_hooks(())
    started = time.perf_counter()
    print_header(args)
    report = Report()

    def wanted(key: str) -> bool:
        return not args.only or key in args.only

    if wanted("sync"):
        run_ns_path(
            report,
            "sync",
            "breaker success, sync",
            "A successful call of a trivial function through each breaker (closed).",
            path_sync_success(),
            args,
            versus="circuitbreaker",
            notes="circuitbreaker takes no lock (not thread-safe); pybreaker holds an RLock around the call; "
            "purgatory looks its breaker up on every call.",
        )
    if wanted("async"):
        loop = asyncio.new_event_loop()
        try:
            run_ns_path(
                report,
                "async",
                "breaker success, async",
                "N awaits of a trivial coroutine function through each breaker, inside one coroutine per "
                "run, on one event loop shared by all contenders.",
                path_async_success(loop),
                args,
                versus="circuitbreaker (async)",
            )
        finally:
            loop.close()
    if wanted("retry"):
        run_ns_path(
            report,
            "retry",
            "retry wrapper success",
            "A first attempt that succeeds, through each retry decorator (3 attempts, jittered exponential "
            "backoff from 0.1 s). otelres also runs its breaker and budget; the peers retry only.",
            path_retry_success(),
            args,
        )
    if wanted("reject"):
        run_ns_path(
            report,
            "reject",
            "rejection, circuit open",
            "A call through a breaker tripped by real failures (open for an hour): the library raises "
            "its open-circuit error and the caller catches it.",
            path_rejection(),
            args,
            versus="circuitbreaker",
            notes="purgatory re-raises one shared exception object whose traceback grows with every "
            "rejection (cleared between runs): its figure grows with the run length.",
        )
    if wanted("retry1"):
        contenders, checks = path_one_retry()
        with otelres.testing.testing_mode(), stubbed_sleep() as asked:
            run_ns_path(
                report,
                "retry1",
                "one retry (first attempt fails, second succeeds), sleep stubbed",
                "One logical call = a ConnectionError, then a success. Every contender keeps its production "
                "backoff computation; time.sleep is a no-op for the path and otelres runs in "
                "testing_mode() (no sleep call).",
                contenders,
                args,
            )
        if not asked and any(c.kind == h.PEER and c.samples for c in contenders):
            print("\nWARNING: the time.sleep stub was never called: a peer slept some other way")
        asked.clear()
        for problem in filter(None, (check() for check in checks)):
            print(f"\nWARNING: {problem}")
    if wanted("threads"):
        run_threads(report, args)
    if wanted("sleep"):
        run_sleepers(report, args)

    section(
        "goal ratios",
        "'median' is the ratio of the medians (what 'met' judges); 'net' subtracts the path's bare call "
        "from both sides; 'min' is the ratio of the fastest rounds (least disturbed by other work).",
    )
    print(h.table(["goal", "median", "net", "min", "target", "met"], goal_rows(report)))
    print(f"\ntotal run time: {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
