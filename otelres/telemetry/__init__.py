"""OpenTelemetry spans and metrics and log events for otelres.

``otelres.instrument()`` turns this on; :func:`enable` and :func:`disable`
do it alone. The names are in :mod:`otelres.telemetry.names`.
"""

from __future__ import annotations

from otelres._sdk import HTTP_CLIENT_ATTRIBUTES, http_client_views

from . import names
from ._activation import active, disable, enable
from ._logs import trace_ids

__all__ = ["HTTP_CLIENT_ATTRIBUTES", "active", "disable", "enable", "http_client_views", "names", "trace_ids"]
