"""Flask, Django and Starlette (FastAPI through it): the 503 for an open circuit.

These frameworks catch a view's exception and answer 500 before an outer
WSGI/ASGI middleware sees it, so the middleware's mapping of an uncaught
:class:`~otelres.CircuitOpenError` to a 503 with ``Retry-After`` would not
hold in their default configuration. This instrumentor makes each framework
give the same answer (:func:`otelres.server._core.circuit_open_response`)
itself, with the middleware's one warning line and no ERROR traceback:

- Flask: ``Flask.handle_user_exception`` answers a ``CircuitOpenError``
  unless the app (or the request's blueprint) registered an error handler for
  it or for a class between it and ``Exception``;
- Django: ``response_for_exception`` answers it, after every middleware's
  ``process_exception`` (one that returns a response still wins), without
  Django's ERROR line for a 5xx response;
- Starlette and FastAPI: every ``ExceptionMiddleware`` gets a handler for it
  unless the app passed its own for it or for a class between it and
  ``Exception``.

A handler for ``Exception`` itself (Flask's ``errorhandler(Exception)``,
Starlette's 500 handler, Django's ``handler500``) is a catch-all for errors,
not a handler for this one: the 503 wins over it, as the outer middleware's
would. A framework is patched only when installed, and only once its module is
imported (a post-import hook), so ``instrument()`` imports none of them.

The body follows the ``show_details`` of the ``ResilienceMiddleware`` handling
the request (it sets :func:`~otelres.server._core.details_shown` for the
request's context, inside or outside the framework's own middleware): it names
the dependency only under a middleware built with ``show_details=True``; without
a middleware around the request, it never does.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import threading
from typing import TYPE_CHECKING, Any

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from wrapt import register_post_import_hook

from otelres import _fork
from otelres._errors import CircuitOpenError, OtelresError
from otelres._patches import Patches
from otelres.server._core import circuit_open_response, details_shown, log_rejected

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterable, Mapping

__all__ = ["FrameworksInstrumentor"]

#: Classes whose handlers are catch-alls: they do not count as the app's own handler.
_GENERIC = (Exception, BaseException, object)


def _handles(registered: Iterable[object], error: type[BaseException]) -> bool:
    """Whether one of the registered keys is the error's class or a base of it short of Exception."""
    keys = set(registered)
    for cls in error.__mro__:
        if cls in _GENERIC:
            return False
        if cls in keys:
            return True
    return False


# --- Flask --------------------------------------------------------------------------------------


