"""Spans and metrics for every logical call: a per-call listener that starts on demand.

A call with something to say gets one INTERNAL span, current while its attempts
run (so the attempts' CLIENT spans are its children), carrying the retry,
transition and rejection events; status ERROR with the exception recorded once
when the call fails. A plain call (one attempt, a success, while its dependency
is not in trouble) gets none: its trace is OpenTelemetry's CLIENT span alone,
and its cost here is one count and one duration. The span of a call that first
has something to say after its first attempt (a retry in quiet times) starts
then, back-dated to the call's start: that first attempt is its sibling; while
the dependency is in trouble (:meth:`otelres.CircuitBreaker.troubled`) every call
gets its span up front. Under a parent that is not sampled no span is made.

Metrics follow the README's telemetry reference. Counts that the semantics allow are kept
locally and reported by observable instruments at collection time; what must be
a distribution (durations, delays) is recorded, with attribute sets built once
per (breaker, label) and reused.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TYPE_CHECKING, Any, ClassVar, cast

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from opentelemetry.trace import SpanKind, Status, StatusCode

from otelres import _events, _fork
from otelres._breaker import LIVE
from otelres._events import Event, Listener

from . import names
from ._fleet import register_fleet_gauges
from ._limit import register_limit_instruments

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from contextvars import Token

    from opentelemetry.context import Context
    from opentelemetry.metrics import CallbackOptions, Observation

__all__ = ["CallTelemetry"]


def _version() -> str:
    """The instrumentation scope's version: otelres's own, from the one place it is written."""
    from otelres import __version__  # noqa: PLC0415 - otelres imports this module: read once it is whole

    return __version__


#: Bucket bounds in seconds for durations and delays (the SDK's defaults are
#: meant for milliseconds: every call under 5 s would land in one bucket).
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_FAILED = ("failure", "rejected")


class _Instruments:
    """The instruments and local counts of one meter provider, created once.

    A second set on the same meter would be duplicates whose callbacks the SDK
    never calls, so every listener reporting to that provider shares this one.
    """

    def __init__(self, meter_provider: metrics.MeterProvider | None) -> None:
        self.lock = threading.Lock()
        self.calls: dict[tuple[str, str], int] = {}
        self.rejections: dict[tuple[str, str], int] = {}
        _fork.renew(self, "lock")
        self.attrs: dict[tuple[str, ...], dict[str, str]] = {}
        meter = metrics.get_meter(names.METER_NAME, _version(), meter_provider)
        self.duration = meter.create_histogram(
            names.CALL_DURATION,
            unit="s",
            description="Duration of logical calls, retries included.",
            explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
        )
        self.retries = meter.create_counter(
            names.RETRIES, unit="{retry}", description="Retries scheduled, by reason."
        )
        self.suppressed = meter.create_counter(
            names.RETRIES_SUPPRESSED, unit="{retry}", description="Retries due but not made, by reason."
        )
        self.transitions = meter.create_counter(
            names.CIRCUIT_TRANSITIONS, unit="{transition}", description="Circuit breaker state transitions."
        )
        self.delay = meter.create_histogram(
            names.RETRY_DELAY,
            unit="s",
            description="Delay scheduled before each retry.",
            explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
        )
        meter.create_observable_counter(
            names.CALLS, [self._observe_calls], unit="{call}", description="Logical calls, by outcome."
        )
        meter.create_observable_counter(
            names.REJECTIONS,
            [self._observe_rejections],
            unit="{call}",
            description="Calls rejected without an attempt, by reason.",
        )
        meter.create_observable_gauge(
            names.CIRCUIT_STATE,
            [self._observe_states],
            unit="1",
            description="1 for each breaker's current state, 0 for the others.",
        )
        register_fleet_gauges(meter)
        register_limit_instruments(meter)

    def _after_fork_in_child(self) -> None:
        """A forked child is a process of its own (its own ``service.instance.id``, its own
        Prometheus port): its calls count from zero, or every process forked from a parent
        that made calls would report the parent's calls again.
        """
        self.calls = {}
        self.rejections = {}

    def attributes(self, breaker: str, key: str, value: str) -> dict[str, str]:
        """The attribute set ``{breaker, key: value}``, built once and reused."""
        found = self.attrs.get((breaker, key, value))
        if found is None:
            found = {names.ATTR_BREAKER: breaker, key: value}
            self.attrs[(breaker, key, value)] = found
        return found

    def _observe_calls(self, options: CallbackOptions) -> Iterable[Observation]:
        with self.lock:
            counts = list(self.calls.items())
        return [
            metrics.Observation(count, self.attributes(breaker, names.ATTR_OUTCOME, outcome))
            for (breaker, outcome), count in counts
        ]

    def _observe_rejections(self, options: CallbackOptions) -> Iterable[Observation]:
        with self.lock:
            counts = list(self.rejections.items())
        return [
            metrics.Observation(count, self.attributes(breaker, names.ATTR_REJECTION_REASON, reason))
            for (breaker, reason), count in counts
        ]

    def _observe_states(self, options: CallbackOptions) -> Iterable[Observation]:
        observations = []
        for breaker in list(LIVE):
            current = breaker.state.value
            for state in names.STATES:
                attributes = {names.ATTR_BREAKER: breaker.name, names.ATTR_STATE: state}
                observations.append(metrics.Observation(1 if state == current else 0, attributes))
        return observations


_instruments: dict[object, _Instruments] = {}
_instruments_lock = threading.Lock()
_fork.renew(sys.modules[__name__], "_instruments_lock")


def _instruments_for(meter_provider: metrics.MeterProvider | None) -> _Instruments:
    with _instruments_lock:
        found = _instruments.get(meter_provider)
        if found is None:
            found = _instruments[meter_provider] = _Instruments(meter_provider)
        return found


class CallTelemetry(Listener):
    """Spans (once :meth:`start_tracing` ran) and metrics (once :meth:`start_metrics`
    ran) for every call. Each starts at most once; neither stops (disabling
    telemetry unregisters the listener instead).
    """

    per_call = True
    start_on_demand = True

    def __init__(self) -> None:
        self._tracer: trace.Tracer | None = None
        self._m: _Instruments | None = None

    def start_tracing(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        """Make spans from now on (the global provider when none is given)."""
        if self._tracer is None:
            self._tracer = trace.get_tracer(names.METER_NAME, _version(), tracer_provider)

    def start_metrics(self, meter_provider: metrics.MeterProvider | None = None) -> None:
        """Report metrics from now on, through the provider's one set of instruments."""
        if self._m is None:
            self._m = _instruments_for(meter_provider)

    # -- the call ---------------------------------------------------------------------------------

    def start_call(self, breaker: str, elapsed: float = 0.0) -> object:
        """Start the call's span, back-dated by ``elapsed`` seconds, and make it current
        (None when tracing is off or suppressed, or under a parent that is not sampled).
        """
        tracer = self._tracer
        if tracer is None or not is_instrumentation_enabled():
            return None
        parent = trace.get_current_span().get_span_context()
        if parent.is_valid and not parent.trace_flags.sampled:
            return None  # a child of an unsampled parent is not recorded: no span work at all
        span = tracer.start_span(
            f"otelres {breaker}",
            kind=SpanKind.INTERNAL,
            attributes={names.ATTR_BREAKER: breaker},
            start_time=time.time_ns() - int(elapsed * 1e9) if elapsed > 0 else None,
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        return span, token

    def end_call(self, event: Event, scope: object) -> None:
        """Count the call, end its span, then record the duration.

        The duration is recorded after the span stopped being current: inside
        it, the SDK's default exemplar filter would offer every measurement to
        the exemplar reservoir, which costs more than the record itself.
        """
        breaker, outcome = event.breaker, event.outcome
        m = self._m
        if m is not None:
            key = (breaker, outcome)
            with m.lock:
                m.calls[key] = m.calls.get(key, 0) + 1
        if scope is not None:
            span, token = cast("tuple[trace.Span, Token[Context]]", scope)
            try:
                attributes: dict[str, Any] = {names.ATTR_OUTCOME: outcome, names.ATTR_ATTEMPTS: event.attempt}
                span.set_attributes(attributes)
                if outcome in _FAILED:
                    # The description names the error's type only: its message may
                    # carry a URL with credentials (the exception event has it all).
                    error = event.error
                    if error is None:
                        description = "the last attempt's result was a failure"
                    elif isinstance(error, Exception):
                        span.record_exception(error)
                        description = type(error).__name__
                    else:
                        description = f"cancelled ({type(error).__name__})"
                    span.set_status(Status(StatusCode.ERROR, description))
                span.end()
            finally:
                otel_context.detach(token)
        if m is not None:
            m.duration.record(event.duration, m.attributes(breaker, names.ATTR_OUTCOME, outcome))

    # -- events ---------------------------------------------------------------------------------

    def on_event(self, event: Event) -> None:
        """Count the event and add it to the current span (the call's, in a call)."""
        handler = self._HANDLERS.get(event.kind)
        if handler is not None:
            handler(self, event)

    def _retry(self, event: Event) -> None:
        m = self._m
        if m is not None:
            attributes = m.attributes(event.breaker, names.ATTR_RETRY_REASON, event.reason)
            m.retries.add(1, attributes)
            m.delay.record(event.delay, attributes)
        _span_event(
            names.EVENT_RETRY,
            {
                names.ATTR_ATTEMPT: event.attempt,
                names.ATTR_RETRY_DELAY: event.delay,
                names.ATTR_RETRY_REASON: event.reason,
            },
        )

    def _retry_suppressed(self, event: Event) -> None:
        m = self._m
        if m is not None:
            m.suppressed.add(1, m.attributes(event.breaker, names.ATTR_RETRY_REASON, event.reason))

    def _transition(self, event: Event) -> None:
        transition = event.transition
        if transition is None:  # pragma: no cover - a transition event always carries one
            return
        from_state, to_state = transition.from_state.value, transition.to_state.value
        m = self._m
        if m is not None:
            key = (transition.breaker, from_state, to_state)
            attributes = m.attrs.get(key)
            if attributes is None:
                attributes = {
                    names.ATTR_BREAKER: transition.breaker,
                    names.ATTR_FROM_STATE: from_state,
                    names.ATTR_TO_STATE: to_state,
                }
                m.attrs[key] = attributes
            m.transitions.add(1, attributes)
        _span_event(
            names.EVENT_CIRCUIT_TRANSITION,
            {
                names.ATTR_BREAKER: transition.breaker,
                names.ATTR_FROM_STATE: from_state,
                names.ATTR_TO_STATE: to_state,
                names.ATTR_FAILURE_RATE: transition.failure_rate,
            },
        )

    def _degraded(self, event: Event) -> None:
        """A handler part's fallback counts as a call with outcome ``fallback``."""
        m = self._m
        if m is not None:
            key = (event.breaker, "fallback")
            with m.lock:
                m.calls[key] = m.calls.get(key, 0) + 1

    def _rejected(self, event: Event) -> None:
        reason = event.reason or "circuit_open"
        m = self._m
        if m is not None:
            key = (event.breaker, reason)
            with m.lock:
                m.rejections[key] = m.rejections.get(key, 0) + 1
        _span_event(
            names.EVENT_CIRCUIT_REJECTED,
            {names.ATTR_RETRY_AFTER: event.retry_after, names.ATTR_REJECTION_REASON: reason},
        )

    _HANDLERS: ClassVar[dict[str, Callable[[CallTelemetry, Event], None]]] = {
        _events.RETRY: _retry,
        _events.RETRY_SUPPRESSED: _retry_suppressed,
        _events.TRANSITION: _transition,
        _events.DEGRADED: _degraded,
        _events.REJECTED: _rejected,
    }


def _span_event(name: str, attributes: dict[str, Any]) -> None:
    """Add an event to the current span when it records (the call's span, in a call)."""
    span = trace.get_current_span()
    if span.is_recording():
        span.add_event(name, attributes)
