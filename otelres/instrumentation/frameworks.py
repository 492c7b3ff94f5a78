"""Flask, Django and Starlette (FastAPI through it): the 503 for an open circuit.

Server code, kept importable here because ``otelres.instrument()`` and older
entry points name this path; it lives in :mod:`otelres.server._frameworks`.
"""

from __future__ import annotations

from otelres.server._frameworks import FrameworksInstrumentor

__all__ = ["FrameworksInstrumentor"]
