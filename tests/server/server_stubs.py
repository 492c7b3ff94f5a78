"""Duck-typed stand-ins for otelres.health's Readiness and Report."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class StubReport:
    """Duck-typed ``otelres.health.Report``."""

    http_status: int = 200

    def to_json(self) -> bytes:
        return b'{"status": "%s"}' % (b"ok" if self.http_status == 200 else b"fail")

    def to_text(self, verbose: bool) -> str:  # noqa: ARG002 - Report's signature
        return f"[+]stub {'ok' if self.http_status == 200 else 'failed'}\n"


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
