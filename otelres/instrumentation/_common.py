"""What every integration shares: the guard against patching our own traffic
twice, and the mark an attempt leaves on its CLIENT span.
"""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from opentelemetry.trace import SpanKind

from otelres._flow import current_attempt

if TYPE_CHECKING:
    from otelres._resilience import Resilience

__all__ = [
    "RESEND_COUNT",
    "acall_inside",
    "call_inside",
    "ensure_telemetry",
    "inside",
    "mark_resend",
    "marking_resend",
    "should_wrap",
]

#: OpenTelemetry's HTTP semantic conventions attribute for attempts after the first.
RESEND_COUNT = "http.request.resend_count"

#: Set while an otelres-wrapped client call runs: an inner patched call passes through.
inside: contextvars.ContextVar[bool] = contextvars.ContextVar("otelres_inside", default=False)


def should_wrap() -> bool:
    """False for the exporters' own traffic (instrumentation suppressed) and for a
    call already under a patched outer call (it must not be retried twice).
    """
    return not inside.get() and is_instrumentation_enabled()


def mark_resend() -> None:
    """Set ``http.request.resend_count`` on the current (CLIENT) span for a retry."""
    attempt = current_attempt()
    if attempt > 1:
        span = trace.get_current_span()
        # Only a CLIENT span: without OpenTelemetry's own instrumentation of the
        # library, the current span is otelres's call span, which it is not about.
        if span.is_recording() and getattr(span, "kind", None) is SpanKind.CLIENT:
            span.set_attribute(RESEND_COUNT, attempt - 1)


def ensure_telemetry() -> None:
    """Turn otelres's telemetry on (idempotent): an instrumentor loaded by
    ``opentelemetry-instrument`` through its entry point, without
    ``otelres.instrument()``, reports like one that was.
    """
    from otelres import telemetry  # noqa: PLC0415 - OpenTelemetry's SDK set-up runs first

    telemetry.enable()


def call_inside(
    res: Resilience, reason: str | None, wrapped: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Run a patched client call through ``res`` (``reason``: why it must not be
    retried, if so); patched calls it makes below pass through.
    """
    token = inside.set(True)
    try:
        return res.call_with(wrapped, args, kwargs, no_retry=reason)
    finally:
        inside.reset(token)


async def acall_inside(
    res: Resilience, reason: str | None, wrapped: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """The async :func:`call_inside`."""
    token = inside.set(True)
    try:
        return await res.acall_with(wrapped, args, kwargs, no_retry=reason)
    finally:
        inside.reset(token)


def marking_resend(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """A wrapt wrapper for the layer below the CLIENT span: mark retries, then call through."""
    mark_resend()
    return wrapped(*args, **kwargs)
