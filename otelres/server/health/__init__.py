"""Health probes: liveness (the process answers) and readiness (its dependencies do).

:class:`Readiness` runs the registered checks concurrently, each bounded by its
timeout, adds every breaker's state, and caches the :class:`Report` briefly so
that a flood of probes does not hammer the dependencies. A check is any
callable, sync or async: it passes unless it raises or times out. Errors in a
report go through :func:`sanitize`: no password, token or query string ever
appears in a health body.

Liveness never checks a dependency: :func:`liveness_report` is always ``ok``.

Import from :mod:`otelres.health` (the public path); the work is split by job
into private modules here: ``_sanitize`` (secrets out of errors), ``_report``
(the values a probe answers and their renderings), ``_runner`` (running the
checks: :class:`Readiness`) and ``_checks`` (the built-in checks).
"""

from __future__ import annotations

from otelres.server.health._checks import (
    UnexpectedStatusError,
    http_check,
    postgres_check,
    redis_check,
    sql_check,
)
from otelres.server.health._report import CheckResult, Report, liveness_report
from otelres.server.health._runner import Readiness
from otelres.server.health._sanitize import sanitize

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
