"""httpx: a breaker and retries per destination around ``Client.send`` and
``AsyncClient.send``, over one flow.

``send`` sits above the transports, where OpenTelemetry's httpx instrumentation
makes its CLIENT span; httpcore's connection pool, below that span, is where
retries are marked with ``http.request.resend_count``. A request whose body is
a stream (a generator, a file) is not replayable and is never retried.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.instrumentation.utils import unwrap
from wrapt import wrap_function_wrapper

from ._common import acall_inside, call_inside, ensure_telemetry, marking_resend, should_wrap
from ._http import TARGETS

if TYPE_CHECKING:
    from collections.abc import Collection

__all__ = ["HttpxInstrumentor"]


def _plan(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, str | None] | None:
    """The Resilience and the no-retry reason for a send, or None to pass it through."""
    if not should_wrap():
        return None
    import httpx  # noqa: PLC0415

    request = args[0] if args else kwargs.get("request")
    if not isinstance(request, httpx.Request):
        return None
    replayable = isinstance(request.stream, httpx.ByteStream)
    return TARGETS.plan(str(request.url), request.method, request.headers, replayable)


def _send(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    plan = _plan(args, kwargs)
    if plan is None:
        return wrapped(*args, **kwargs)
    return call_inside(*plan, wrapped, args, kwargs)


async def _asend(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    plan = _plan(args, kwargs)
    if plan is None:
        return await wrapped(*args, **kwargs)
    return await acall_inside(*plan, wrapped, args, kwargs)


class HttpxInstrumentor(BaseInstrumentor):  # type: ignore[misc] # untyped base
    """Breakers and retries for httpx (``Client.send``, ``AsyncClient.send``)."""

    def instrumentation_dependencies(self) -> Collection[str]:
        """The httpx versions this patches."""
        return ("httpx >= 0.23",)

    def _instrument(self, **kwargs: Any) -> None:
        ensure_telemetry()
        wrap_function_wrapper("httpx", "Client.send", _send)
        wrap_function_wrapper("httpx", "AsyncClient.send", _asend)
        # The coroutine is created (and the attempt number read) when the
        # transport calls the pool, under the transport's CLIENT span.
        wrap_function_wrapper("httpcore", "ConnectionPool.handle_request", marking_resend)
        wrap_function_wrapper("httpcore", "AsyncConnectionPool.handle_async_request", marking_resend)

    def _uninstrument(self, **kwargs: Any) -> None:
        import httpcore  # noqa: PLC0415
        import httpx  # noqa: PLC0415

        unwrap(httpx.Client, "send")
        unwrap(httpx.AsyncClient, "send")
        unwrap(httpcore.ConnectionPool, "handle_request")
        unwrap(httpcore.AsyncConnectionPool, "handle_async_request")
        TARGETS.clear()
