"""The call span: one INTERNAL span per logical call with something to say (retried, rejected,
fallen back, failed, or made while its dependency is in trouble), parent of the attempts' CLIENT
spans, with the retry, transition and rejection events, its status and its outcome — for call()
and acall(). A plain success makes none."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.trace import SpanKind, StatusCode
from telemetry_support import NAME, NO_JITTER, Script, event_names, events, in_trouble, resilience, run

import otelres
from otelres.telemetry import names
from otelres.testing import FakeClock

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan
    from telemetry_support import Otel

TRIPS_AT_2 = otelres.BreakerPolicy(consecutive_failures=2, open_seconds=5.0)


def assert_child_of(child: ReadableSpan, parent: ReadableSpan) -> None:
    assert child.parent is not None, f"{child.name} has no parent"
    assert child.parent.span_id == parent.context.span_id
    assert child.context.trace_id == parent.context.trace_id


def test_a_plain_success_makes_no_span(otel: Otel, mode: str) -> None:
    """A plain success (one attempt, no event, dependency not in trouble) makes no call span: its
    attempt's CLIENT span is the whole trace; it is counted and its duration recorded."""
    res = resilience()
    dep = Script("ok", tracer=otel.tracer)
    assert run(mode, res, dep) == "ok"
    assert run(mode, res, dep) == "ok"
    assert otel.call_spans() == []
    assert [s.kind for s in otel.spans()] == [SpanKind.CLIENT, SpanKind.CLIENT]
    assert otel.values(names.CALLS, names.ATTR_OUTCOME) == {"success": 2}
    assert otel.values(names.CALL_DURATION, names.ATTR_OUTCOME)["success"][0] == 2


def test_one_internal_span_per_call_in_trouble(otel: Otel, mode: str) -> None:
    """While the dependency is in trouble, a success makes one INTERNAL root span `otelres <breaker>`
    with breaker, outcome, attempts, and no event."""
    res = in_trouble(resilience())
    assert run(mode, res, Script("ok")) == "ok"
    assert run(mode, res, Script("ok")) == "ok"
    spans = otel.call_spans()
    assert len(spans) == 2
    for span in spans:
        assert span.name == f"otelres {NAME}"
        assert span.kind is SpanKind.INTERNAL
        assert span.parent is None
        assert dict(span.attributes or {}) == {
            names.ATTR_BREAKER: NAME,
            names.ATTR_OUTCOME: "success",
            names.ATTR_ATTEMPTS: 1,
        }
        assert span.status.status_code is StatusCode.UNSET
        assert span.events == ()
    assert spans[0].context.trace_id != spans[1].context.trace_id


def test_trouble_ends_after_a_quiet_minute(otel: Otel, mode: str) -> None:
    """A minute after the last failed attempt the dependency is quiet again: no span for a success."""
    clock = FakeClock()
    res = in_trouble(resilience(clock=clock))
    clock.advance(59.0)
    assert res.breaker.troubled()
    clock.advance(1.0)
    assert not res.breaker.troubled()
    assert run(mode, res, Script("ok")) == "ok"
    assert otel.call_spans() == []


def test_the_instrumentation_scope_is_otelres_at_its_version(otel: Otel, mode: str) -> None:
    """Spans and metrics come from the scope `otelres` at otelres.__version__ (one place for the version)."""
    assert run(mode, resilience(), Script(ConnectionError, "ok")) == "ok"
    scope = otel.the_call_span().instrumentation_scope
    assert (scope.name, scope.version) == (names.METER_NAME, otelres.__version__)
    data = otel.reader.get_metrics_data()
    assert data is not None
    scopes = {(sm.scope.name, sm.scope.version) for rm in data.resource_metrics for sm in rm.scope_metrics}
    assert scopes == {(names.METER_NAME, otelres.__version__)}


