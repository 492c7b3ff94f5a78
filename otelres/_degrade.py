"""Handler-level graceful degradation: a decorator that answers with cached,
default or partial data when a dependency is down.

The part of a page that depends on a failing service (recommendations, say)
is replaced by its fallback; the rest of the response is served as usual, and
the ``X-Degraded`` header of the server middleware names the part that fell
back. Only the errors named by ``on`` are replaced: by default an open circuit
and exhausted retries. A cancellation or an interpreter exit is never one.

This module also owns the request's degraded set (:data:`DEGRADED`): the
middleware opens a fresh one per request with :func:`degraded_parts` and reads
it for the header; :func:`degrade` and the core's fallbacks write to it with
:func:`note_degraded`. Whoever falls back says so here, directly: no listener
has to be registered for the header to be right. The set keeps apart the names
the application chose (``degrade(..., name=...)``, in :attr:`DegradedSet.chosen`):
only those may leave the process when the middleware does not show details
(a breaker name is an internal address).
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from typing import TYPE_CHECKING, Any, TypeVar, cast

from . import _events
from ._dependency import is_dependency_error
from ._errors import CircuitOpenError, ConfigError, RetryError
from ._policy import as_exception_predicate

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

__all__ = ["DEGRADED", "DegradedSet", "degrade", "degraded_parts", "note_degraded"]

_F = TypeVar("_F", bound="Callable[..., Any]")

#: The parts (breaker names, or the names ``degrade`` was given) that fell back
#: while handling the current request, or None outside a request. The middleware
#: opens a fresh set per request (:func:`degraded_parts`); the set is shared (not
#: copied) with tasks and threads started from the request's context, so their
#: fallbacks count too.
DEGRADED: contextvars.ContextVar[set[str] | None] = contextvars.ContextVar("otelres_degraded", default=None)


class DegradedSet(set[str]):
    """The parts that fell back in one request; :attr:`chosen` holds those of them
    whose names the application chose (``degrade(..., name=...)``).
    """

    __slots__ = ("chosen",)

    def __init__(self) -> None:
        super().__init__()
        #: The names given to :func:`degrade` (never a breaker's name, unless chosen so).
        self.chosen: set[str] = set()


def note_degraded(part: str, *, chosen: bool = False) -> None:
    """Record that ``part`` fell back while handling the current request (no-op
    outside a request); ``chosen`` when the application chose that name itself.
    """
    parts = DEGRADED.get()
    if parts is not None:
        parts.add(part)
        if chosen and isinstance(parts, DegradedSet):
            parts.chosen.add(part)


class _DegradedParts:
    """The context manager :func:`degraded_parts` returns (a class, not a generator:
    it runs on every request, and this is the cheaper of the two).
    """

    __slots__ = ("_token", "parts")

    _token: contextvars.Token[set[str] | None]

    def __init__(self) -> None:
        self.parts = DegradedSet()

    def __enter__(self) -> DegradedSet:
        self._token = DEGRADED.set(self.parts)
        return self.parts

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        DEGRADED.reset(self._token)


def degraded_parts() -> _DegradedParts:
    """A fresh degraded set for one request, as a context manager: inside
    ``with degraded_parts() as parts:``, :func:`note_degraded` writes to ``parts``;
    on exit the previous set (None outside a request) is restored.
    """
    return _DegradedParts()


def _part(name: str | None, exc: Exception, fn: Callable[..., Any]) -> str:
    """The degraded part's name: the one given, else the error's breaker, else the function's."""
    if name is not None:
        return name
    breaker = getattr(exc, "breaker", None)
    if isinstance(breaker, str) and breaker:
        return breaker
    return str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", "degraded"))


def _report(part: str, exc: Exception, *, chosen: bool) -> None:
    """Note the part in the current response's ``X-Degraded`` (here, once: no listener
    notes it again) and tell the listeners.
    """
    note_degraded(part, chosen=chosen)
    if _events.listeners:
        reason = type(exc).__name__
        _events.emit(_events.Event(_events.FALLBACK, part, reason=reason))
        _events.emit(_events.Event(_events.DEGRADED, part, reason=reason))


def _dependency_failed(exc: BaseException) -> bool:
    """``degrade``'s default ``on``: the dependency failed, however it was reported."""
    return isinstance(exc, (CircuitOpenError, RetryError)) or is_dependency_error(exc)


def degrade(
    fallback: object,
    *,
    on: object = None,
    name: str | None = None,
) -> Callable[[_F], _F]:
    """Decorate a function (sync or async) to return ``fallback`` instead of raising
    one of the errors ``on`` matches.

    ``fallback`` is a value, or a callable taking the error (for an async function
    it may be async; a callable *value* must be wrapped: ``lambda _exc: value``).
    ``on`` is an exception class, a tuple of them, or a predicate on the error;
    by default the errors that say the dependency failed: an open circuit
    (:class:`~otelres.CircuitOpenError`), exhausted retries (the last error
    re-raised as it came, or :class:`~otelres.RetryError`), a dependency error
    on a call that was not retried (see :mod:`otelres._dependency`). A bug of
    the handler's own (``KeyError``, ``TypeError``) still propagates.
    The part is named ``name``, else by the error's breaker, else by the
    function's ``__qualname__``: it goes into the request's ``X-Degraded`` header
    (a ``name`` given here even when the middleware shows no details)
    and to the listeners as ``fallback`` and ``degraded`` events. Only :class:`Exception` is ever
    replaced: never a cancellation, ``KeyboardInterrupt`` or ``SystemExit``.
    """
    matches = _dependency_failed if on is None else as_exception_predicate("degrade.on", on)  # type: ignore[arg-type]
    if name is not None and (not isinstance(name, str) or not name):
        raise ConfigError("degrade.name", name, "a non-empty string or None")
    compute = callable(fallback)
    async_fallback = compute and inspect.iscoroutinefunction(fallback)

    def decorate(fn: _F) -> _F:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def adegraded(*args: Any, **kwargs: Any) -> Any:
                try:
                    return await fn(*args, **kwargs)
                except Exception as exc:
                    if not matches(exc):
                        raise
                    result = cast("Callable[[Exception], Any]", fallback)(exc) if compute else fallback
                    if inspect.isawaitable(result):
                        result = await result
                    _report(_part(name, exc, fn), exc, chosen=name is not None)
                    return result

            return cast("_F", adegraded)

        if async_fallback:
            raise ConfigError("degrade.fallback", fallback, "a value or a sync callable for a sync function")

        @functools.wraps(fn)
        def degraded(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                if not matches(exc):
                    raise
                result = cast("Callable[[Exception], Any]", fallback)(exc) if compute else fallback
                _report(_part(name, exc, fn), exc, chosen=name is not None)
                return result

        return cast("_F", degraded)

    return decorate
