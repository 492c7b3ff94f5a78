"""The real clock: monotonic and wall readings, and sleeps that are never zero-length calls."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from otelres import MonotonicClock
from otelres._clock import MONOTONIC, Clock

if TYPE_CHECKING:
    import pytest


def test_real_clock_reads_time_monotonic_and_time_time() -> None:
    """MONOTONIC reads the process's monotonic and wall clocks."""
    before = time.monotonic()
    assert before <= MONOTONIC.monotonic() <= time.monotonic()
    assert abs(MONOTONIC.wall() - time.time()) < 5.0
    assert isinstance(MONOTONIC, Clock)
    assert repr(MONOTONIC) == "MonotonicClock()"


def test_zero_delay_sleeps_make_no_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """sleep(0) and asleep(0) return without calling time.sleep or asyncio.sleep (a syscall, a loop turn)."""
    calls: list[float] = []
    monkeypatch.setattr(time, "sleep", calls.append)

    async def fake_asleep(seconds: float) -> None:
        calls.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", fake_asleep)
    clock = MonotonicClock()
    clock.sleep(0)
    clock.sleep(-1.0)
    asyncio.run(clock.asleep(0))
    assert calls == []
    clock.sleep(0.25)
    asyncio.run(clock.asleep(0.5))
    assert calls == [0.25, 0.5]
