"""The guarded call (``call_inside``, ``acall_inside``, ``passing_through``): a Guard runs the
call, patched calls beneath it pass through, and the flags come back afterwards."""

from __future__ import annotations

import asyncio
import contextvars
from typing import TYPE_CHECKING

import pytest

import otelres
from otelres.instrumentation._common import (
    acall_inside,
    call_inside,
    passing_through,
    should_wrap,
)
from otelres.testing import capture_events

if TYPE_CHECKING:
    from otelres.testing import FakeClock

FLAG: contextvars.ContextVar[bool] = contextvars.ContextVar("test_flag", default=False)


@pytest.mark.parametrize("also", [None, FLAG])
def test_call_inside_sets_inside_and_also(
    also: contextvars.ContextVar[bool] | None, clock: FakeClock
) -> None:
    """call_inside and acall_inside run the call through the guard with patched calls passing
    through (and ``also`` set), pass the no-retry reason on, and put both flags back afterwards,
    on an error too."""
    guard = otelres.default_registry().guard("dep", clock=clock)
    seen: list[tuple[bool, bool]] = []

    def note(value: int) -> int:
        seen.append((should_wrap(), FLAG.get()))
        return value

    async def anote(value: int) -> int:
        return note(value)

    def fail() -> None:
        note(0)
        raise ConnectionError

    assert call_inside(guard, None, note, (1,), {}, also=also) == 1
    assert asyncio.run(acall_inside(guard, None, anote, (2,), {}, also=also)) == 2
    with capture_events() as events, pytest.raises(ConnectionError):
        call_inside(guard, "not_idempotent", fail, (), {}, also=also)
    assert [e.reason for e in events.of("retry_suppressed")] == ["not_idempotent"]
    flagged = also is not None
    assert seen == [(False, flagged)] * 3
    assert should_wrap()
    assert not FLAG.get()


def test_passing_through() -> None:
    """Within passing_through(), patched calls pass through; afterwards they are wrapped again."""
    assert should_wrap()
    with pytest.raises(RuntimeError), passing_through(FLAG):
        assert not should_wrap()
        assert FLAG.get()
        raise RuntimeError
    assert should_wrap()
    assert not FLAG.get()
