"""``otelres.instrument()``: the one line at start-up.

It loads the settings (code overrides, ``OTELRES_*``, the TOML file), sets up
the OpenTelemetry SDK from ``OTEL_*`` when the application has not, and turns
on otelres's telemetry. Idempotent; :func:`uninstrument` undoes what it did
(an SDK provider, once installed, stays: OpenTelemetry allows no second one).
"""

from __future__ import annotations

import threading

from . import _config
from ._sdk import configure_sdk

__all__ = ["instrument", "uninstrument"]

_lock = threading.Lock()
_instrumented = False


def instrument(**overrides: object) -> None:
    """Turn otelres on for this process.

    ``overrides`` are configuration keys (``retry_attempts=5``, see README);
    they replace the process's settings. With ``OTELRES_ENABLED=false`` this
    does nothing.
    """
    global _instrumented  # noqa: PLW0603 - one instrumentation state per process
    with _lock:
        settings = _config.load_settings(overrides=overrides) if overrides else _config.current()
        if overrides:
            _config.configure(settings)
        if not settings.enabled or _instrumented:
            return
        configure_sdk()
        from . import telemetry  # noqa: PLC0415 - OpenTelemetry loads only when asked for

        telemetry.enable()
        _instrumented = True


def uninstrument() -> None:
    """Undo :func:`instrument` (idempotent)."""
    global _instrumented  # noqa: PLW0603
    with _lock:
        if not _instrumented:
            return
        from . import telemetry  # noqa: PLC0415

        telemetry.disable()
        _instrumented = False
