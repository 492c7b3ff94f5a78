"""The guarded call (``call_inside``, ``acall_inside``, ``passing_through``): patched
calls beneath it pass through, and the flags come back afterwards."""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import pytest

from otelres.instrumentation._common import (
    acall_inside,
    call_inside,
    passing_through,
    should_wrap,
)

FLAG: contextvars.ContextVar[bool] = contextvars.ContextVar("test_flag", default=False)


class _Direct:
    """Stands in for a Resilience: calls through once, noting the no-retry reason and the flags."""

    def __init__(self) -> None:
        self.seen: list[tuple[str | None, bool, bool]] = []

    def call_with(
        self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], *, no_retry: str | None
    ) -> Any:
        self.seen.append((no_retry, should_wrap(), FLAG.get()))
        return fn(*args, **kwargs)

    async def acall_with(
        self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], *, no_retry: str | None
    ) -> Any:
        self.seen.append((no_retry, should_wrap(), FLAG.get()))
        return await fn(*args, **kwargs)


@pytest.mark.parametrize("also", [None, FLAG])
def test_call_inside_sets_inside_and_also(also: contextvars.ContextVar[bool] | None) -> None:
    """call_inside and acall_inside run the call with patched calls passing through (and
    ``also`` set), and put both back afterwards, on an error too."""
    res = _Direct()

    async def coro(value: int) -> int:
        return value

    def fail() -> None:
        raise ValueError

    assert call_inside(res, "not_idempotent", lambda v: v, (1,), {}, also=also) == 1  # type: ignore[arg-type]
    assert asyncio.run(acall_inside(res, None, coro, (2,), {}, also=also)) == 2  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        call_inside(res, None, fail, (), {}, also=also)  # type: ignore[arg-type]
    flagged = also is not None
    assert res.seen == [("not_idempotent", False, flagged), (None, False, flagged), (None, False, flagged)]
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