def test_attempt_spans_are_children_with_retry_events(otel: Otel, mode: str) -> None:
    """In trouble, each attempt's CLIENT span is a child of the call span, which carries one
    otelres.retry per retry."""
    res = in_trouble(resilience())
    dep = Script(ConnectionError, TimeoutError, "ok", tracer=otel.tracer)
    assert run(mode, res, dep) == "ok"
    call = otel.the_call_span()
    clients = [s for s in otel.spans() if s.kind is SpanKind.CLIENT]
    assert len(clients) == 3
    for client in clients:
        assert_child_of(client, call)
    assert events(call, names.EVENT_RETRY) == [
        {names.ATTR_ATTEMPT: 1, names.ATTR_RETRY_DELAY: 0.1, names.ATTR_RETRY_REASON: "connect"},
        {names.ATTR_ATTEMPT: 2, names.ATTR_RETRY_DELAY: 0.2, names.ATTR_RETRY_REASON: "timeout"},
    ]
    # Succeeded after retries: not an error, and no exception recorded on the call span.
    assert call.status.status_code is StatusCode.UNSET
    assert "exception" not in event_names(call)
    assert call.attributes[names.ATTR_OUTCOME] == "success"
    assert call.attributes[names.ATTR_ATTEMPTS] == 3


def test_in_quiet_times_the_first_attempt_is_the_call_spans_sibling(otel: Otel, mode: str) -> None:
    """The first retry after a quiet spell: the first attempt's CLIENT span ended before anyone
    could know the call would be retried, under the caller's span; the call span starts when the
    retry is decided, back-dated to the call's start, under the same parent, and the attempts from
    then on are its children."""
    clock = FakeClock()

    class Slow(Script):
        def _outcome(self) -> Any:
            clock.advance(0.25)  # each attempt takes a quarter of a second (on the breaker's clock)
            return super()._outcome()

    res = resilience(clock=clock)
    dep = Slow(ConnectionError, TimeoutError, "ok", tracer=otel.tracer)
    with otel.tracer.start_as_current_span("handler") as handler:
        assert run(mode, res, dep) == "ok"
    call = otel.the_call_span()
    first, *later = sorted(
        (s for s in otel.spans() if s.kind is SpanKind.CLIENT), key=lambda s: s.start_time or 0
    )
    assert first.parent is not None
    assert call.parent is not None
    assert first.parent.span_id == call.parent.span_id == handler.get_span_context().span_id
    assert len(later) == 2
    for client in later:
        assert_child_of(client, call)
    # Back-dated by the first attempt's 0.25 s: it starts no later than that attempt did.
    assert call.start_time is not None
    assert first.start_time is not None
    assert call.start_time <= first.start_time
    assert call.attributes[names.ATTR_ATTEMPTS] == 3
    assert len(events(call, names.EVENT_RETRY)) == 2


def test_the_call_span_ends_after_its_attempts(otel: Otel, mode: str) -> None:
    """The call span starts before its first attempt's span and ends after its last one."""
    res = in_trouble(resilience())
    assert run(mode, res, Script(ConnectionError, "ok", tracer=otel.tracer)) == "ok"
    call = otel.the_call_span()
    clients = [s for s in otel.spans() if s.kind is SpanKind.CLIENT]
    assert call.start_time is not None
    assert call.end_time is not None
    assert all(call.start_time <= c.start_time and c.end_time <= call.end_time for c in clients)
    assert otel.spans()[-1] is call


@pytest.mark.parametrize(("error", "reason"), [(ConnectionError, "connect"), (TimeoutError, "timeout")])
def test_failed_call_is_error_with_one_exception(otel: Otel, mode: str, error: type, reason: str) -> None:
    """A call that finally fails has status ERROR and its last exception recorded exactly once."""
    res = resilience()
    dep = Script(error, tracer=otel.tracer)
    with pytest.raises(error, match="attempt 3"):
        run(mode, res, dep)
    call = otel.the_call_span()
    assert call.status.status_code is StatusCode.ERROR
    exceptions = events(call, "exception")
    assert len(exceptions) == 1
    assert exceptions[0]["exception.type"] == error.__name__
    assert exceptions[0]["exception.message"] == "attempt 3"
    assert [e[names.ATTR_RETRY_REASON] for e in events(call, names.EVENT_RETRY)] == [reason, reason]
    assert call.attributes[names.ATTR_OUTCOME] == "failure"
    assert call.attributes[names.ATTR_ATTEMPTS] == 3
    # Each attempt's own span has its own exception; none of them counts on the call span.
    clients = [s for s in otel.spans() if s.kind is SpanKind.CLIENT]
    assert [len(events(c, "exception")) for c in clients] == [1, 1, 1]


