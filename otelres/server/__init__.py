"""The server side: what runs around the application's own request handling.

- :mod:`otelres.server.wsgi` and :mod:`otelres.server.asgi`: the two
  ``ResilienceMiddleware`` drivers (probes, request deadlines, the 503 for an
  open circuit, ``X-Degraded``, load shedding), public as :mod:`otelres.wsgi` and
  :mod:`otelres.asgi`;
- ``_core``: the I/O-free request rules both drivers share;
- ``_shedding``: the I/O-free admission under a concurrency limit (``limit=``), the 503 of a shed
  request and its rate-bounded log lines, over the limiters of :mod:`otelres._limit`;
- ``_frameworks``: the same 503 inside Flask, Django and Starlette, which catch a
  view's error before an outer middleware sees it;
- :mod:`otelres.server.health`: liveness and readiness reports and the checks
  behind them, public as :mod:`otelres.health`.

Nothing is imported here: importing one middleware loads neither the other nor
the health checks.
"""
