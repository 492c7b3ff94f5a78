"""ASGI middleware: health probes, a per-request deadline, the fail-fast 503 and load shedding.

Pure ASGI (not Starlette's ``BaseHTTPMiddleware``, which runs the app in another
task and drops context variables): the deadline is set in the request's own task
context, so every call the handler makes, and every task it starts, sees it.
``lifespan`` and ``websocket`` scopes pass through untouched::

    app = ResilienceMiddleware(app, deadline=5.0)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from otelres._deadline import deadline as _deadline
from otelres._degrade import degraded_parts
from otelres._errors import CircuitOpenError
from otelres._limit import Permit
from otelres.server._core import Middleware, Response, log_rejected, showing_details

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, MutableMapping

    Scope = MutableMapping[str, Any]
    Message = MutableMapping[str, Any]
    Receive = Callable[[], Awaitable[Message]]
    Send = Callable[[Message], Awaitable[None]]
    ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

__all__ = ["ResilienceMiddleware"]


class ResilienceMiddleware(Middleware["ASGIApp", "Scope"]):
    """ASGI middleware: ``GET live_path`` and ``GET ready_path`` answer the probes;
    every other HTTP request runs the app under a deadline (the least of
    ``deadline``, the ``deadline_header`` value and ``max_deadline``), and an
    uncaught :class:`~otelres.CircuitOpenError` becomes a 503 with ``Retry-After``.

    ``deadline_header`` is off (None) by default: name it (``"X-Request-Timeout"``)
    only behind a proxy that sets or strips that header. ``show_details`` is off
    by default: the 503 body is ``{"error": "dependency unavailable"}``,
    ``ready_path`` answers the overall status only, and ``x-degraded`` carries the
    names given to ``otelres.degrade(..., name=...)`` or ``1``; with
    ``show_details=True`` (a service on an internal network) they name breakers,
    checks and errors.

    ``limit`` (None by default) caps the HTTP requests in flight: an int (a fixed limit), an
    :class:`otelres.FixedLimit` or an :class:`otelres.AdaptiveLimit`. A request over it is
    answered at once with 503, ``retry-after: 1`` and ``{"error": "overloaded"}``; the probes
    are never shed. ``critical(scope)``, asked only when the limit is taken, lets a request use
    the headroom above it. A request holds its place until the app returns (or raises: a task
    cancelled because its client went away releases it too).
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer a probe, shed the request, or run the app under the request's deadline."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rules = self.rules
        probe = rules.probe(scope.get("method", ""), scope.get("path", ""))
        if probe == "live":
            await _answer(rules.live_response(), send)
            return
        if probe == "ready":
            report = await rules.readiness.evaluate()
            query = scope.get("query_string", b"").decode("latin-1")
            await _answer(rules.ready_response(report, query), send)
            return
        shedding = self.shedding
        if shedding is None:
            await self._serve(scope, receive, send, None)
            return
        admitted = shedding.admit(scope)
        if not isinstance(admitted, Permit):
            await _answer(admitted, send)
            return
        complete = False
        try:
            complete = await self._serve(scope, receive, send, admitted)
        finally:
            admitted.release(measured=complete)

    async def _serve(self, scope: Scope, receive: Receive, send: Send, permit: Permit | None) -> bool:
        """Run the app under the request's deadline: whether the response was sent in full."""
        rules = self.rules
        header = None
        key = rules.asgi_key
        if key is not None:
            for name, value in scope.get("headers", ()):
                if name.lower() == key:
                    header = value.decode("latin-1")
                    break
        seconds, caller = rules.request_deadline(header)
        started = False
        complete = False

        with degraded_parts() as degraded, showing_details(rules.show_details):

            async def send_wrapper(message: Message) -> None:
                nonlocal started, complete
                kind = message["type"]
                if kind == "http.response.start":
                    started = True
                    extra = rules.degraded_header(degraded)
                    if extra is not None:  # plain ASCII (header_value)
                        pair = (extra[0].lower().encode("ascii"), extra[1].encode("ascii"))
                        message = {**message, "headers": [*message.get("headers", ()), pair]}
                await send(message)
                if kind == "http.response.body" and not message.get("more_body", False):
                    complete = True

            try:
                if seconds is None:
                    await self.app(scope, receive, send_wrapper)
                else:
                    with _deadline(seconds, caller=caller):
                        await self.app(scope, receive, send_wrapper)
            except CircuitOpenError as error:
                if started:
                    raise
                if permit is not None:  # a fast 503 says nothing of the service's own latency
                    permit.release(measured=False)
                log_rejected(error)
                await _answer(rules.circuit_open_response(error), send)
                return False
            return complete


async def _answer(response: Response, send: Send) -> None:
    status, headers, body = response
    raw = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