def test_wrapped_exhaustion_records_the_retry_error_once(otel: Otel, mode: str) -> None:
    """With wrap_exhausted, the RetryError the caller gets is the one exception on the call span."""
    res = resilience(retry=NO_JITTER.evolve(wrap_exhausted=True))
    with pytest.raises(otelres.RetryError):
        run(mode, res, Script(ConnectionError))
    call = otel.the_call_span()
    assert call.status.status_code is StatusCode.ERROR
    (exception,) = events(call, "exception")
    assert exception["exception.type"].endswith("RetryError")


def test_first_attempt_failure_without_retries_is_error(otel: Otel, mode: str) -> None:
    """A single-attempt policy that fails: ERROR, one exception, attempts 1, no retry event."""
    res = resilience(retry=NO_JITTER.evolve(attempts=1))
    with pytest.raises(ConnectionError):
        run(mode, res, Script(ConnectionError))
    call = otel.the_call_span()
    assert call.status.status_code is StatusCode.ERROR
    assert len(events(call, "exception")) == 1
    assert events(call, names.EVENT_RETRY) == []
    assert call.attributes[names.ATTR_ATTEMPTS] == 1


def test_fallback_after_exhaustion_is_unset(otel: Otel, mode: str) -> None:
    """A call that returns its fallback after failing is outcome fallback, status UNSET, no exception."""
    res = resilience(fallback=otelres.Fallback.value("cached"))
    assert run(mode, res, Script(ConnectionError, tracer=otel.tracer)) == "cached"
    call = otel.the_call_span()
    assert call.attributes[names.ATTR_OUTCOME] == "fallback"
    assert call.attributes[names.ATTR_ATTEMPTS] == 3
    assert call.status.status_code is StatusCode.UNSET
    assert "exception" not in event_names(call)
    assert len(events(call, names.EVENT_RETRY)) == 2


def test_transition_event_on_the_call_that_tripped(otel: Otel, mode: str) -> None:
    """The call whose failure opens the circuit carries otelres.circuit.transition closed -> open."""
    res = resilience(breaker=TRIPS_AT_2, retry=NO_JITTER.evolve(attempts=5))
    with pytest.raises(ConnectionError):
        run(mode, res, Script(ConnectionError, tracer=otel.tracer))
    call = otel.the_call_span()
    assert event_names(call) == [names.EVENT_RETRY, names.EVENT_CIRCUIT_TRANSITION, "exception"]
    assert events(call, names.EVENT_CIRCUIT_TRANSITION) == [
        {
            names.ATTR_BREAKER: NAME,
            names.ATTR_FROM_STATE: "closed",
            names.ATTR_TO_STATE: "open",
            names.ATTR_FAILURE_RATE: 1.0,
        }
    ]
    assert call.attributes[names.ATTR_ATTEMPTS] == 2
    assert call.status.status_code is StatusCode.ERROR


def test_rejected_call_has_rejection_event_and_no_child(otel: Otel, mode: str) -> None:
    """A call rejected by an open circuit: event otelres.circuit.rejected, ERROR, no attempt span."""
    res = resilience(breaker=TRIPS_AT_2)
    res.breaker.transition_to("open")
    otel.exporter.clear()
    dep = Script("ok", tracer=otel.tracer)
    with pytest.raises(otelres.CircuitOpenError):
        run(mode, res, dep)
    assert dep.attempts == 0
    (span,) = otel.spans()
    assert span.name == f"otelres {NAME}"
    assert events(span, names.EVENT_CIRCUIT_REJECTED) == [
        {names.ATTR_RETRY_AFTER: 5.0, names.ATTR_REJECTION_REASON: "circuit_open"}
    ]
    assert span.status.status_code is StatusCode.ERROR
    (exception,) = events(span, "exception")
    assert exception["exception.type"].endswith("CircuitOpenError")
    assert span.attributes[names.ATTR_OUTCOME] == "rejected"
    assert span.attributes[names.ATTR_ATTEMPTS] == 0


