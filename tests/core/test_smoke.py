"""A first end-to-end pass through the public API."""

from __future__ import annotations

from typing import TYPE_CHECKING

import otelres

if TYPE_CHECKING:
    from otelres.testing import FakeClock


def test_decorated_function_retries_then_succeeds(clock: FakeClock) -> None:
    """A function failing twice with ConnectionError succeeds on its third attempt."""
    calls = 0

    @otelres.resilient("smoke", clock=clock, retry=otelres.RetryPolicy(jitter="none"))
    def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError("refused")
        return "ok"

    assert flaky() == "ok"
    assert calls == 3
    assert clock.sleeps == [0.1, 0.2]
