"""OpenTelemetry spans and metrics and log events for otelres.

``otelres.instrument()`` turns this on; :func:`enable` and :func:`disable`
do it alone. The names are in :mod:`otelres.telemetry.names`.
"""

from __future__ import annotations

from . import names
from ._activation import active, disable, enable
from ._logs import trace_ids

__all__ = ["active", "disable", "enable", "names", "trace_ids"]