def test_rejected_call_with_fallback_is_unset(otel: Otel, mode: str) -> None:
    """A rejected call served by its fallback: the rejection event, outcome fallback, status UNSET."""
    res = resilience(breaker=TRIPS_AT_2, fallback=otelres.Fallback.value("cached"))
    res.breaker.transition_to("forced_open")
    otel.exporter.clear()
    assert run(mode, res, Script("ok", tracer=otel.tracer)) == "cached"
    (span,) = otel.spans()
    assert event_names(span) == [names.EVENT_CIRCUIT_REJECTED]
    assert span.attributes[names.ATTR_OUTCOME] == "fallback"
    assert span.status.status_code is StatusCode.UNSET


def test_probe_call_carries_half_open_and_closed_transitions(otel: Otel, mode: str) -> None:
    """After the open period, the probe call's span shows open -> half_open -> closed."""
    clock = FakeClock()
    res = resilience(breaker=TRIPS_AT_2, clock=clock)
    res.breaker.transition_to("open")
    clock.advance(5.0)
    otel.exporter.clear()
    assert run(mode, res, Script("ok", tracer=otel.tracer)) == "ok"
    call = otel.the_call_span()
    assert [
        (e[names.ATTR_FROM_STATE], e[names.ATTR_TO_STATE])
        for e in events(call, names.EVENT_CIRCUIT_TRANSITION)
    ] == [
        ("open", "half_open"),
        ("half_open", "closed"),
    ]
    (client,) = [s for s in otel.spans() if s.kind is SpanKind.CLIENT]
    assert_child_of(client, call)


def test_manual_transition_goes_to_the_span_that_caused_it(otel: Otel) -> None:
    """A manual transition makes no call span; under an application span, that span gets the event."""
    res = resilience()
    res.breaker.transition_to("forced_open")
    with otel.tracer.start_as_current_span("admin") as admin:
        res.breaker.transition_to("closed")
    assert otel.call_spans() == []
    assert [(e.name, dict(e.attributes or {})) for e in admin.events] == [  # type: ignore[attr-defined]
        (
            names.EVENT_CIRCUIT_TRANSITION,
            {
                names.ATTR_BREAKER: NAME,
                names.ATTR_FROM_STATE: "forced_open",
                names.ATTR_TO_STATE: "closed",
                names.ATTR_FAILURE_RATE: 0.0,
            },
        )
    ]


@pytest.mark.parametrize("outcome", ["success", "failure", "rejected"])
def test_span_is_not_current_after_the_call(otel: Otel, mode: str, outcome: str) -> None:
    """After a call returns or raises, the current context is the one from before the call."""
    res = resilience(breaker=TRIPS_AT_2)
    if outcome == "rejected":
        res.breaker.transition_to("forced_open")
    dep = Script("ok" if outcome == "success" else ConnectionError)
    if mode == "sync":
        before = otel_context.get_current()
        with contextlib.suppress(Exception):  # the outcome is asserted on the span below
            res.call(dep)
        after = otel_context.get_current()
    else:

        async def scenario() -> tuple[Any, Any]:
            async def afn() -> Any:
                return dep()

            before = otel_context.get_current()
            with contextlib.suppress(Exception):
                await res.acall(afn)
            return before, otel_context.get_current()

        before, after = asyncio.run(scenario())
    assert after == before
    assert trace.get_current_span() is trace.INVALID_SPAN
    if outcome == "success":
        assert otel.call_spans() == []  # a plain success: no span at all
    else:
        assert otel.the_call_span().attributes[names.ATTR_OUTCOME] == outcome


def test_span_is_not_current_after_keyboard_interrupt(otel: Otel) -> None:
    """A KeyboardInterrupt in an attempt ends the span and detaches it before propagating."""
    res = resilience()
    before = otel_context.get_current()
    with pytest.raises(KeyboardInterrupt):
        res.call(Script(KeyboardInterrupt))
    assert otel_context.get_current() == before
    call = otel.the_call_span()
    assert call.status.status_code is StatusCode.ERROR
    assert call.attributes[names.ATTR_ATTEMPTS] == 1


class BlockingClock(FakeClock):
    """A fake clock whose async sleep blocks until cancelled (and says when it started)."""

    def __init__(self) -> None:
        super().__init__()
        self.sleeping: asyncio.Event | None = None

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)
        assert self.sleeping is not None
        self.sleeping.set()
        await asyncio.Event().wait()


