"""``otelres demo``: a flaky upstream, plain requests and httpx calls made resilient by
``otelres.instrument()``, and a live view of what the breaker and the retries do.
"""

from __future__ import annotations

from ._run import DEMO_SETTINGS, DemoError, run_demo
from ._upstream import PHASES, Phase

__all__ = ["DEMO_SETTINGS", "PHASES", "DemoError", "Phase", "run_demo"]
