"""What every integration shares: the guard against patching our own traffic
twice, the guarded call, the mark an attempt leaves on its CLIENT span, and
:class:`Patches`, the one way a patch goes on and comes off.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.instrumentation import utils as _otel_utils
from opentelemetry.trace import SpanKind

from otelres._flow import current_attempt
from otelres._patches import Patches
from otelres._resilience import arun, run

if TYPE_CHECKING:
    from collections.abc import Iterator

    from otelres._flow import Guard

    #: What a guarded call resets when it ends: ``inside``'s token, and ``also``'s if set.
    _Tokens = tuple[contextvars.Token[bool], contextvars.Token[bool] | None]

__all__ = [
    "RESEND_COUNT",
    "Patches",
    "acall_inside",
    "call_inside",
    "ensure_telemetry",
    "inside",
    "mark_resend",
    "marking_resend",
    "passing_through",
    "should_wrap",
]

#: OpenTelemetry's HTTP semantic conventions attribute for attempts after the first.
RESEND_COUNT = "http.request.resend_count"

#: OpenTelemetry's keys for "instrumentation suppressed": the context key, and the plain string
#: that older instrumentations set (``is_instrumentation_enabled()`` honours both).
_SUPPRESS_KEY = otel_context._SUPPRESS_INSTRUMENTATION_KEY
_SUPPRESS_KEY_PLAIN = getattr(_otel_utils, "_SUPPRESS_INSTRUMENTATION_KEY_PLAIN", "suppress_instrumentation")

#: Set while an otelres-wrapped client call runs: an inner patched call passes through.
inside: contextvars.ContextVar[bool] = contextvars.ContextVar("otelres_inside", default=False)


def should_wrap() -> bool:
    """False for the exporters' own traffic (instrumentation suppressed) and for a
    call already under a patched outer call (it must not be retried twice).

    OpenTelemetry's ``is_instrumentation_enabled()`` reads its two suppression keys
    (the context key and the plain-string one of older instrumentations) in two
    calls of its own each; this reads them from the current context at once: this
    runs before every patched call.
    """
    if inside.get():
        return False
    current = otel_context.get_current()
    return not (current.get(_SUPPRESS_KEY) or current.get(_SUPPRESS_KEY_PLAIN))


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


def _enter(also: contextvars.ContextVar[bool] | None) -> _Tokens:
    """Set ``inside`` (and ``also``) to True; the tokens :func:`_leave` resets them with."""
    return inside.set(True), None if also is None else also.set(True)


def _leave(also: contextvars.ContextVar[bool] | None, tokens: _Tokens) -> None:
    if also is not None and tokens[1] is not None:
        also.reset(tokens[1])
    inside.reset(tokens[0])


@contextlib.contextmanager
def passing_through(also: contextvars.ContextVar[bool] | None = None) -> Iterator[None]:
    """Within the block, patched client calls pass through (:func:`should_wrap` is
    False): work of a driver's own that no breaker should judge, such as a
    pool's housekeeping. ``also``: a flag of the integration's, True within the block too.
    """
    tokens = _enter(also)
    try:
        yield
    finally:
        _leave(also, tokens)


def call_inside(
    guard: Guard,
    reason: str | None,
    wrapped: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    also: contextvars.ContextVar[bool] | None = None,
) -> Any:
    """Run a patched client call through ``guard`` (``reason``: why it must not be
    retried, if so); patched calls it makes below pass through, and ``also`` (a
    flag of the integration's) is True while it runs.
    """
    # Not passing_through(): a generator context manager's cost on every call.
    if also is None:
        token = inside.set(True)
        try:
            return run(guard, wrapped, args, kwargs, reason)
        finally:
            inside.reset(token)
    tokens = _enter(also)
    try:
        return run(guard, wrapped, args, kwargs, reason)
    finally:
        _leave(also, tokens)


async def acall_inside(
    guard: Guard,
    reason: str | None,
    wrapped: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    also: contextvars.ContextVar[bool] | None = None,
) -> Any:
    """The async :func:`call_inside`."""
    if also is None:
        token = inside.set(True)
        try:
            return await arun(guard, wrapped, args, kwargs, reason)
        finally:
            inside.reset(token)
    tokens = _enter(also)
    try:
        return await arun(guard, wrapped, args, kwargs, reason)
    finally:
        _leave(also, tokens)


def marking_resend(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """A wrapt wrapper for the layer below the CLIENT span: mark retries, then call through."""
    mark_resend()
    return wrapped(*args, **kwargs)
