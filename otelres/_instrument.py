"""``otelres.instrument()``: the one line at start-up.

It loads the settings (code overrides, ``OTELRES_*``, the TOML file), sets up
the OpenTelemetry SDK from ``OTEL_*`` when the application has not, turns on
otelres's telemetry, and patches every supported client library that is
installed, enabling OpenTelemetry's own instrumentation of it (for the
attempts' CLIENT spans) when that is installed and not already on.
Idempotent; :func:`uninstrument` undoes every patch it made.

Like OpenTelemetry's instrumentors, it takes ``tracer_provider`` and
``meter_provider``: otelres's own spans and metrics and the OpenTelemetry
instrumentations it turns on then use those instead of the global providers
(and the SDK is not set up from ``OTEL_*`` for a signal given so). An
instrumentor already on (``opentelemetry-instrument`` loads otelres's through
their entry points) is never instrumented twice; :func:`uninstrument` takes
otelres's off all the same.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
import threading
from typing import TYPE_CHECKING, Any

from . import _config, _fork
from ._sdk import configure_sdk

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

    from ._patches import Patches
    from ._sdk import Signal

__all__ = ["INTEGRATIONS", "instrument", "uninstrument"]

_log = logging.getLogger("otelres")

#: entry-point name -> (the library, otelres's instrumentor, OpenTelemetry's instrumentor)
INTEGRATIONS: dict[str, tuple[str, str, str]] = {
    "otelres_requests": (
        "requests",
        "otelres.instrumentation.requests:RequestsInstrumentor",
        "opentelemetry.instrumentation.requests:RequestsInstrumentor",
    ),
    "otelres_httpx": (
        "httpx",
        "otelres.instrumentation.httpx:HttpxInstrumentor",
        "opentelemetry.instrumentation.httpx:HTTPXClientInstrumentor",
    ),
    "otelres_psycopg": (
        "psycopg",
        "otelres.instrumentation.psycopg:PsycopgInstrumentor",
        "opentelemetry.instrumentation.psycopg:PsycopgInstrumentor",
    ),
    "otelres_psycopg2": (
        "psycopg2",
        "otelres.instrumentation.psycopg2:Psycopg2Instrumentor",
        "opentelemetry.instrumentation.psycopg2:Psycopg2Instrumentor",
    ),
    "otelres_asyncpg": (
        "asyncpg",
        "otelres.instrumentation.asyncpg:AsyncpgInstrumentor",
        "opentelemetry.instrumentation.asyncpg:AsyncPGInstrumentor",
    ),
    "otelres_sqlite3": (
        "sqlite3",
        "otelres.instrumentation.sqlite3:Sqlite3Instrumentor",
        "opentelemetry.instrumentation.sqlite3:SQLite3Instrumentor",
    ),
    "otelres_redis": (
        "redis",
        "otelres.instrumentation.redis:RedisInstrumentor",
        "opentelemetry.instrumentation.redis:RedisInstrumentor",
    ),
    # Flask, Django and Starlette answer CircuitOpenError with the middleware's 503 themselves
    # (they catch a view's exception before an outer middleware could); each is patched when
    # imported, so this needs no library of its own, and has no OpenTelemetry counterpart.
    "otelres_frameworks": ("otelres", "otelres.server._frameworks:FrameworksInstrumentor", ""),
}

_lock = threading.Lock()
_fork.renew(sys.modules[__name__], "_lock")
_instrumented = False
_patched: list[Any] = []


def _load(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _disabled() -> set[str]:
    raw = os.environ.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "")
    return {name.strip() for name in raw.split(",") if name.strip()}


def instrument(
    *,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    **overrides: object,
) -> None:
    """Turn otelres on for this process.

    ``tracer_provider`` and ``meter_provider``, as OpenTelemetry's instrumentors
    take them: otelres's spans and metrics, and those of the OpenTelemetry
    instrumentations it turns on, go there instead of to the global providers.
    The other ``overrides`` are configuration keys (``retry_attempts=5``, see
    README); they replace the process's settings. With ``OTELRES_ENABLED=false``
    this does nothing. A second call changes the settings and the providers of
    otelres's own telemetry; the libraries stay patched as they are.
    """
    global _instrumented  # noqa: PLW0603 - one instrumentation state per process
    providers: dict[str, Any] = {
        key: value
        for key, value in (("tracer_provider", tracer_provider), ("meter_provider", meter_provider))
        if value is not None
    }
    with _lock:
        settings = _config.load_settings(overrides=overrides) if overrides else _config.current()
        if overrides:
            _config.configure(settings)
        if not settings.enabled:
            return
        _share(settings)
        from . import telemetry  # noqa: PLC0415 - OpenTelemetry loads only when asked for

        if _instrumented:
            if providers:
                telemetry.enable(**providers)
            return
        skip: list[Signal] = []
        if tracer_provider is not None:
            skip.append("traces")
        if meter_provider is not None:
            skip.append("metrics")
        configure_sdk(skip=skip, prometheus_ports=settings.prometheus_ports)
        telemetry.enable(**providers)
        disabled = _disabled()
        for entry, (library, ours, theirs) in INTEGRATIONS.items():
            if entry in disabled or importlib.util.find_spec(library) is None:
                _log.debug(
                    "otelres: %s not patched (%s)", library, "disabled" if entry in disabled else "absent"
                )
                continue
            try:
                instrumentor = _load(ours)()
            except (ImportError, AttributeError):  # an integration not written yet
                _log.debug("otelres: no integration for %s", library)
                continue
            # OpenTelemetry's first: where both patch the same function (the
            # database drivers), the one patched last is outermost, and otelres's
            # retry loop must be outside the CLIENT span so that each attempt
            # gets its own span.
            _enable_opentelemetry(theirs, library, providers)
            # An instrumentor is a singleton: opentelemetry-instrument (through the
            # entry point) or the application may have turned this one on already,
            # and instrumenting it again only logs OpenTelemetry's warning. It is
            # otelres's all the same: uninstrument() takes it off.
            if instrumentor.is_instrumented_by_opentelemetry:
                _log.debug("otelres: %s already patched", library)
            else:
                instrumentor.instrument(skip_dep_check=True, **providers)
            _patched.append(instrumentor)
        _instrumented = True


def _enable_opentelemetry(path: str, library: str, providers: dict[str, Any]) -> None:
    """Turn on OpenTelemetry's own instrumentation of a library, if installed and
    off, with the providers given to :func:`instrument`.
    """
    if not path:
        return
    try:
        instrumentor = _load(path)()
    except ImportError:
        return
    if not instrumentor.is_instrumented_by_opentelemetry:
        from ._patches import Patches  # noqa: PLC0415 - wrapt loads only when asked for

        kept = Patches()
        for cls, name in _class_methods(library):
            kept.keep(cls, name)
        instrumentor.instrument(**providers)
        _patched.append(_Undo(instrumentor, kept))


def _class_methods(library: str) -> list[tuple[type, str]]:
    """The classmethods and staticmethods of the library's top-level classes.

    OpenTelemetry's ``unwrap`` puts a wrapped classmethod back as a method bound
    to its class (``psycopg.Connection.connect``), so that a subclass's
    ``connect()`` then builds the base class: what it turned on, otelres puts
    back exactly (:meth:`Patches.keep`).
    """
    module = importlib.import_module(library)
    return [
        (cls, name)
        for cls in vars(module).values()
        if isinstance(cls, type) and cls.__module__.startswith(library)
        for name, raw in vars(cls).items()
        # wrapt's proxies pass isinstance checks: a classmethod beneath wrappers counts.
        if isinstance(raw, (classmethod, staticmethod))
    ]


class _Undo:
    """An instrumentor otelres turned on, with what its uninstrument must leave as found."""

    def __init__(self, instrumentor: Any, kept: Patches) -> None:
        self._instrumentor = instrumentor
        self._kept = kept

    def uninstrument(self) -> None:
        self._instrumentor.uninstrument()
        self._kept.restore()


def _share(settings: _config.Settings | None) -> None:
    """Start (or stop) sharing breaker state across processes as the settings say:
    the fleet's thread connects on its own, so no start-up waits for Redis.
    """
    config = settings.shared_state if settings is not None else None
    if config is None and "otelres._fleet" not in sys.modules:
        return  # never turned on: nothing to import or stop
    from . import _fleet  # noqa: PLC0415 - only with shared state on

    if config is None:
        _fleet.stop()
    else:
        _fleet.start(config)


def uninstrument() -> None:
    """Undo :func:`instrument` (idempotent)."""
    global _instrumented  # noqa: PLW0603
    with _lock:
        if not _instrumented:
            return
        while _patched:
            _patched.pop().uninstrument()
        from . import telemetry  # noqa: PLC0415

        telemetry.disable()
        _share(None)
        _instrumented = False
