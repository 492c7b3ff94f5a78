"""What a probe answers: check results and the report, with their JSON and
Kubernetes-style text renderings, and the liveness report (always ``ok``).

Values only: building a report runs nothing (the runner does that).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from otelres._breaker import State

__all__ = ["CheckResult", "Report", "liveness_report", "overall_status"]

#: Breaker states that make a report ``degraded``.
_DEGRADING_STATES = frozenset({State.OPEN.value, State.FORCED_OPEN.value, State.HALF_OPEN.value})


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """One check's outcome: ``status`` is ``"ok"`` or ``"fail"``; ``duration`` in
    seconds; ``error`` sanitized, None when the check passed.
    """

    name: str
    status: str
    critical: bool
    duration: float
    error: str | None = None


@dataclasses.dataclass(frozen=True)
class Report:
    """A probe's answer.

    ``status`` is ``"fail"`` when a critical check fails, ``"degraded"`` when a
    non-critical check fails or a breaker is open, forced open or half-open,
    else ``"ok"``. ``breakers`` holds ``(name, state)`` pairs. ``probe`` names
    the probe in the text form (``readyz`` or ``livez``).
    """

    status: str
    checks: tuple[CheckResult, ...] = ()
    breakers: tuple[tuple[str, str], ...] = ()
    probe: str = "readyz"

    @property
    def http_status(self) -> int:
        """503 when the status is ``fail``, 200 otherwise."""
        return 503 if self.status == "fail" else 200

    def to_dict(self) -> dict[str, Any]:
        """The JSON body as a dict (see :meth:`to_json`)."""
        checks: dict[str, dict[str, Any]] = {}
        for check in self.checks:
            entry: dict[str, Any] = {
                "status": check.status,
                "critical": check.critical,
                "duration_ms": round(check.duration * 1000.0, 3),
            }
            if check.error is not None:
                entry["error"] = check.error
            checks[check.name] = entry
        return {"status": self.status, "checks": checks, "breakers": dict(self.breakers)}

    def to_json(self) -> bytes:
        """``{"status", "checks": {name: {"status", "critical", "duration_ms", "error"?}},
        "breakers": {name: state}}`` in UTF-8.
        """
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()

    def to_text(self, verbose: bool = False) -> str:
        """Kubernetes style: with ``verbose`` one ``[+]name ok`` or ``[-]name failed:
        reason`` line a check (then one a breaker, ``[+]breaker:name closed``),
        always ending with ``readyz check passed`` or ``readyz check failed`` and a newline.
        """
        verdict = "failed" if self.status == "fail" else "passed"
        lines: list[str] = []
        if verbose:
            for check in self.checks:
                if check.status == "ok":
                    lines.append(f"[+]{check.name} ok")
                else:
                    lines.append(f"[-]{check.name} failed: {check.error or 'unknown error'}")
            for name, state in self.breakers:
                mark = "-" if state in _DEGRADING_STATES else "+"
                lines.append(f"[{mark}]breaker:{name} {state}")
        lines.append(f"{self.probe} check {verdict}")
        return "\n".join(lines) + "\n"


def liveness_report() -> Report:
    """The liveness answer: ``ok``, with no check (liveness never checks a dependency)."""
    return Report(status="ok", probe="livez")


def overall_status(checks: tuple[CheckResult, ...], breakers: tuple[tuple[str, str], ...]) -> str:
    """``fail`` when a critical check failed; ``degraded`` when another check failed
    or a breaker is open, forced open or half-open; else ``ok``.
    """
    failed = [check for check in checks if check.status != "ok"]
    if any(check.critical for check in failed):
        return "fail"
    if failed or any(state in _DEGRADING_STATES for _, state in breakers):
        return "degraded"
    return "ok"
