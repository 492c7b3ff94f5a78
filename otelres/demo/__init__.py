"""``otelres demo``: a flaky upstream, a workload through otelres, a live view."""

from __future__ import annotations

from ._run import run_demo

__all__ = ["run_demo"]
