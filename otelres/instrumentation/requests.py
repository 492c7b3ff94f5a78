"""requests: a breaker and retries per destination around ``Session.request``.

``Session.request`` sits above ``Session.send``, where OpenTelemetry's own
requests instrumentation makes its CLIENT span, so every attempt gets its own
CLIENT span under the call's INTERNAL span, whichever was installed first; a
wrapper on ``HTTPAdapter.send`` (below that span) marks the retries with
``http.request.resend_count``.

A call rejected by an open circuit raises :data:`CircuitOpenError`, an
:class:`otelres.CircuitOpenError` that is also
``requests.exceptions.ConnectionError``: ``except requests.RequestException``
catches it as it catches an unreachable server.

Not retried: a POST or PATCH without an ``Idempotency-Key`` (a ``None`` value
removes a session's key, as requests does), and a body that a first attempt
consumes: a generator or a file as ``data``, a form one of whose values is not
plain (str, bytes, a number, None, or a list or tuple of them), or a file
object in ``files``.

Under a request deadline (:func:`otelres.deadline`), each attempt's ``timeout``
is shrunk to the time left, and a call with no time left is not made: it raises
``requests.exceptions.Timeout``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from otelres._deadline import caller_deadline_binds, mark_caller_deadline, time_left
from otelres._registry import default_registry
from otelres._resilience import run

from ._common import Patches, ensure_telemetry, inside, should_wrap
from ._http import (
    DEADLINE_EXCEEDED,
    HTTP,
    IDEMPOTENT_METHODS,
    cap_timeout,
    cut_by_deadline,
    marking_resend,
    retry_reason,
    url_breaker_name,
)
from ._rejections import module_getattr, with_rejection

__all__ = ["RequestsInstrumentor"]

#: HTTP's profile; a rejection raises :data:`CircuitOpenError`.
_PROFILE = with_rejection(HTTP, "requests")
_patches = Patches()


#: ``CircuitOpenError``: what a requests call rejected by an open circuit raises, an
#: :class:`otelres.CircuitOpenError` that is also ``requests.exceptions.ConnectionError``.
__getattr__ = module_getattr("requests", __name__)


#: Form values requests encodes the same way on every attempt.
_PLAIN = (str, bytes, int, float, type(None))


def _plain(value: object) -> bool:
    """A form value that a second encoding reads the same: a plain value, or a
    list or tuple of them (requests encodes each). Anything else iterable (a
    generator, a file, an ``io.StringIO``) is read to its end by the first attempt.
    """
    if isinstance(value, _PLAIN):
        return True
    return isinstance(value, (list, tuple)) and all(isinstance(item, _PLAIN) for item in value)


def _replayable_data(data: object) -> bool:
    """Bytes and text, and forms (a mapping, or a list or tuple of pairs) whose
    every value is plain; a generator or a file is a stream, read once.
    """
    if isinstance(data, _PLAIN):
        return True
    if isinstance(data, Mapping):
        return all(_plain(value) for value in data.values())
    if isinstance(data, (list, tuple)):
        return all(isinstance(pair, (list, tuple)) and len(pair) == 2 and _plain(pair[1]) for pair in data)
    return False


def _replayable(data: object, files: Any) -> bool:
    """Whether every attempt sends the whole body: all of ``data`` is plain (see
    :func:`_replayable_data`) and every file's content is bytes or text; ``json``
    is encoded afresh by each attempt.
    """
    if not _replayable_data(data):
        return False
    if files:
        items = files.values() if isinstance(files, Mapping) else (f[1] for f in files)
        for item in items:
            content = item[1] if isinstance(item, tuple) else item
            # A file object, even a BytesIO, is read to its end by the first attempt.
            if not isinstance(content, (bytes, str)):
                return False
    return True


def _sent_headers(*sources: Mapping[Any, Any] | None) -> dict[str, Any]:
    """The headers requests sends: the session's, then the request's, merged with
    names in any case; a None value removes the name (requests' ``merge_setting``),
    so ``headers={"Idempotency-Key": None}`` drops a session's key.
    """
    merged: dict[str, Any] = {}
    for source in sources:
        for name, value in (source or {}).items():
            merged[(name.decode("latin-1") if isinstance(name, bytes) else str(name)).lower()] = value
    return {name: value for name, value in merged.items() if value is not None}


#: The position of ``timeout`` among ``Session.request``'s arguments (after ``self``).
_TIMEOUT_POSITION = 8


def _capped(timeout: Any, left: float) -> Any:
    """``timeout`` (seconds, None, or a (connect, read) pair) shrunk to ``left`` seconds."""
    if isinstance(timeout, tuple) and len(timeout) == 2:
        return (cap_timeout(timeout[0], left), cap_timeout(timeout[1], left))
    return cap_timeout(timeout, left)


def _cut(timeout: Any, left: float, *, connect: bool) -> bool:
    """Whether ``left`` seconds cut the timeout that fired (the connect or the read
    part of ``timeout``: seconds, None, or a pair) short.
    """
    if isinstance(timeout, tuple) and len(timeout) == 2:
        timeout = timeout[0] if connect else timeout[1]
    return cut_by_deadline(timeout, left)


def _deadline_exceeded() -> Exception:
    import requests  # noqa: PLC0415 - imported by whoever called Session.request

    error = requests.exceptions.Timeout(DEADLINE_EXCEEDED)
    if caller_deadline_binds():
        mark_caller_deadline(error)  # no time left under a caller's own deadline
    return error


def _within_deadline(wrapped: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``wrapped``, made to cap each attempt's timeout to the time left when it starts."""
    positional = len(args) > _TIMEOUT_POSITION
    timeout = args[_TIMEOUT_POSITION] if positional else kwargs.get("timeout")

    def attempt(*call_args: Any, **call_kwargs: Any) -> Any:
        left = time_left()
        if left is None:
            return wrapped(*call_args, **call_kwargs)
        if left <= 0:
            raise _deadline_exceeded()
        capped = _capped(timeout, left)
        if positional:
            call_args = (*call_args[:_TIMEOUT_POSITION], capped, *call_args[_TIMEOUT_POSITION + 1 :])
        else:
            call_kwargs["timeout"] = capped
        if not caller_deadline_binds():
            # The service's own deadline (the application's, the operator's): a dependency
            # too slow for it is a failing dependency.
            return wrapped(*call_args, **call_kwargs)
        import requests  # noqa: PLC0415 - imported by whoever called Session.request

        try:
            return wrapped(*call_args, **call_kwargs)
        except requests.Timeout as exc:
            if _cut(timeout, left, connect=isinstance(exc, requests.ConnectTimeout)):
                mark_caller_deadline(exc)  # the caller's deadline, not the attempt's own timeout, ran out
            raise

    return attempt


#: ``Session.request``'s arguments up to ``files``, in order (after ``self``).
_ARGUMENTS = ("method", "url", "params", "data", "headers", "cookies", "files")


def _request(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if not should_wrap():
        return wrapped(*args, **kwargs)
    if len(args) == 2:
        # Session.get, .post and kin: request(method, url, **kwargs).
        method, url = args
        named = kwargs
    else:
        named = dict(zip(_ARGUMENTS, args, strict=False)) | kwargs
        method, url = named.get("method", ""), named.get("url", "")
    name = url_breaker_name(str(url))
    if name is None:
        return wrapped(*args, **kwargs)
    replayable = ("data" not in named and "files" not in named) or _replayable(
        named.get("data"), named.get("files")
    )
    guard = default_registry().guard(name, _PROFILE)
    method = str(method)
    reason = None
    if not (replayable and method in IDEMPOTENT_METHODS):
        # The headers matter (an Idempotency-Key): the session's count too, which
        # requests merges in later, when it prepares the request.
        headers = _sent_headers(getattr(instance, "headers", None), named.get("headers"))
        reason = retry_reason(guard, method, headers, replayable)
    left = time_left()
    if left is not None:
        if left <= 0:
            # No attempt fits: the destination is not contacted, so its breaker is not told.
            raise _deadline_exceeded()
        wrapped = _within_deadline(wrapped, args, kwargs)
    # call_inside(), without its calls: patched calls below pass through.
    token = inside.set(True)
    try:
        return run(guard, wrapped, args, kwargs, reason)
    finally:
        inside.reset(token)


class RequestsInstrumentor(BaseInstrumentor):  # type: ignore[misc] # untyped base
    """Breakers and retries for requests (``Session.request``)."""

    def instrumentation_dependencies(self) -> Collection[str]:
        """The requests versions this patches."""
        return ("requests >= 2.20",)

    def _instrument(self, **kwargs: Any) -> None:
        ensure_telemetry()
        _patches.wrap_named("requests.sessions", "Session.request", _request)
        _patches.wrap_named("requests.adapters", "HTTPAdapter.send", marking_resend)

    def _uninstrument(self, **kwargs: Any) -> None:
        _patches.restore()