def _flask_handle_user_exception(
    wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    error = args[0] if args else kwargs.get("e")
    if not isinstance(error, CircuitOpenError):
        return wrapped(*args, **kwargs)
    request = importlib.import_module("flask").request
    for name in (*request.blueprints, None):
        if _handles(instance.error_handler_spec[name][None], type(error)):
            return wrapped(*args, **kwargs)  # the app's own handler
    log_rejected(error)
    status, headers, body = circuit_open_response(error, show_details=details_shown())
    return instance.response_class(body, status=status, headers=headers)


# --- Django -------------------------------------------------------------------------------------


def _django_response_for_exception(
    wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    error = args[1] if len(args) > 1 else kwargs.get("exc")
    if not isinstance(error, CircuitOpenError):
        return wrapped(*args, **kwargs)
    log_rejected(error)
    status, headers, body = circuit_open_response(error, show_details=details_shown())
    response = importlib.import_module("django.http").HttpResponse(body, status=status, headers=dict(headers))
    # Django logs every 5xx response at ERROR ("Service Unavailable: /path"); the warning above is
    # this one's line, as with the middleware. log_response skips a response marked as logged.
    response._has_been_logged = True
    return response


# --- Starlette and FastAPI ----------------------------------------------------------------------


async def _starlette_handler(conn: Any, exc: Exception) -> Any:
    # A stack built while instrumented keeps this handler: after uninstrument it steps aside.
    if not _state.active or conn.scope["type"] != "http" or not isinstance(exc, CircuitOpenError):
        raise exc
    log_rejected(exc)
    status, headers, body = circuit_open_response(exc, show_details=details_shown())
    response_class = importlib.import_module("starlette.responses").Response
    return response_class(body, status_code=status, headers=dict(headers))


def _app_handler(handlers: Mapping[Any, Any], error: BaseException) -> Any:
    """The app's handler for a class a rejection also is (a patched client's rejection is
    ``httpx.ConnectError`` or ``requests.ConnectionError`` too) short of ``Exception``, or None.

    Starlette walks the error's MRO, where otelres's handler for ``CircuitOpenError``
    comes first; Flask lets the app's handler for ``requests.RequestException`` answer.
    This keeps the two alike: the app's own except-style handler wins.
    """
    for cls in type(error).__mro__:
        if cls in _GENERIC:
            return None
        if issubclass(cls, OtelresError):
            continue
        found = handlers.get(cls)
        if found is not None:
            return found
    return None


def _starlette_exception_middleware_init(
    wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    wrapped(*args, **kwargs)
    handlers = args[1] if len(args) > 1 else kwargs.get("handlers")
    if _handles(handlers or (), CircuitOpenError):
        return
    registered: Mapping[Any, Any] = getattr(instance, "_exception_handlers", {})

    async def handler(conn: Any, exc: Exception) -> Any:
        own = _app_handler(registered, exc)
        if own is None:
            return await _starlette_handler(conn, exc)
        answer = own(conn, exc)
        return await answer if inspect.isawaitable(answer) else answer

    instance.add_exception_handler(CircuitOpenError, handler)


# --- the instrumentor ---------------------------------------------------------------------------

#: framework -> (the module whose import triggers the patch, the attribute it wraps there, the wrapper)
_FRAMEWORKS: dict[str, tuple[str, str, Callable[..., Any]]] = {
    "flask": ("flask.app", "Flask.handle_user_exception", _flask_handle_user_exception),
    "django": ("django.core.handlers.exception", "response_for_exception", _django_response_for_exception),
    "starlette": (
        "starlette.middleware.exceptions",
        "ExceptionMiddleware.__init__",
        _starlette_exception_middleware_init,
    ),
}


class _State:
    def __init__(self) -> None:
        # Reentrant: a hook registered for a module already imported runs at once, inside instrument.
        self.lock = threading.RLock()
        _fork.renew(self, "lock")
        self.active = False
        #: What instrument put on, taken off by uninstrument (a framework's wrapper goes on once).
        self.patches = Patches()
        self.hooked: set[str] = set()


_state = _State()


def _hook(framework: str) -> Callable[[object], None]:
    def on_import(module: object) -> None:
        with _state.lock:
            if _state.active:
                _state.patches.wrap_named(*_FRAMEWORKS[framework])

    return on_import


class FrameworksInstrumentor(BaseInstrumentor):  # type: ignore[misc] # untyped base
    """The 503 mapping inside Flask, Django and Starlette (FastAPI), for those installed."""

    def instrumentation_dependencies(self) -> Collection[str]:
        """None required: each framework is patched only if installed."""
        return ()

    def _instrument(self, **kwargs: Any) -> None:
        with _state.lock:
            _state.active = True
            for framework, (module, _, _) in _FRAMEWORKS.items():
                if importlib.util.find_spec(framework) is None:
                    continue
                if framework in _state.hooked:
                    # The hook stays registered (wrapt cannot remove one): it ran already
                    # if the module is imported, so patch here.
                    if module in sys.modules:
                        _hook(framework)(None)
                    continue
                _state.hooked.add(framework)
                register_post_import_hook(_hook(framework), module)

    def _uninstrument(self, **kwargs: Any) -> None:
        with _state.lock:
            _state.active = False
            _state.patches.restore()