@pytest.mark.parametrize("where", ["attempt", "backoff"])
def test_span_is_not_current_after_cancellation(otel: Otel, where: str) -> None:
    """A task cancelled during an attempt or during the backoff ends the call span and detaches it."""
    clock = BlockingClock()
    res = resilience(clock=clock)
    seen: dict[str, object] = {}

    async def attempt() -> None:
        if where == "backoff":
            raise ConnectionError("first attempt")
        assert clock.sleeping is not None
        clock.sleeping.set()
        await asyncio.Event().wait()

    async def caller() -> None:
        before = otel_context.get_current()
        try:
            await res.acall(attempt)
        except asyncio.CancelledError:
            seen["context restored"] = otel_context.get_current() == before
            seen["current"] = trace.get_current_span()
            raise

    async def main() -> None:
        clock.sleeping = asyncio.Event()
        task = asyncio.create_task(caller())
        await clock.sleeping.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert seen == {"context restored": True, "current": trace.INVALID_SPAN}
    call = otel.the_call_span()
    assert call.end_time is not None
    assert call.attributes[names.ATTR_OUTCOME] == "failure"


def test_nested_calls_make_nested_spans(otel: Otel, mode: str) -> None:
    """A call through breaker A whose attempt calls through breaker B: A's span > B's span > CLIENT;
    one retry layer: B makes one attempt per attempt of A, and A retries (both in trouble: every
    call has its span up front)."""
    outer = in_trouble(resilience("orders"))
    inner = in_trouble(resilience("postgresql://127.0.0.1:5432/app"))
    db = Script(ConnectionError, "row", tracer=otel.tracer)
    if mode == "sync":
        result = outer.call(lambda: inner.call(db))
    else:

        async def query() -> Any:
            return db()

        async def handler() -> Any:
            return await inner.acall(query)

        result = asyncio.run(outer.acall(handler))
    assert result == "row"
    (a,) = [s for s in otel.spans() if s.name == "otelres orders"]
    inner = [s for s in otel.spans() if s.name == "otelres postgresql://127.0.0.1:5432/app"]
    assert a.parent is None
    assert len(inner) == 2
    clients = [s for s in otel.spans() if s.kind is SpanKind.CLIENT]
    assert len(clients) == 2
    for b, client in zip(inner, sorted(clients, key=lambda s: s.start_time or 0), strict=True):
        assert_child_of(b, a)
        assert_child_of(client, b)
        assert events(b, names.EVENT_RETRY) == []
    assert len(events(a, names.EVENT_RETRY)) == 1


def test_concurrent_async_calls_have_separate_spans(otel: Otel) -> None:
    """Concurrent acall()s on one Resilience each get their own span with their own attempts."""
    res = in_trouble(resilience())

    async def attempt(label: str) -> str:
        with otel.tracer.start_as_current_span(label, kind=SpanKind.CLIENT):
            await asyncio.sleep(0)
            return label

    async def main() -> list[str]:
        return await asyncio.gather(*(res.acall(attempt, f"a{i}") for i in range(3)))

    assert asyncio.run(main()) == ["a0", "a1", "a2"]
    calls = otel.call_spans()
    assert len(calls) == 3
    by_id = {c.context.span_id: c for c in calls}
    for client in (s for s in otel.spans() if s.kind is SpanKind.CLIENT):
        assert client.parent is not None
        assert client.parent.span_id in by_id
        by_id.pop(client.parent.span_id)
    assert by_id == {}


def test_decorated_functions_make_call_spans(otel: Otel) -> None:
    """The decorator form, sync and async, makes the same call span with the attempts as its children."""
    res = in_trouble(resilience())
    dep = Script(ConnectionError, "ok", tracer=otel.tracer)

    @res
    def fetch() -> Any:
        return dep()

    @res
    async def afetch() -> Any:
        return dep()

    assert fetch() == "ok"
    dep.attempts = 0
    assert asyncio.run(afetch()) == "ok"
    calls = otel.call_spans()
    assert len(calls) == 2
    for call in calls:
        assert call.attributes[names.ATTR_ATTEMPTS] == 2
        assert len(events(call, names.EVENT_RETRY)) == 1
        children = [s for s in otel.spans() if s.parent and s.parent.span_id == call.context.span_id]
        assert len(children) == 2


