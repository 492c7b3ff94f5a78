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
8. telemetry                  otelres Resilience with telemetry off, on without SDK providers, on with
                              SDK providers (spans, metrics, both), beside the SDK's own span, counter
                              and histogram calls

Paths 1-5 and 8 report the median ns per call over interleaved rounds: every round
runs every contender once, in a shuffled order. A missing peer prints "not
installed". Nothing here is a test: path 7 sleeps for real, on purpose. Path 8
switches otelres telemetry on around its own contenders' runs only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import logging
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
import structlog
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

import otelres
import otelres.telemetry
import otelres.testing
from otelres import _events
from otelres._sdk import has_meter_provider, has_tracer_provider
from otelres.telemetry import names as telemetry_names

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator, Sequence

    from opentelemetry.sdk.trace import ReadableSpan

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
    if not res.guard.enabled:
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


# -- telemetry -----------------------------------------------------------------------------------

#: The BatchSpanProcessor's queue: larger than all the spans of any one run (~20 ms of calls,
#: a few thousand spans), and the processor is flushed after every run, so that no span is
#: ever dropped for a full queue, which would make on_end cheaper and leave the export
#: thread less to do. The SDK's default, 2,048, leaves little margin: the export thread
#: runs only when the loop lets go of the GIL (every 5 ms), and ~1,150 spans queue up in
#: between on a 2-core VM. Checked after the path: every span ended was exported.
SPAN_QUEUE = 1 << 16
SDK_SPAN = "SDK span start+end (BatchSpanProcessor)"
TELEMETRY_OFF = "otelres Resilience, telemetry off"
TELEMETRY_NO_SDK = "otelres Resilience, telemetry on, no SDK"
TELEMETRY_FULL = "otelres Resilience, full telemetry"
TELEMETRY_TROUBLE = "otelres Resilience, full telemetry, in trouble (a call span)"
#: Two attributes, built once, as otelres builds its own attribute sets.
SDK_ATTRIBUTES = {telemetry_names.ATTR_BREAKER: "bench.sdk", telemetry_names.ATTR_OUTCOME: "success"}


class SpanSink(SpanExporter):
    """An exporter that drops the spans it is given, counting them."""

    def __init__(self) -> None:
        self.exported = 0
        self.names: set[str] = set()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.exported += len(spans)
        if len(self.names) < 4:
            self.names.update(span.name for span in spans)
        return SpanExportResult.SUCCESS


@dataclasses.dataclass
class SdkTracing:
    """An SDK TracerProvider with a BatchSpanProcessor over a :class:`SpanSink`."""

    label: str
    provider: TracerProvider
    sink: SpanSink
    #: Spans the contender's calls ended (its set-up check included).
    ended: int = 0

    @classmethod
    def new(cls, label: str) -> SdkTracing:
        sink = SpanSink()
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(sink, max_queue_size=SPAN_QUEUE))
        return cls(label, provider, sink)

    def flush(self) -> None:
        self.provider.force_flush()

    def problem(self) -> str | None:
        self.flush()
        if self.sink.exported != self.ended:
            return f"{self.label}: {self.ended:,} spans ended, {self.sink.exported:,} exported"
        return None


@dataclasses.dataclass
class SdkMetrics:
    """An SDK MeterProvider with an InMemoryMetricReader (collected only by the checks)."""

    label: str
    provider: MeterProvider
    reader: InMemoryMetricReader
    #: Measurements the contender's calls made, per instrument name.
    made: dict[str, int] = dataclasses.field(default_factory=dict)

    @classmethod
    def new(cls, label: str) -> SdkMetrics:
        reader = InMemoryMetricReader()
        return cls(label, MeterProvider(metric_readers=[reader]), reader)

    def recorded(self) -> dict[str, int]:
        """Per instrument: a counter's sum, a histogram's count (cumulative)."""
        found: dict[str, int] = {}
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics if data is not None else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    for point in metric.data.data_points:
                        if isinstance(point, HistogramDataPoint):
                            found[metric.name] = found.get(metric.name, 0) + point.count
                        elif isinstance(point, NumberDataPoint):
                            found[metric.name] = found.get(metric.name, 0) + int(point.value)
        return found

    def problem(self) -> str | None:
        recorded = self.recorded()
        wrong = [
            f"{name}: {made:,} made, {recorded.get(name, 0):,} recorded"
            for name, made in self.made.items()
            if recorded.get(name, 0) != made
        ]
        return f"{self.label}: {'; '.join(wrong)}" if wrong else None


