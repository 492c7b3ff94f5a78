"""Health probes: liveness (the process answers) and readiness (its dependencies do).

The public path of :mod:`otelres.server.health`, where the code lives (see there).
"""

from __future__ import annotations

from otelres.server.health import (
    CheckResult,
    Readiness,
    Report,
    UnexpectedStatusError,
    http_check,
    liveness_report,
    postgres_check,
    redis_check,
    sanitize,
    sql_check,
)

__all__ = [
    "CheckResult",
    "Readiness",
    "Report",
    "UnexpectedStatusError",
    "http_check",
    "liveness_report",
    "postgres_check",
    "redis_check",
    "sanitize",
    "sql_check",
]
