"""An opinionated structlog set-up for applications that want one.

otelres writes its events through structlog when the application configured
structlog, else to the standard library logger ``otelres`` (so that the
application's ``logging`` configuration decides level, format and
destination); it never configures either behind the application's back and
never prints on its own. :func:`configure` is for an application that has no
logging set-up of its own: structlog with JSON lines when the output is not a
terminal, the console renderer on a terminal, and the current trace and span
ids on every line; otelres's events then go there too.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any, TextIO

import structlog

if TYPE_CHECKING:
    from collections.abc import MutableMapping

__all__ = ["add_trace_ids", "configure"]


def add_trace_ids(
    logger: Any,  # noqa: ARG001 - structlog's processor signature
    method: str,  # noqa: ARG001
    event: MutableMapping[str, Any],
) -> MutableMapping[str, Any]:
    """A structlog processor: add ``trace_id``/``span_id`` of the current span."""
    from otelres.telemetry import trace_ids  # noqa: PLC0415 - OpenTelemetry only when logging

    for key, value in trace_ids().items():
        event.setdefault(key, value)
    return event


def configure(
    *, level: int = logging.INFO, json: bool | None = None, stream: TextIO | None = None, force: bool = False
) -> bool:
    """Configure structlog, unless the application already did (or ``force``).

    ``json`` defaults to "not a terminal". Returns whether it configured.
    """
    if structlog.is_configured() and not force:
        return False
    stream = stream if stream is not None else sys.stderr
    if json is None:
        json = not stream.isatty()
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            add_trace_ids,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    return True