class CountingHandler(logging.Handler):
    """Counts (and keeps the first few of) the records it is given, printing none."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.first: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if len(self.first) < 3:
            self.first.append(f"{record.name}: {record.getMessage()}")


class FullFlowOnly(_events.Listener):
    """A per-call listener that does nothing: every call takes the full flow, and no more."""

    per_call = True


@contextlib.contextmanager
def quiet_telemetry() -> Iterator[tuple[list[str], CountingHandler]]:
    """For the block: structlog drops every event (counting them: a success logs none),
    the ``otelres`` and ``opentelemetry`` loggers' warnings are counted instead of
    printed, and telemetry is off at the end whatever happened. structlog's
    configuration is restored afterwards.
    """
    saved = structlog.get_config()
    was_configured = structlog.is_configured()
    events: list[str] = []

    def drop(logger: Any, method: str, event: Any) -> Any:
        events.append(str(event.get("event")))
        raise structlog.DropEvent

    structlog.configure(
        processors=[drop], logger_factory=structlog.ReturnLoggerFactory(), cache_logger_on_first_use=False
    )
    handler = CountingHandler()
    loggers = [logging.getLogger("otelres"), logging.getLogger("opentelemetry")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield events, handler
    finally:
        otelres.telemetry.disable()
        for logger in loggers:
            logger.removeHandler(handler)
        if was_configured:
            structlog.configure(**saved)
        else:
            structlog.reset_defaults()


def telemetry_off() -> None:
    if _events.listeners:
        raise AssertionError(f"otelres listeners are registered: {_events.listeners!r}")


def switch_on(want: dict[str, bool], **providers: Any) -> Callable[[], None]:
    """``otelres.telemetry.enable(**providers)``, checking that it reports what ``want`` says."""

    def on() -> None:
        telemetry_off()
        otelres.telemetry.enable(**providers)
        active = otelres.telemetry.active()
        if active != want:
            otelres.telemetry.disable()
            raise AssertionError(f"telemetry.active() is {active}, expected {want}")

    return on


class TelemetryPath:
    """The telemetry path's contenders, their SDK providers and the checks of what they made."""

    def __init__(self) -> None:
        self.tracings: list[SdkTracing] = []
        self.meterings: list[SdkMetrics] = []
        #: The in_trouble() blocks of the in-trouble rows, left at close().
        self.troubles = contextlib.ExitStack()

    def tracing(self, label: str) -> SdkTracing:
        made = SdkTracing.new(label)
        self.tracings.append(made)
        return made

    def metering(self, label: str) -> SdkMetrics:
        made = SdkMetrics.new(label)
        self.meterings.append(made)
        return made

    def contenders(self) -> list[Contender]:
        return [
            build("bare call (no wrapper)", h.BASELINE, True, lambda: loop0(target)),
            build(SDK_SPAN, h.REFERENCE, True, self.sdk_span),
            build("SDK counter.add (2 attributes)", h.REFERENCE, True, self.sdk_counter),
            build("SDK histogram.record (2 attributes)", h.REFERENCE, True, self.sdk_histogram),
            build(TELEMETRY_OFF, h.OTELRES, True, self.off),
            build(TELEMETRY_NO_SDK, h.OTELRES, True, self.no_sdk),
            build(
                TELEMETRY_FULL, h.OTELRES, True, functools.partial(self.with_sdk, traces=True, metrics=True)
            ),
            build(
                TELEMETRY_TROUBLE,
                h.OTELRES,
                True,
                functools.partial(self.with_sdk, traces=True, metrics=True, trouble=True),
            ),
            build(
                "otelres Resilience, tracing only",
                h.OTELRES,
                True,
                functools.partial(self.with_sdk, traces=True, metrics=False),
            ),
            build(
                "otelres Resilience, metrics only",
                h.OTELRES,
                True,
                functools.partial(self.with_sdk, traces=False, metrics=True),
            ),
            build("otelres Resilience, no-op per-call listener", h.OTELRES, True, self.full_flow),
        ]

    # -- the SDK alone --------------------------------------------------------------------------

    def sdk_span(self) -> Contender:
        tracing = self.tracing("SDK span")
        tracer = tracing.provider.get_tracer("bench")

        def span() -> None:
            tracer.start_span("x").end()

        def run(n: int) -> None:
            loop0(span)(n)
            tracing.ended += n

        run(1)
        expect((tracing.problem(), tracing.sink.names), (None, {"x"}), "SDK span (problem, names)")
        return Contender("", "", run, after_round=tracing.flush)

    def sdk_counter(self) -> Callable[[int], None]:
        metering = self.metering("SDK counter")
        counter = metering.provider.get_meter("bench").create_counter("bench.counter")
        metering.made["bench.counter"] = 0

        def add() -> None:
            counter.add(1, SDK_ATTRIBUTES)

        def run(n: int) -> None:
            loop0(add)(n)
            metering.made["bench.counter"] += n

        run(1)
        expect(metering.problem(), None, "SDK counter")
        return run

    def sdk_histogram(self) -> Callable[[int], None]:
        metering = self.metering("SDK histogram")
        histogram = metering.provider.get_meter("bench").create_histogram("bench.histogram", unit="s")
        metering.made["bench.histogram"] = 0

        def record() -> None:
            histogram.record(0.001, SDK_ATTRIBUTES)

        def run(n: int) -> None:
            loop0(record)(n)
            metering.made["bench.histogram"] += n

        run(1)
        expect(metering.problem(), None, "SDK histogram")
        return run

    # -- otelres -----------------------------------------------------------------------------------

    def off(self) -> Contender:
        fn = otelres_resilience("bench.telemetry.off")(target)
        telemetry_off()
        expect(fn(), 1, "otelres Resilience")
        return Contender("", "", loop0(fn), before_round=telemetry_off)

    def no_sdk(self) -> Contender:
        if has_tracer_provider() or has_meter_provider():
            raise RuntimeError("an SDK provider is installed globally: this row needs the API's defaults")
        fn = otelres_resilience("bench.telemetry.no_sdk")(target)
        on = switch_on({"logs": True, "traces": False, "metrics": False})
        on()
        try:
            expect((fn(), bool(_events.call_listeners)), (1, False), "otelres (result, per-call listener)")
        finally:
            otelres.telemetry.disable()
        return Contender("", "", loop0(fn), before_round=on, after_round=otelres.telemetry.disable)

    def with_sdk(self, *, traces: bool, metrics: bool, trouble: bool = False) -> Contender:
        """A plain success: no call span (1 span per call is OpenTelemetry's CLIENT span, which this
        path has none of), the call counted and its duration recorded. ``trouble``: the dependency
        in trouble (``CircuitBreaker.troubled()``), so every call has its call span up front.
        """
        label = {(True, True): "full", (True, False): "tracing", (False, True): "metrics"}[traces, metrics]
        if trouble:
            label += "_trouble"
        name = f"bench.telemetry.{label}"
        res = otelres_resilience(name)
        if trouble:
            self.troubles.enter_context(otelres.testing.in_trouble(res.breaker))
        fn = res(target)
        spans_per_call = 1 if trouble and traces else 0
        tracing = self.tracing(f"otelres {label}") if traces else None
        metering = self.metering(f"otelres {label}") if metrics else None
        providers: dict[str, Any] = {}
        if tracing is not None:
            providers["tracer_provider"] = tracing.provider
        if metering is not None:
            providers["meter_provider"] = metering.provider
            metering.made[telemetry_names.CALL_DURATION] = 0
        on = switch_on({"logs": True, "traces": traces, "metrics": metrics}, **providers)

        def run(n: int) -> None:
            loop0(fn)(n)
            if tracing is not None:
                tracing.ended += n * spans_per_call
            if metering is not None:
                metering.made[telemetry_names.CALL_DURATION] += n

        def off() -> None:
            otelres.telemetry.disable()
            if tracing is not None:
                tracing.flush()

        on()
        try:
            run(1)
        finally:
            off()
        if tracing is not None:
            spans = {f"otelres {name}"} if spans_per_call else set()
            expect((tracing.problem(), tracing.sink.names), (None, spans), "otelres spans")
        if metering is not None:
            expect(metering.problem(), None, "otelres metrics")
        return Contender("", "", run, before_round=on, after_round=off)

    def full_flow(self) -> Contender:
        fn = otelres_resilience("bench.telemetry.full_flow")(target)
        listener = FullFlowOnly()

        def on() -> None:
            telemetry_off()
            _events.add_listener(listener)

        def off() -> None:
            _events.remove_listener(listener)

        on()
        try:
            expect(fn(), 1, "otelres Resilience")
        finally:
            off()
        return Contender("", "", loop0(fn), before_round=on, after_round=off)

    # -- after the measurement ---------------------------------------------------------------------

    def problems(self) -> list[str]:
        found = [p.problem() for p in self.tracings] + [m.problem() for m in self.meterings]
        return [p for p in found if p is not None]

    def summary(self) -> str:
        spans = sum(t.ended for t in self.tracings)
        exported = sum(t.sink.exported for t in self.tracings)
        return (
            f"BatchSpanProcessor: max_queue_size {SPAN_QUEUE:,} (the SDK's default: 2,048), the other "
            "settings the defaults (batches of 512, 5 s delay), force_flush() after every run, outside the "
            "timing; "
            f"spans ended / exported: {spans:,} / {exported:,}"
        )

    def close(self) -> None:
        self.troubles.close()
        for tracing in self.tracings:
            tracing.provider.shutdown()
        for metering in self.meterings:
            metering.provider.shutdown()


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


