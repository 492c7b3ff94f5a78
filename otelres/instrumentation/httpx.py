"""httpx: a breaker and retries per destination around ``Client.send`` and
``AsyncClient.send``, over one flow.

``send`` sits above the transports, where OpenTelemetry's httpx instrumentation
makes its CLIENT span; httpcore's connection pool, below that span, is where
retries are marked with ``http.request.resend_count``. A request whose body is
a stream (a generator, a file) is not replayable and is never retried.

A call rejected by an open circuit raises :data:`CircuitOpenError`, an
:class:`otelres.CircuitOpenError` that is also ``httpx.ConnectError`` (with
its ``request``): ``except httpx.TransportError`` catches it as it catches an
unreachable server.

Under a request deadline (:func:`otelres.deadline`), each attempt's timeouts
(``request.extensions["timeout"]``: connect, read, write, pool) are shrunk to
the time left, and a call with no time left is not made: it raises
``httpx.TimeoutException``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from otelres._deadline import caller_deadline_binds, mark_caller_deadline, time_left
from otelres._registry import default_registry
from otelres._resilience import arun, run

from ._common import Patches, ensure_telemetry, inside, should_wrap
from ._http import (
    DEADLINE_EXCEEDED,
    HTTP,
    IDEMPOTENT_METHODS,
    cap_timeout,
    cut_by_deadline,
    host_breaker_name,
    marking_resend,
    retry_reason,
)
from ._rejections import module_getattr, rejection_class, with_rejection

if TYPE_CHECKING:
    from collections.abc import Collection


__all__ = ["HttpxInstrumentor"]

#: HTTP's profile; a rejection raises :data:`CircuitOpenError`.
_PROFILE = with_rejection(HTTP, "httpx")
_patches = Patches()


#: ``CircuitOpenError``: what an httpx call rejected by an open circuit raises, an
#: :class:`otelres.CircuitOpenError` that is also ``httpx.ConnectError``.
__getattr__ = module_getattr("httpx", __name__)


def _plan(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, str | None] | None:
    """The guard and the no-retry reason for a send, or None to pass it through."""
    if not should_wrap():
        return None
    import httpx  # noqa: PLC0415

    request = args[0] if args else kwargs.get("request")
    # type() first: not a call, where isinstance() is one (a subclass still gets there).
    if type(request) is not httpx.Request and not isinstance(request, httpx.Request):
        return None
    url = request.url
    # Parsed already: no string to build and split again.
    name = host_breaker_name(url.scheme, url.raw_host, url.port)
    if name is None:
        return None
    guard = default_registry().guard(name, _PROFILE)
    stream = request.stream
    replayable = type(stream) is httpx.ByteStream or isinstance(stream, httpx.ByteStream)
    method = request.method
    if replayable and method in IDEMPOTENT_METHODS:
        return guard, None
    return guard, retry_reason(guard, method, request.headers, replayable)


def _request_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return args[0] if args else kwargs.get("request")


def _carry_request(rejected: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Give a rejection the request it rejected, as httpx's own ``ConnectError`` has it."""
    rejected.request = _request_of(args, kwargs)


def _deadline_exceeded(request: Any) -> Exception:
    import httpx  # noqa: PLC0415

    error = httpx.TimeoutException(DEADLINE_EXCEEDED, request=request)
    if caller_deadline_binds():
        mark_caller_deadline(error)  # no time left under a caller's own deadline
    return error


class _Capping:
    """Caps the timeouts of one request to the time left, attempt by attempt.

    The request object is shared by every attempt (and by the redirects it
    leads to, which copy its extensions); its own extensions come back after
    the call.
    """

    __slots__ = ("extensions", "request", "timeouts")

    def __init__(self, instance: Any, request: Any) -> None:
        self.request = request
        self.extensions: dict[str, Any] = request.extensions
        found = self.extensions.get("timeout")
        # Absent, ``send`` would use the client's timeout: the same starting point.
        self.timeouts: dict[str, Any] = dict(found if isinstance(found, dict) else instance.timeout.as_dict())

    def apply(self) -> float | None:
        """Before an attempt: cap its timeouts, or raise if no time is left; the time
        left when the deadline in force is an untrusted caller's (see :meth:`cut`), else None.
        """
        left = time_left()
        if left is None:
            return None
        if left <= 0:
            raise _deadline_exceeded(self.request)
        capped = {key: cap_timeout(value, left) for key, value in self.timeouts.items()}
        self.request.extensions = {**self.extensions, "timeout": capped}
        return left if caller_deadline_binds() else None

    def cut(self, exc: BaseException, left: float) -> bool:
        """Whether the caller's deadline (``left`` seconds) cut the timeout that fired short."""
        kind = {
            "ConnectTimeout": "connect",
            "ReadTimeout": "read",
            "WriteTimeout": "write",
            "PoolTimeout": "pool",
        }
        key = next((kind[cls.__name__] for cls in type(exc).__mro__ if cls.__name__ in kind), None)
        values = [self.timeouts.get(key)] if key is not None else list(self.timeouts.values())
        return any(cut_by_deadline(value, left) for value in values)

    def restore(self) -> None:
        """After the call: the request's own extensions again."""
        self.request.extensions = self.extensions


