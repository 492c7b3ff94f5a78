"""Turning telemetry on and off, and keeping it free when nobody measures.

Events (retries, transitions, rejections) always go to structlog. Spans and
metrics need a listener on every call, which sends every call through the full
decision flow; so that listener is registered only while a real (SDK)
TracerProvider or MeterProvider is installed. An application that installs its
providers after :func:`enable` is noticed: the API's ``set_tracer_provider`` and
``set_meter_provider`` are wrapped (wrapt) to re-evaluate.
"""

from __future__ import annotations

import threading

import wrapt
from opentelemetry import metrics, trace
from opentelemetry.instrumentation.utils import unwrap

from otelres import _hooks
from otelres._sdk import has_meter_provider, has_tracer_provider

from ._calls import CallTelemetry
from ._logs import LogEvents

__all__ = ["active", "disable", "enable"]

_lock = threading.Lock()
_enabled = False
_explicit: tuple[trace.TracerProvider | None, metrics.MeterProvider | None] | None = None
_logs: LogEvents | None = None
_calls: CallTelemetry | None = None
_calls_for: tuple[bool, bool] = (False, False)


def enable(
    *,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
    rejected_log_interval: float = 10.0,
) -> None:
    """Report every call, retry and transition (idempotent).

    With no provider given, the global ones are used, and spans and metrics
    start once the application installs SDK providers. Given providers (tests,
    or an application that keeps several) are used as they are.
    """
    global _enabled, _explicit, _logs  # noqa: PLW0603 - one telemetry state per process
    with _lock:
        if tracer_provider is not None or meter_provider is not None:
            _explicit = (tracer_provider, meter_provider)
        if _logs is None:
            _logs = LogEvents(rejected_log_interval)
            _hooks.add_listener(_logs)
        _enabled = True
        _watch_providers()
    _refresh()


def disable() -> None:
    """Stop reporting (idempotent). Instruments already created stay with their meter."""
    global _enabled, _explicit, _logs, _calls, _calls_for  # noqa: PLW0603
    with _lock:
        _enabled = False
        _explicit = None
        if _logs is not None:
            _hooks.remove_listener(_logs)
            _logs = None
        if _calls is not None:
            _hooks.remove_listener(_calls)
            _calls = None
        _calls_for = (False, False)
        _unwatch_providers()


def active() -> dict[str, bool]:
    """What is reported now: ``{"logs": ..., "traces": ..., "metrics": ...}``."""
    return {"logs": _logs is not None, "traces": _calls_for[0], "metrics": _calls_for[1]}


def _refresh() -> None:
    """(Re)build the per-call listener for the providers in place now."""
    global _calls, _calls_for  # noqa: PLW0603
    with _lock:
        if not _enabled:
            return
        if _explicit is not None:
            tracing, metering = _explicit[0] is not None, _explicit[1] is not None
        else:
            tracing, metering = has_tracer_provider(), has_meter_provider()
        if (tracing, metering) == _calls_for and (_calls is not None or not (tracing or metering)):
            return
        if _calls is not None:
            _hooks.remove_listener(_calls)
            _calls = None
        _calls_for = (tracing, metering)
        if tracing or metering:
            tracer_provider, meter_provider = _explicit if _explicit is not None else (None, None)
            _calls = CallTelemetry(tracer_provider, meter_provider, tracing=tracing, metering=metering)
            _hooks.add_listener(_calls)


_watching = False


def _watch_providers() -> None:
    """Wrap the API's provider setters once, so that a later SDK set-up is noticed."""
    global _watching  # noqa: PLW0603
    if _watching:
        return
    _watching = True

    def after(
        wrapped: object, instance: object, args: tuple[object, ...], kwargs: dict[str, object]
    ) -> object:
        result = wrapped(*args, **kwargs)  # type: ignore[operator]
        _refresh()
        return result

    wrapt.wrap_function_wrapper("opentelemetry.trace", "set_tracer_provider", after)
    wrapt.wrap_function_wrapper("opentelemetry.metrics", "set_meter_provider", after)


def _unwatch_providers() -> None:
    """Undo :func:`_watch_providers` (the API's setters come back as they were)."""
    global _watching  # noqa: PLW0603
    if not _watching:
        return
    _watching = False
    unwrap(trace, "set_tracer_provider")
    unwrap(metrics, "set_meter_provider")
