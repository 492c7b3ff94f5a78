"""Duck-typed stand-ins for otelres.health's Readiness and Report."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class StubReport:
    """Duck-typed ``otelres.health.Report``."""

    http_status: int = 200

    @property
    def status(self) -> str:
        return "ok" if self.http_status == 200 else "fail"

    def to_json(self) -> bytes:
        return b'{"status": "%s"}' % (b"ok" if self.http_status == 200 else b"fail")

    def to_text(self, verbose: bool) -> str:
        verdict = "passed" if self.http_status == 200 else "failed"
        detail = f"[+]stub {'ok' if self.http_status == 200 else 'failed'}\n" if verbose else ""
        return f"{detail}readyz check {verdict}\n"


@dataclasses.dataclass
class StubReadiness:
    """Duck-typed ``otelres.health.Readiness`` counting its evaluations."""

    report: StubReport = dataclasses.field(default_factory=StubReport)
    calls: int = 0

    async def evaluate(self) -> StubReport:
        self.calls += 1
        return self.report

    def evaluate_sync(self) -> StubReport:
        self.calls += 1
        return self.report
