"""WSGI middleware: health probes, a per-request deadline, the fail-fast 503 and load shedding.

Wrap the WSGI app (Flask's ``app.wsgi_app``, Django's ``application``)::

    app.wsgi_app = ResilienceMiddleware(app.wsgi_app, deadline=5.0)

It composes with OpenTelemetry's ``OpenTelemetryMiddleware`` for server spans.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from otelres._clock import MONOTONIC
from otelres._deadline import deadline as _deadline
from otelres._degrade import degraded_parts
from otelres._errors import CircuitOpenError
from otelres._limit import Permit
from otelres.server._core import Middleware, Response, log_rejected, showing_details, status_line

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from types import TracebackType

    _ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
    StartResponse = Callable[..., Callable[[bytes], object]]
    WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

__all__ = ["ResilienceMiddleware"]


class ResilienceMiddleware(Middleware["WSGIApp", "dict[str, Any]"]):
    """WSGI middleware: ``GET live_path`` and ``GET ready_path`` answer the probes;
    every other request runs the app under a deadline (the least of ``deadline``,
    the ``deadline_header`` value and ``max_deadline``), and an uncaught
    :class:`~otelres.CircuitOpenError` becomes a 503 with ``Retry-After``.

    ``deadline_header`` is off (None) by default: name it (``"X-Request-Timeout"``)
    only behind a proxy that sets or strips that header. ``show_details`` is off
    by default: the 503 body is ``{"error": "dependency unavailable"}``,
    ``ready_path`` answers the overall status only, and ``X-Degraded`` carries the
    names given to ``otelres.degrade(..., name=...)`` or ``1``; with
    ``show_details=True`` (a service on an internal network) they name breakers,
    checks and errors.

    ``limit`` (None by default) caps the requests in flight: an int (a fixed limit), an
    :class:`otelres.FixedLimit` or an :class:`otelres.AdaptiveLimit`. A request over it is
    answered at once with 503, ``Retry-After: 1`` and ``{"error": "overloaded"}``; the probes
    are never shed. ``critical(environ)``, asked only when the limit is taken, lets a request
    use the headroom above it. A request holds its place until the server closes the body it
    returned (a streamed body, until its last chunk is sent): keep the limit below the
    server's threads, or requests wait for a thread unseen by the limit.
    """

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """Answer a probe, shed the request, or run the app under the request's deadline."""
        rules = self.rules
        probe = rules.probe(environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", ""))
        if probe == "live":
            return _answer(rules.live_response(), start_response)
        if probe == "ready":
            report = rules.readiness.evaluate_sync()
            return _answer(rules.ready_response(report, environ.get("QUERY_STRING", "")), start_response)
        shedding = self.shedding
        if shedding is None:
            return self._serve(environ, start_response, None)
        admitted = shedding.admit(environ)
        if not isinstance(admitted, Permit):
            return _answer(admitted, start_response)
        try:
            return self._serve(environ, start_response, admitted)
        except BaseException:
            admitted.release(measured=False)
            raise

    def _serve(
        self, environ: dict[str, Any], start_response: StartResponse, permit: Permit | None
    ) -> Iterable[bytes]:
        """Run the app under the request's deadline; its body holds ``permit`` until closed."""
        rules = self.rules
        key = rules.environ_key
        seconds, caller = rules.request_deadline(environ.get(key) if key is not None else None)
        written = False
        called = False

        def write_started(write: Callable[[bytes], object]) -> Callable[[bytes], object]:
            def write_body(data: bytes) -> object:
                nonlocal written
                written = True
                return write(data)

            return write_body

        with degraded_parts() as degraded, showing_details(rules.show_details):

            def start(status: str, headers: list[tuple[str, str]], exc_info: _ExcInfo | None = None) -> Any:
                nonlocal called
                called = True
                extra = rules.degraded_header(degraded)
                if extra is not None:
                    headers = [*headers, extra]
                return write_started(start_response(status, headers, exc_info))

            try:
                if seconds is None:
                    result = self.app(environ, start)
                    return result if permit is None else _Body(result, None, caller=caller, permit=permit)
                with _deadline(seconds, caller=caller) as limit:
                    result = self.app(environ, start)
                return _Body(result, limit, caller=caller, permit=permit)
            except CircuitOpenError as error:
                if written:
                    raise
                if permit is not None:  # a fast 503 says nothing of the service's own latency
                    permit.release(measured=False)
                log_rejected(error)
                return _answer(
                    rules.circuit_open_response(error), start_response, sys.exc_info() if called else None
                )


def _answer(response: Response, start_response: StartResponse, exc_info: Any = None) -> list[bytes]:
    status, headers, body = response
    start_response(status_line(status), headers, exc_info)
    return [body]


class _Body:
    """The app's body, iterated under the request's deadline (a streamed body makes
    calls too) when there is one; ``close()`` is passed on as WSGI requires. The
    request's place under the limit is given back when the body has been sent in full
    (measured), or at ``close()``, or, for a body a server or test client drops without
    closing it, when it is collected (unmeasured): a place lost for good would shed every
    request once ``limit`` of them were lost.
    """

    def __init__(
        self, result: Iterable[bytes], limit: float | None, *, caller: bool, permit: Permit | None = None
    ) -> None:
        self._result = result
        self._limit = limit
        self._caller = caller
        self._permit = permit
        self._complete = False

    def __iter__(self) -> Iterator[bytes]:
        limit = self._limit
        if limit is None:
            yield from self._result
            self._done()
            return
        chunks = iter(self._result)
        while True:
            with _deadline(max(0.0, limit - MONOTONIC.monotonic()), caller=self._caller):
                chunk = next(chunks, None)
            if chunk is None:
                self._done()
                return
            yield chunk

    def _done(self) -> None:
        """Sent in full: the place goes back now, measured (a second release does nothing)."""
        self._complete = True
        if self._permit is not None:
            self._permit.release(measured=True)

    def close(self) -> None:
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        finally:
            if self._permit is not None:
                self._permit.release(measured=self._complete)

    def __del__(self) -> None:
        permit = self._permit
        if permit is not None and not permit.released:
            permit.release(measured=False)