def test_attempts_block_makes_one_call_span(otel: Otel) -> None:
    """The `for attempt in res.attempts()` form also makes one call span parenting its attempts."""
    res = in_trouble(resilience())
    dep = Script(ConnectionError, "ok", tracer=otel.tracer)
    for attempt in res.attempts():
        with attempt:
            dep()
    call = otel.the_call_span()
    clients = [s for s in otel.spans() if s.kind is SpanKind.CLIENT]
    assert len(clients) == 2
    for client in clients:
        assert_child_of(client, call)
    assert trace.get_current_span() is trace.INVALID_SPAN


def test_user_span_is_the_parent_of_the_call_span(otel: Otel, mode: str) -> None:
    """A call made under an application span gets that span as its parent, and leaves it current."""
    res = resilience()
    with otel.tracer.start_as_current_span("handler") as handler:
        run(mode, res, Script(ConnectionError, "ok"))
        assert trace.get_current_span() is handler
    call = otel.the_call_span()
    assert call.parent is not None
    assert call.parent.span_id == handler.get_span_context().span_id


def _suppressed_by_key(key: object) -> Any:
    return otel_context.attach(otel_context.set_value(key, True))  # type: ignore[arg-type]


@pytest.mark.parametrize("how", ["context manager", "context key", "plain key"])
def test_no_span_while_instrumentation_is_suppressed(otel: Otel, mode: str, how: str) -> None:
    """With OpenTelemetry's instrumentation suppressed, a call (even a retried one) makes no call span."""
    res = resilience()
    if how == "context manager":
        with suppress_instrumentation():
            assert run(mode, res, Script(ConnectionError, "ok")) == "ok"
    else:
        key = (
            otel_context._SUPPRESS_INSTRUMENTATION_KEY if how == "context key" else "suppress_instrumentation"
        )
        token = _suppressed_by_key(key)
        try:
            assert run(mode, res, Script(ConnectionError, "ok")) == "ok"
        finally:
            otel_context.detach(token)
    assert otel.call_spans() == []
    # Not suppressed any more: the next retried call has its span again.
    run(mode, res, Script(ConnectionError, "ok"))
    assert len(otel.call_spans()) == 1


class NeverTroubled(otelres.CircuitBreaker):
    """A breaker that always reads quiet: a call sees no trouble before it asks for a permit, as when
    the circuit opens in another thread between the two."""

    def troubled(self) -> bool:
        return False


def test_a_circuit_opened_under_the_fast_path_still_reports_the_rejection(otel: Otel, mode: str) -> None:
    """The drivers read the breaker quiet, then the permit is refused: the rejected call still has
    its span with the rejection event, and is counted as rejected."""
    breaker = NeverTroubled(NAME, clock=FakeClock())
    breaker.transition_to("forced_open")
    res = resilience(breaker=breaker)
    dep = Script("ok", tracer=otel.tracer)
    with pytest.raises(otelres.CircuitOpenError):
        run(mode, res, dep)
    assert dep.attempts == 0
    (span,) = otel.spans()
    assert span.attributes[names.ATTR_OUTCOME] == "rejected"
    assert event_names(span) == [names.EVENT_CIRCUIT_REJECTED, "exception"]
    assert otel.values(names.CALLS, names.ATTR_OUTCOME) == {"rejected": 1}


def test_no_span_under_an_unsampled_parent(otel: Otel, mode: str) -> None:
    """Under a parent that is not sampled a retried call makes no span (no span work at all); its
    metrics are complete."""
    parent = trace.NonRecordingSpan(
        trace.SpanContext(trace_id=0x1234, span_id=0x5678, is_remote=True, trace_flags=trace.TraceFlags(0))
    )
    token = otel_context.attach(trace.set_span_in_context(parent))
    try:
        assert run(mode, in_trouble(resilience()), Script(ConnectionError, "ok", tracer=otel.tracer)) == "ok"
    finally:
        otel_context.detach(token)
    assert otel.spans() == []
    assert otel.values(names.CALLS, names.ATTR_OUTCOME) == {"success": 1}
    assert otel.values(names.RETRIES, names.ATTR_RETRY_REASON) == {"connect": 1}


