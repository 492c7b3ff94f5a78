"""WSGI middleware: health probes, a per-request deadline and the fail-fast 503.

The public path of :mod:`otelres.server.wsgi`, where the code lives::

    app.wsgi_app = ResilienceMiddleware(app.wsgi_app, deadline=5.0)
"""

from __future__ import annotations

from otelres.server.wsgi import ResilienceMiddleware

__all__ = ["ResilienceMiddleware"]
