"""Turning telemetry on and off, and keeping it free when nobody measures.

Events (retries, transitions, rejections) are always logged (through structlog
when the application configured it, else to the standard library logger
``otelres``: see :func:`otelres.telemetry._logs.emit`). Spans and
metrics need a listener on every call, which sends every call through the full
decision flow; so that listener is registered only while a real (SDK)
TracerProvider or MeterProvider is installed. An application that installs its
providers after :func:`enable` is noticed: the API's ``set_tracer_provider`` and
``set_meter_provider`` are wrapped (through :class:`~otelres._patches.Patches`) to re-evaluate.
"""

from __future__ import annotations

import sys
import threading
from typing import TYPE_CHECKING

from otelres import _events, _fork
from otelres._patches import Patches
from otelres._sdk import has_meter_provider, has_tracer_provider

from ._calls import CallTelemetry
from ._logs import LogEvents

if TYPE_CHECKING:
    from opentelemetry import metrics, trace

__all__ = ["active", "disable", "enable"]

_lock = threading.Lock()
_fork.renew(sys.modules[__name__], "_lock")
_enabled = False
_explicit: tuple[trace.TracerProvider | None, metrics.MeterProvider | None] | None = None
_logs: LogEvents | None = None
_calls: CallTelemetry | None = None
_calls_for: tuple[bool, bool] = (False, False)
# One CallTelemetry per pair of providers, kept across disable()/enable(): its
# instruments are registered with the meter once, and a second set would be a
# duplicate whose callbacks the SDK never calls. Key (None, None): the globals.
_by_providers: dict[tuple[object, object], CallTelemetry] = {}


def enable(
    *,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
    rejected_log_interval: float = 10.0,
) -> None:
    """Report every call, retry and transition (idempotent).

    With no provider given, the global ones are used, and spans and metrics
    start once the application installs SDK providers. Given providers (tests,
    or an application that keeps several) are used as they are; a later call
    that gives only one of them keeps the other.
    """
    global _enabled, _explicit, _logs  # noqa: PLW0603 - one telemetry state per process
    with _lock:
        if tracer_provider is not None or meter_provider is not None:
            previous = _explicit or (None, None)
            _explicit = (tracer_provider or previous[0], meter_provider or previous[1])
        if _logs is None:
            _logs = LogEvents(rejected_log_interval)
            _events.add_listener(_logs)
        _enabled = True
        _watch_providers()
    _refresh()


def disable() -> None:
    """Stop reporting (idempotent)."""
    global _enabled, _explicit, _logs, _calls, _calls_for  # noqa: PLW0603
    with _lock:
        _enabled = False
        _explicit = None
        if _logs is not None:
            _events.remove_listener(_logs)
            _logs = None
        if _calls is not None:
            _events.remove_listener(_calls)
            _calls = None
        _calls_for = (False, False)
        _unwatch_providers()


def active() -> dict[str, bool]:
    """What is reported now: ``{"logs": ..., "traces": ..., "metrics": ...}``."""
    return {"logs": _logs is not None, "traces": _calls_for[0], "metrics": _calls_for[1]}


def _refresh() -> None:
    """Start spans and metrics for the providers in place now."""
    global _calls, _calls_for  # noqa: PLW0603
    with _lock:
        if not _enabled:
            return
        if _explicit is not None:
            tracer_provider, meter_provider = _explicit
            tracing, metering = tracer_provider is not None, meter_provider is not None
        else:
            tracer_provider = meter_provider = None
            tracing, metering = has_tracer_provider(), has_meter_provider()
        if not (tracing or metering):
            return
        calls = _by_providers.get((tracer_provider, meter_provider))
        if calls is None:
            calls = _by_providers[(tracer_provider, meter_provider)] = CallTelemetry()
        if tracing:
            calls.start_tracing(tracer_provider)
        if metering:
            calls.start_metrics(meter_provider)
        if calls is not _calls:
            if _calls is not None:
                _events.remove_listener(_calls)
            _calls = calls
            _events.add_listener(calls)
        _calls_for = (tracing, metering)


# The functions that really set the global providers. The public setters look
# these up at each call, so wrapping them also catches an application (or the
# SDK's own set-up code) that imported the public setter by name before
# enable(); the leading underscore is OpenTelemetry's, stable since 1.0. Private
# API, kept because tests/telemetry/test_global_providers.py pins the behaviour
# (setters imported by name, set later) on every version scripts/test runs, the
# floors included: a release that moves them fails there first.
_SETTERS = (
    ("opentelemetry.trace", "_set_tracer_provider"),
    ("opentelemetry.metrics._internal", "_set_meter_provider"),
)


#: The wrappers on the setters while watching.
_watch = Patches()


def _refreshing(
    wrapped: object, instance: object, args: tuple[object, ...], kwargs: dict[str, object]
) -> object:
    """A wrapt wrapper for a provider setter: set the provider, then re-evaluate."""
    result = wrapped(*args, **kwargs)  # type: ignore[operator]
    _refresh()
    return result


def _watch_providers() -> None:
    """Wrap the API's provider setters once, so that a later SDK set-up is noticed."""
    if _watch.active:
        return
    for module, name in _SETTERS:
        _watch.wrap_named(module, name, _refreshing)


def _unwatch_providers() -> None:
    """Undo :func:`_watch_providers` (the API's setters come back as they were)."""
    _watch.restore()
