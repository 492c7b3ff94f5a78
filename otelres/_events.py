"""Where the core reports what happened, without knowing who listens.

The core (breaker, flow, :func:`otelres.degrade`) builds one :class:`Event`
record and hands it to :func:`emit`, the one dispatch; telemetry, the testing
helpers and users register a :class:`Listener` and read the records in
:meth:`Listener.on_event`. With no listener registered a report costs one truth
test of a tuple, which keeps the core free of any dependency on OpenTelemetry or
structlog. (stamina's ``RetryDetails`` is the model: one frozen record, one hook.)

Listeners written against the per-kind methods of otelres 0.1 (``on_retry``,
``on_transition``, ...) keep working: registering one warns
(``DeprecationWarning``) and registers an adapter that hands each record to them.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import warnings
from typing import TYPE_CHECKING, Final, NamedTuple

from . import _fork

if TYPE_CHECKING:
    from ._breaker import Transition

__all__ = [
    "CALL",
    "DEGRADED",
    "EXHAUSTED",
    "FALLBACK",
    "KINDS",
    "REJECTED",
    "RETRY",
    "RETRY_SUPPRESSED",
    "TRANSITION",
    "Event",
    "Listener",
    "add_listener",
    "emit",
    "end_call",
    "remove_listener",
    "start_call",
]

_log = logging.getLogger("otelres")

#: A retry is scheduled: ``attempt`` failed for ``reason``; the next follows in ``delay`` s.
RETRY: Final = "retry"
#: A retry was due after ``attempt`` but ``reason`` forbade it (budget, deadline, ...).
RETRY_SUPPRESSED: Final = "retry_suppressed"
#: A call made all its ``attempt`` attempts (more than one); the last failed for ``reason``.
EXHAUSTED: Final = "exhausted"
#: A call was rejected without an attempt, for ``reason``: ``circuit_open`` (it admits a probe
#: in ``retry_after`` s) or ``throttled`` (the adaptive throttle beside a closed circuit).
REJECTED: Final = "rejected"
#: A call returned its fallback instead of the error ``reason`` (an exception's type name).
FALLBACK: Final = "fallback"
#: A handler part (:func:`otelres.degrade`, named by ``breaker``) answered with its fallback.
DEGRADED: Final = "degraded"
#: A breaker changed state: ``transition`` says how.
TRANSITION: Final = "transition"
#: A logical call ended (per-call listeners only): ``outcome``, ``attempt`` attempts made,
#: ``duration`` s, and ``error``, the exception it ended with, if any.
CALL: Final = "call"

KINDS: Final = (RETRY, RETRY_SUPPRESSED, EXHAUSTED, REJECTED, FALLBACK, DEGRADED, TRANSITION, CALL)


class Event(NamedTuple):
    """One thing the core reports: its ``kind`` (one of :data:`KINDS`), the breaker
    it concerns, and the figures that explain it; a field a kind does not use
    keeps its default. Immutable: every listener sees the same record.

    ``attempt`` is the number of the attempt that failed (``retry``,
    ``retry_suppressed``) or the number of attempts made (``exhausted``, ``call``).
    """

    kind: str
    breaker: str
    attempt: int = 0
    delay: float = 0.0
    reason: str = ""
    retry_after: float = 0.0
    outcome: str = ""
    duration: float = 0.0
    error: BaseException | None = None
    transition: Transition | None = None

    @property
    def fields(self) -> dict[str, object]:
        """The figures of this kind of event by name (the ``otelres.testing.Event``
        shape of otelres 0.1: ``attempts`` for the attempts made).
        """
        kind = self.kind
        if kind == RETRY:
            return {"attempt": self.attempt, "delay": self.delay, "reason": self.reason}
        if kind == RETRY_SUPPRESSED:
            return {"attempt": self.attempt, "reason": self.reason}
        if kind == EXHAUSTED:
            return {"attempts": self.attempt, "reason": self.reason}
        if kind == REJECTED:
            # The reason came after 0.1: shown when it is not the circuit (``throttled``).
            if self.reason and self.reason != "circuit_open":
                return {"retry_after": self.retry_after, "reason": self.reason}
            return {"retry_after": self.retry_after}
        if kind in (FALLBACK, DEGRADED):
            return {"reason": self.reason}
        if kind == CALL:
            return {"outcome": self.outcome, "duration": self.duration, "attempts": self.attempt}
        transition = self.transition
        if transition is None:  # pragma: no cover - a transition event always carries one
            return {}
        return {
            "from_state": transition.from_state,
            "to_state": transition.to_state,
            "failure_rate": transition.failure_rate,
            "seq": transition.seq,
        }


class Listener:
    """Receives the core's reports. Subclass it and override :meth:`on_event`.

    Every method is called on the thread (or task) that caused the event, after
    the breaker's lock is released; it must be quick and must not raise (an
    exception is logged, at a bounded rate, and dropped: it never reaches the
    caller's call).

    A listener with ``per_call = True`` also hears about every logical call:
    :meth:`start_call` when it begins, :meth:`end_call` with a ``call`` event
    when it ends. While one is registered, every call takes the full decision
    flow; without one, a plain success reports nothing, which is what keeps
    otelres's cost near zero when nobody measures it.

    A per-call listener with ``start_on_demand = True`` hears :meth:`start_call`
    only for a call with something to say (one that is retried, rejected, falls
    back or fails, and every call while its dependency is in trouble: see
    :meth:`otelres.CircuitBreaker.troubled`), at the moment it first has, with
    ``elapsed`` the seconds since the call began; :meth:`end_call` comes for every
    call, with ``scope`` None when it never started. A plain success then costs it
    one :meth:`end_call`, and the call keeps the fast path (otelres's own
    telemetry works so: a call span only where there is something to show).
    """

    #: Whether this listener needs to hear about every call, not only events.
    per_call = False
    #: Whether :meth:`start_call` may wait until the call has something to say.
    start_on_demand = False

    def on_event(self, event: Event) -> None:
        """One event (every kind but ``call``, which comes through :meth:`end_call`)."""

    def start_call(self, breaker: str, elapsed: float = 0.0) -> object:  # noqa: ARG002 - the interface
        """A logical call begins (per-call listeners only); the return value comes
        back as ``scope`` in :meth:`end_call` (a span, say). ``elapsed``: the seconds
        the call has run already (0 unless ``start_on_demand``).
        """
        return None

    def end_call(self, event: Event, scope: object) -> None:  # noqa: ARG002 - the interface
        """A logical call ended (per-call listeners only): ``event`` is its ``call``
        event, ``scope`` what :meth:`start_call` returned. The default hands the
        event to :meth:`on_event`.
        """
        self.on_event(event)

    # -- otelres 0.1's per-kind methods (deprecated: override on_event) ----------------------

    def on_call_start(self, breaker: str) -> object:  # noqa: ARG002 - the legacy interface
        """Deprecated: override :meth:`start_call`."""
        return None

    def on_call_end(
        self,
        breaker: str,
        scope: object,
        outcome: str,
        attempts: int,
        duration: float,
        error: BaseException | None,
    ) -> None:
        """Deprecated: override :meth:`end_call`."""

    def on_call(self, breaker: str, outcome: str, duration: float, attempts: int) -> None:
        """Deprecated: override :meth:`end_call` (or :meth:`on_event` for ``call`` events)."""

    def on_transition(self, transition: Transition) -> None:
        """Deprecated: ``transition`` events come to :meth:`on_event`."""

    def on_rejected(self, breaker: str, retry_after: float) -> None:
        """Deprecated: ``rejected`` events come to :meth:`on_event`."""

    def on_retry(self, breaker: str, attempt: int, delay: float, reason: str) -> None:
        """Deprecated: ``retry`` events come to :meth:`on_event`."""

    def on_retry_suppressed(self, breaker: str, attempt: int, reason: str) -> None:
        """Deprecated: ``retry_suppressed`` events come to :meth:`on_event`."""

    def on_exhausted(self, breaker: str, attempts: int, reason: str) -> None:
        """Deprecated: ``exhausted`` events come to :meth:`on_event`."""

    def on_fallback(self, breaker: str, reason: str) -> None:
        """Deprecated: ``fallback`` events come to :meth:`on_event`."""

    def on_degraded(self, part: str, reason: str) -> None:
        """Deprecated: ``degraded`` events come to :meth:`on_event`."""


#: The per-kind methods of otelres 0.1, which a subclass may still override.
_LEGACY = (
    "on_call_start",
    "on_call_end",
    "on_call",
    "on_transition",
    "on_rejected",
    "on_retry",
    "on_retry_suppressed",
    "on_exhausted",
    "on_fallback",
    "on_degraded",
)


class _Legacy(Listener):
    """Stands in, in the dispatch, for a listener written against the per-kind
    methods of otelres 0.1: translates each record into the call it expects.
    """

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.per_call = listener.per_call
        self.start_on_demand = listener.start_on_demand

    def on_event(self, event: Event) -> None:
        listener = self.listener
        kind = event.kind
        if kind == RETRY:
            listener.on_retry(event.breaker, event.attempt, event.delay, event.reason)
        elif kind == RETRY_SUPPRESSED:
            listener.on_retry_suppressed(event.breaker, event.attempt, event.reason)
        elif kind == EXHAUSTED:
            listener.on_exhausted(event.breaker, event.attempt, event.reason)
        elif kind == REJECTED:
            listener.on_rejected(event.breaker, event.retry_after)
        elif kind == FALLBACK:
            listener.on_fallback(event.breaker, event.reason)
        elif kind == DEGRADED:
            listener.on_degraded(event.breaker, event.reason)
        elif kind == TRANSITION and event.transition is not None:
            listener.on_transition(event.transition)

    def start_call(self, breaker: str, elapsed: float = 0.0) -> object:  # noqa: ARG002 - 0.1 had no elapsed
        return self.listener.on_call_start(breaker)

    def end_call(self, event: Event, scope: object) -> None:
        listener = self.listener
        listener.on_call(event.breaker, event.outcome, event.duration, event.attempt)
        listener.on_call_end(event.breaker, scope, event.outcome, event.attempt, event.duration, event.error)


def _legacy_methods(listener: Listener) -> list[str]:
    cls = type(listener)
    return [name for name in _LEGACY if getattr(cls, name) is not getattr(Listener, name)]


#: Every registered listener; replaced whole, never changed in place.
listeners: tuple[Listener, ...] = ()
#: The registered listeners with ``per_call = True``.
call_listeners: tuple[Listener, ...] = ()
#: The per-call listeners that must hear :meth:`Listener.start_call` before every call
#: (not ``start_on_demand``): while there is one, every call takes the full flow.
eager_listeners: tuple[Listener, ...] = ()
#: The per-call listeners with ``start_on_demand = True``.
on_demand_listeners: tuple[Listener, ...] = ()
_lock = threading.Lock()
_fork.renew(sys.modules[__name__], "_lock")


def _registered(listener: Listener) -> Listener:
    """What stands for ``listener`` in the dispatch: itself, or its :class:`_Legacy` adapter."""
    for registered in listeners:
        if registered is listener or (isinstance(registered, _Legacy) and registered.listener is listener):
            return registered
    return listener


def add_listener(listener: Listener) -> None:
    """Register ``listener`` (once; adding it again does nothing)."""
    global listeners  # noqa: PLW0603 - swapped whole so readers never see a tuple mid-change
    legacy = _legacy_methods(listener)
    entry = listener
    if legacy and type(listener).on_event is Listener.on_event:
        warnings.warn(
            f"{type(listener).__qualname__} overrides {', '.join(legacy)}: these per-kind methods are "
            "deprecated; override on_event(event) (and start_call/end_call for per-call listeners)",
            DeprecationWarning,
            stacklevel=2,
        )
        entry = _Legacy(listener)
    with _lock:
        if _registered(listener) not in listeners:
            listeners = (*listeners, entry)
            _sort_call_listeners()


def remove_listener(listener: Listener) -> None:
    """Unregister ``listener``; a listener not registered is ignored."""
    global listeners  # noqa: PLW0603
    with _lock:
        registered = _registered(listener)
        listeners = tuple(x for x in listeners if x is not registered)
        _sort_call_listeners()


def _sort_call_listeners() -> None:
    """Derive the per-call tuples from :data:`listeners` (under ``_lock``)."""
    global call_listeners, eager_listeners, on_demand_listeners  # noqa: PLW0603
    on_demand_listeners = tuple(x for x in listeners if x.per_call and x.start_on_demand)
    eager_listeners = tuple(x for x in listeners if x.per_call and not x.start_on_demand)
    call_listeners = tuple(x for x in listeners if x.per_call)


class _FailureLog:
    """A listener that keeps raising is logged at most once per interval per listener
    class, with the count of the failures the silence stood for.
    """

    INTERVAL = 60.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        _fork.renew(self, "_lock")
        self._last: dict[type, tuple[float, int]] = {}

    def clear(self) -> None:
        """Forget the failures seen (tests)."""
        with self._lock:
            self._last.clear()

    def failed(self, listener: Listener, method: str, exc: Exception) -> None:
        now = time.monotonic()
        key = type(listener.listener if isinstance(listener, _Legacy) else listener)
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last[0] < self.INTERVAL:
                self._last[key] = (last[0], last[1] + 1)
                return
            silenced = last[1] if last is not None else 0
            self._last[key] = (now, 0)
        _log.warning(
            "otelres listener %s.%s raised %r; dropped (%d more failures since the last such line)",
            key.__qualname__,
            method,
            exc,
            silenced,
        )


#: Failures of listeners, logged at a bounded rate.
failures = _FailureLog()


def emit(event: Event) -> None:
    """Hand ``event`` to every listener (the one dispatch)."""
    for listener in listeners:
        try:
            listener.on_event(event)
        except Exception as exc:  # noqa: BLE001 - a listener must never break a call
            failures.failed(listener, "on_event", exc)


#: What :func:`start_call` hands back: each per-call listener with its scope.
Scopes = list[tuple[Listener, object]]


def start_call(
    breaker: str, chosen: tuple[Listener, ...], elapsed: float = 0.0, scopes: Scopes | None = None
) -> Scopes:
    """Tell the ``chosen`` per-call listeners that a call begins (``elapsed`` s ago);
    their scopes are appended to ``scopes`` (a new list when None), in the order of the starts.
    """
    if scopes is None:
        scopes = []
    for listener in chosen:
        try:
            scopes.append(
                (listener, listener.start_call(breaker, elapsed) if elapsed else listener.start_call(breaker))
            )
        except Exception as exc:  # noqa: BLE001
            failures.failed(listener, "start_call", exc)
            scopes.append((listener, None))
    return scopes


def end_call(event: Event, scopes: Scopes, unstarted: tuple[Listener, ...] = ()) -> None:
    """Tell the per-call listeners that the call ended: those that heard the start in
    reverse order of the starts (scopes nest like context managers), then the
    ``unstarted`` on-demand ones, with scope None.
    """
    for listener, scope in reversed(scopes):
        try:
            listener.end_call(event, scope)
        except Exception as exc:  # noqa: BLE001
            failures.failed(listener, "end_call", exc)
    for listener in unstarted:
        try:
            listener.end_call(event, None)
        except Exception as exc:  # noqa: BLE001
            failures.failed(listener, "end_call", exc)


def plain_success(breaker: str, duration: float, listening: tuple[Listener, ...]) -> None:
    """A call that had nothing to say ended: one attempt, a success, no event. ``listening``:
    the per-call listeners when it began (all on demand: others take every call through the
    full flow); none started, so each hears :meth:`Listener.end_call` with scope None (one
    registered meanwhile hears nothing of a call whose start it missed).
    """
    event = Event(CALL, breaker, 1, 0.0, "", 0.0, "success", duration)
    for listener in listening:
        if not listener.start_on_demand:
            continue
        try:
            listener.end_call(event, None)
        except Exception as exc:  # noqa: BLE001
            failures.failed(listener, "end_call", exc)