def test_a_failure_without_retries_has_its_span(otel: Otel, mode: str) -> None:
    """A call that fails at its only attempt, the dependency quiet until then, gets its span (status
    ERROR, the exception once) at the end: it had something to say."""
    res = resilience(retry=NO_JITTER.evolve(attempts=1))
    with pytest.raises(ConnectionError):
        run(mode, res, Script(ConnectionError, tracer=otel.tracer))
    call = otel.the_call_span()
    assert call.status.status_code is StatusCode.ERROR
    assert event_names(call) == ["exception"]
    assert call.attributes[names.ATTR_ATTEMPTS] == 1


def test_a_caller_error_is_no_reason_for_a_span(otel: Otel, mode: str) -> None:
    """An exception the breaker does not count (the caller's own error) and that is not retried
    leaves the trace as a plain call's: the CLIENT span alone."""
    res = resilience(breaker=otelres.BreakerPolicy(ignore=(KeyError,)))
    with pytest.raises(KeyError):
        run(mode, res, Script(KeyError, tracer=otel.tracer))
    assert otel.call_spans() == []
    assert [s.kind for s in otel.spans()] == [SpanKind.CLIENT]


@pytest.mark.parametrize("trouble", [False, True])
def test_an_attempts_loop_whose_body_opens_spans_leaves_the_context_as_it_was(
    otel: Otel, trouble: bool
) -> None:
    """`with tracer.start_as_current_span("op"), attempt:` in an attempts() loop: the call span
    starts up front (one started inside the body's span would be detached out of order, leaving
    the ended "op" current after the loop)."""
    res = resilience()
    if trouble:
        in_trouble(res)
    dep = Script(ConnectionError, "ok")
    before = trace.get_current_span()
    for attempt in res.attempts():
        with otel.tracer.start_as_current_span("op"), attempt:
            dep()
    assert trace.get_current_span() is before
    call = otel.the_call_span()
    ops = [s for s in otel.spans() if s.name == "op"]
    assert len(ops) == 2
    for op in ops:
        assert_child_of(op, call)


def test_an_aattempts_loop_leaves_the_context_as_it_was(otel: Otel) -> None:
    res = resilience()
    dep = Script(ConnectionError, "ok")

    async def main() -> tuple[object, object]:
        before = trace.get_current_span()
        async for attempt in res.aattempts():
            with otel.tracer.start_as_current_span("op"), attempt:
                dep()
        return before, trace.get_current_span()

    before, after = asyncio.run(main())
    assert after is before


def test_a_quiet_time_failure_that_trips_carries_the_transition(otel: Otel, mode: str) -> None:
    """The first failure after a quiet spell trips a breaker that opens at once: the call's span
    starts before the breaker records the failure, so the transition is on it, not on the caller's."""
    res = resilience(
        breaker=otelres.BreakerPolicy(consecutive_failures=1), retry=NO_JITTER.evolve(attempts=1)
    )
    with otel.tracer.start_as_current_span("handler"), pytest.raises(ConnectionError):
        run(mode, res, Script(ConnectionError))
    call = otel.the_call_span()
    (handler,) = [s for s in otel.spans() if s.name == "handler"]
    assert names.EVENT_CIRCUIT_TRANSITION in event_names(call)
    assert names.EVENT_CIRCUIT_TRANSITION not in event_names(handler)


def test_a_return_the_breaker_counted_as_a_failure_has_its_span(otel: Otel) -> None:
    """A call through the same breaker inside the attempt judged it a failure (a patched client's
    503 returned as a response): the breaker counts a failure, and the call has its span."""
    outer = resilience()
    inner = otelres.Resilience(NAME, breaker=outer.breaker, retry=otelres.RetryPolicy(attempts=1))
    inner.guard.judge = otelres.BreakerPolicy(failure_result=lambda r: r == 503)
    before = outer.breaker.stats().failures
    assert outer.call(lambda: inner.call(lambda: 503)) == 503
    assert outer.breaker.stats().failures == before + 1
    assert len(otel.call_spans()) == 1
