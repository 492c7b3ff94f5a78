"""requests: a breaker and retries per destination around ``Session.request``.

``Session.request`` sits above ``Session.send``, where OpenTelemetry's own
requests instrumentation makes its CLIENT span, so every attempt gets its own
CLIENT span under the call's INTERNAL span, whichever was installed first; a
wrapper on ``HTTPAdapter.send`` (below that span) marks the retries with
``http.request.resend_count``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.instrumentation.utils import unwrap
from wrapt import wrap_function_wrapper

from ._common import call_inside, ensure_telemetry, marking_resend, should_wrap
from ._http import TARGETS

__all__ = ["RequestsInstrumentor"]


def _replayable(kwargs: Mapping[str, Any]) -> bool:
    """Bytes, text, forms and JSON can be sent again; generators and files cannot."""
    data = kwargs.get("data")
    if data is not None and not isinstance(data, (bytes, str, dict, list, tuple)):
        return False
    files = kwargs.get("files")
    if files:
        items = files.values() if isinstance(files, Mapping) else (f[1] for f in files)
        for item in items:
            content = item[1] if isinstance(item, tuple) else item
            # A file object, even a BytesIO, is read to its end by the first attempt.
            if not isinstance(content, (bytes, str)):
                return False
    return True


def _request(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if not should_wrap():
        return wrapped(*args, **kwargs)
    named = dict(zip(("method", "url", "params", "data", "headers"), args, strict=False)) | kwargs
    # The session's headers count too: requests merges them in later, when it prepares the request.
    headers = {**(getattr(instance, "headers", None) or {}), **(named.get("headers") or {})}
    plan = TARGETS.plan(str(named.get("url", "")), str(named.get("method", "")), headers, _replayable(named))
    if plan is None:
        return wrapped(*args, **kwargs)
    return call_inside(*plan, wrapped, args, kwargs)


class RequestsInstrumentor(BaseInstrumentor):  # type: ignore[misc] # untyped base
    """Breakers and retries for requests (``Session.request``)."""

    def instrumentation_dependencies(self) -> Collection[str]:
        """The requests versions this patches."""
        return ("requests >= 2.20",)

    def _instrument(self, **kwargs: Any) -> None:
        ensure_telemetry()
        wrap_function_wrapper("requests.sessions", "Session.request", _request)
        wrap_function_wrapper("requests.adapters", "HTTPAdapter.send", marking_resend)

    def _uninstrument(self, **kwargs: Any) -> None:
        import requests  # noqa: PLC0415

        unwrap(requests.sessions.Session, "request")
        unwrap(requests.adapters.HTTPAdapter, "send")
        TARGETS.clear()
