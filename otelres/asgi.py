"""ASGI middleware: health probes, a per-request deadline and the fail-fast 503.

The public path of :mod:`otelres.server.asgi`, where the code lives::

    app = ResilienceMiddleware(app, deadline=5.0)
"""

from __future__ import annotations

from otelres.server.asgi import ResilienceMiddleware

__all__ = ["ResilienceMiddleware"]