def _send(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    plan = _plan(args, kwargs)
    if plan is None:
        return wrapped(*args, **kwargs)
    guard, reason = plan
    # call_inside(), without its calls: patched calls below pass through.
    token = inside.set(True)
    try:
        if time_left() is None:
            return run(guard, wrapped, args, kwargs, reason)
        return _send_within_deadline(plan, wrapped, instance, args, kwargs)
    except rejection_class("httpx") as rejected:
        _carry_request(rejected, args, kwargs)
        raise
    finally:
        inside.reset(token)


def _send_within_deadline(
    plan: tuple[Any, str | None], wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    request = _request_of(args, kwargs)
    left = time_left()
    if left is not None and left <= 0:
        # No attempt fits: the destination is not contacted, so its breaker is not told.
        raise _deadline_exceeded(request)
    capping = _Capping(instance, request)
    import httpx  # noqa: PLC0415 - imported by whoever called send

    def attempt(*call_args: Any, **call_kwargs: Any) -> Any:
        left = capping.apply()
        if left is None:
            return wrapped(*call_args, **call_kwargs)
        try:
            return wrapped(*call_args, **call_kwargs)
        except httpx.TimeoutException as exc:
            if capping.cut(exc, left):
                mark_caller_deadline(exc)  # the caller's deadline, not the request's own timeout, ran out
            raise

    try:
        return run(plan[0], attempt, args, kwargs, plan[1])
    finally:
        capping.restore()


async def _asend(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    plan = _plan(args, kwargs)
    if plan is None:
        return await wrapped(*args, **kwargs)
    guard, reason = plan
    # acall_inside(), without its calls: patched calls below pass through. One coroutine
    # fewer: every await below resumes each coroutine on the way.
    token = inside.set(True)
    try:
        if time_left() is None:
            return await arun(guard, wrapped, args, kwargs, reason)
        return await _asend_within_deadline(plan, wrapped, instance, args, kwargs)
    except rejection_class("httpx") as rejected:
        _carry_request(rejected, args, kwargs)
        raise
    finally:
        inside.reset(token)


async def _asend_within_deadline(
    plan: tuple[Any, str | None], wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    request = _request_of(args, kwargs)
    left = time_left()
    if left is not None and left <= 0:
        raise _deadline_exceeded(request)
    capping = _Capping(instance, request)
    import httpx  # noqa: PLC0415 - imported by whoever called send

    async def attempt(*call_args: Any, **call_kwargs: Any) -> Any:
        left = capping.apply()
        if left is None:
            return await wrapped(*call_args, **call_kwargs)
        try:
            return await wrapped(*call_args, **call_kwargs)
        except httpx.TimeoutException as exc:
            if capping.cut(exc, left):
                mark_caller_deadline(exc)  # the caller's deadline, not the request's own timeout, ran out
            raise

    try:
        return await arun(plan[0], attempt, args, kwargs, plan[1])
    finally:
        capping.restore()


class HttpxInstrumentor(BaseInstrumentor):  # type: ignore[misc] # untyped base
    """Breakers and retries for httpx (``Client.send``, ``AsyncClient.send``)."""

    def instrumentation_dependencies(self) -> Collection[str]:
        """The httpx versions this patches."""
        return ("httpx >= 0.23",)

    def _instrument(self, **kwargs: Any) -> None:
        ensure_telemetry()
        _patches.wrap_named("httpx", "Client.send", _send)
        _patches.wrap_named("httpx", "AsyncClient.send", _asend)
        # The coroutine is created (and the attempt number read) when the
        # transport calls the pool, under the transport's CLIENT span.
        _patches.wrap_named("httpcore", "ConnectionPool.handle_request", marking_resend)
        _patches.wrap_named("httpcore", "AsyncConnectionPool.handle_async_request", marking_resend)

    def _uninstrument(self, **kwargs: Any) -> None:
        _patches.restore()
