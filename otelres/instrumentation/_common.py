"""What every integration shares: the guard against patching our own traffic
twice, the guarded call, the mark an attempt leaves on its CLIENT span, and
:class:`Patches`, the one way a patch goes on and comes off.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import TYPE_CHECKING, Any, NamedTuple

import wrapt
from opentelemetry import trace
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from opentelemetry.trace import SpanKind

from otelres._flow import current_attempt
from otelres._resilience import arun, run

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

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
    if also is not None:
        with passing_through(also):
            return run(guard, wrapped, args, kwargs, reason)
    token = inside.set(True)  # not passing_through(): a generator's cost on every call
    try:
        return run(guard, wrapped, args, kwargs, reason)
    finally:
        inside.reset(token)


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
    if also is not None:
        with passing_through(also):
            return await arun(guard, wrapped, args, kwargs, reason)
    token = inside.set(True)
    try:
        return await arun(guard, wrapped, args, kwargs, reason)
    finally:
        inside.reset(token)


def marking_resend(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """A wrapt wrapper for the layer below the CLIENT span: mark retries, then call through."""
    mark_resend()
    return wrapped(*args, **kwargs)


# -- patches -------------------------------------------------------------------------------------

#: What every wrapt wrapper is an instance of (``BaseObjectProxy`` from wrapt 2 on).
_PROXY: Any = getattr(wrapt, "BaseObjectProxy", wrapt.ObjectProxy)


def _wrapper_of(obj: object) -> object:
    """The wrapper function of a wrapt function wrapper (bound or not), else None."""
    return getattr(obj, "_self_wrapper", None) if isinstance(obj, _PROXY) else None


def _beneath(obj: object) -> object:
    """``obj`` without the wrapt wrappers around it."""
    while isinstance(obj, _PROXY):
        obj = obj.__wrapped__
    return obj


class _Patch(NamedTuple):
    owner: object
    attr: str
    #: What ``restore()`` puts back: the attribute as found (wrapped), or beneath its wrappers (kept).
    original: object
    #: Our wrapper; None for an attribute only kept.
    wrapper: Callable[..., Any] | None


class Patches:
    """The wrappers one instrumentor put on (and the attributes it keeps), undone
    exactly by :meth:`restore`.

    OpenTelemetry's ``unwrap`` replaces whatever wrapper is on top and turns a
    wrapped classmethod into a method bound to its class. Here every original is
    kept as it was found in the owner's ``__dict__``, and our wrapper is taken
    out of the chain wherever it sits, so that the other wrappers stay and
    otelres and OpenTelemetry's instrumentations can be installed and removed
    in any order.
    """

    def __init__(self) -> None:
        self._done: list[_Patch] = []

    @property
    def active(self) -> bool:
        """True from the first :meth:`wrap` or :meth:`keep` to :meth:`restore`: the
        classes handed to a driver obey it.
        """
        return bool(self._done)

    def wrap(self, owner: object, attr: str, wrapper: Callable[..., Any]) -> None:
        """Wrap ``owner.attr`` (``owner``: a module or a class) with the wrapt wrapper
        ``wrapper``, once: a second call does nothing, and an attribute the owner
        does not define itself is left alone.
        """
        if attr not in vars(owner):
            return
        original = vars(owner)[attr]
        node = original
        while isinstance(node, _PROXY):
            if _wrapper_of(node) is wrapper:
                return
            node = node.__wrapped__
        wrapt.wrap_function_wrapper(owner, attr, wrapper)
        self._done.append(_Patch(owner, attr, original, wrapper))

    def wrap_named(self, module: str, name: str, wrapper: Callable[..., Any]) -> None:
        """:meth:`wrap` the attribute that the dotted ``name`` reaches from the module
        named ``module`` (imported), as wrapt finds it: ``wrap_named("redis.client",
        "Redis.execute_command", fn)``.
        """
        owner, attr, _ = wrapt.resolve_path(module, name)
        self.wrap(owner, attr, wrapper)

    def keep(self, owner: object, attr: str) -> None:
        """Note ``owner.attr`` as it is beneath any wrappers, for :meth:`restore` to
        put back if whoever patches it next leaves something else there that is
        no wrapper (OpenTelemetry's uninstrument, which leaves a wrapped
        classmethod a method bound to its class).
        """
        if attr in vars(owner):
            self._done.append(_Patch(owner, attr, _beneath(vars(owner)[attr]), None))

    def restore(self) -> None:
        """Take every wrapper of ours out and put back what was kept, newest first."""
        while self._done:
            patch = self._done.pop()
            if patch.wrapper is None:
                _put_back(patch)
            else:
                _unwrap(patch)


def _unwrap(patch: _Patch) -> None:
    """Take our wrapper out of the chain of wrappers of an attribute, wherever it sits."""
    owner, attr, original, wrapper = patch
    current = vars(owner).get(attr)
    if _wrapper_of(current) is wrapper:
        setattr(owner, attr, original)
        return
    parent = current
    while isinstance(parent, _PROXY):
        child = parent.__wrapped__
        if _wrapper_of(child) is wrapper:
            parent.__wrapped__ = original
            return
        parent = child


def _put_back(patch: _Patch) -> None:
    """Put a kept attribute back, unless it is there or something wraps it (someone's to remove)."""
    owner, attr, original, _ = patch
    current = vars(owner).get(attr)
    if current is not original and not hasattr(current, "__wrapped__"):
        setattr(owner, attr, original)