def telemetry_table(contenders: list[Contender]) -> str:
    baseline = next((c for c in contenders if c.kind == h.BASELINE and c.samples), None)
    off = next((c for c in contenders if c.name == TELEMETRY_OFF and c.samples), None)
    span = next((c for c in contenders if c.name == SDK_SPAN and c.samples), None)
    header = [
        "contender",
        "median ns/call",
        "IQR",
        "min ns",
        "overhead ns",
        "ns over telemetry off",
        "x SDK span",
    ]
    rows = []
    for c in contenders:
        if not c.samples:
            rows.append([c.name, c.note or "no samples", *[""] * (len(header) - 2)])
            continue
        row = [c.name, h.fmt_ns(c.median), f"{h.spread(c.samples):.0%}", h.fmt_ns(c.best)]
        is_base = c.kind == h.BASELINE
        row.append("-" if is_base or baseline is None else h.fmt_ns(c.median - baseline.median))
        row.append(
            h.fmt_ns(c.median - off.median)
            if c.kind == h.OTELRES and off is not None and c is not off
            else "-"
        )
        row.append("-" if is_base or span is None else h.fmt_ratio(c.median / span.median))
        rows.append(row)
    return h.table(header, rows)


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


def run_telemetry(report: Report, args: argparse.Namespace) -> None:
    section(
        "telemetry",
        "A successful call through otelres Resilience (as in the sync path) with telemetry off, on without "
        "SDK providers (the API's defaults installed globally), and on with SDK providers given to "
        "otelres.telemetry.enable(): a TracerProvider with a BatchSpanProcessor over an exporter that drops "
        "the spans, a MeterProvider with an InMemoryMetricReader; beside them, one call of the SDK alone. "
        "Each otelres row switches telemetry on before each of its runs and off after it, outside the "
        "timing; the no-op per-call listener row is the full decision flow without any telemetry.",
    )
    path = TelemetryPath()
    try:
        with quiet_telemetry() as (events, warned):
            contenders = path.contenders()
            h.measure(contenders, args.rounds, args.target, args.seed)
            problems = path.problems()
        report.tables["telemetry"] = contenders
        print(telemetry_table(contenders), flush=True)
        print(
            f"\n{path.summary()}; structlog events: {len(events):,} (a success logs none); "
            f"warnings logged: {warned.count}.\n\n"
            "otelres's span does more than the SDK span row's: kind INTERNAL and one attribute at the start, "
            "current (context attach/detach) during the call, two attributes at the end. With metrics on "
            "too, the duration is recorded while that span is current, so the SDK's default exemplar "
            "filter (trace_based) also offers it to the histogram's exemplar reservoir.",
            flush=True,
        )
        for problem in problems:
            print(f"\nWARNING: {problem}")
        if events:
            print(f"\nWARNING: successful calls logged structlog events: {sorted(set(events))}")
        if warned.count:
            print(f"\nWARNING: warnings were logged during the path, the first: {warned.first}")
    finally:
        path.close()


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
    on, off = report.ns("telemetry", TELEMETRY_NO_SDK), report.ns("telemetry", TELEMETRY_OFF)
    label = "telemetry on, no SDK: added ns over baseline"
    if on is None or off is None:
        rows.append([label, "n/a", "", "", "<= 200 ns", ""])
    else:
        added = on[0] - off[0]
        rows.append(
            [label, f"{added:,.0f} ns", "", f"{on[2] - off[2]:,.0f} ns", "<= 200 ns", _met(added <= 200)]
        )
    ns_goal("full telemetry / SDK span start+end", "telemetry", TELEMETRY_FULL, SDK_SPAN, 2.0)
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
        "--only",
        default="",
        help="comma-separated paths: sync,async,retry,reject,retry1,threads,sleep,telemetry",
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
    print(
        "- otelres: no listeners (telemetry off), except in the telemetry path, which switches telemetry on "
        "around its own contenders' runs; stamina: retry hooks set to () (no logging/metrics)"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.simplefilter("ignore", DeprecationWarning)  # aiobreaker uses datetime.utcnow()
    if _events.listeners:
        print(
            f"otelres listeners are registered ({_events.listeners!r}); telemetry must be off",
            file=sys.stderr,
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
    if wanted("telemetry"):
        run_telemetry(report, args)
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
