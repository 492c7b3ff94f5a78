"""The deadline of the work in progress, carried in a context variable.

A server middleware (or any caller) sets it for the handling of one request;
every retry flow started underneath reads it, so no retry is scheduled that
could not start before the request's own deadline. Context variables follow
threads started with ``contextvars.copy_context`` and every asyncio task.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import TYPE_CHECKING

from ._clock import MONOTONIC, Clock
from ._errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "MAX_DEADLINE",
    "caused_by_caller_deadline",
    "current_deadline",
    "deadline",
    "mark_caller_deadline",
    "time_left",
]

#: What a timeout carries when the caller's deadline, not the attempt's own timeout, cut it short.
_CALLER_DEADLINE = "__otelres_caller_deadline__"


def mark_caller_deadline(exc: BaseException) -> None:
    """Say that ``exc`` (a timeout) came from a deadline shorter than the attempt's own
    timeout: the caller's doing (a request header, a handler's budget), not the
    dependency's. Breakers count it neither way, so a caller sending tiny deadlines
    cannot open a circuit to a healthy dependency for everyone else.
    """
    with contextlib.suppress(AttributeError, TypeError):
        setattr(exc, _CALLER_DEADLINE, True)


def caused_by_caller_deadline(exc: BaseException) -> bool:
    """Whether :func:`mark_caller_deadline` marked ``exc``."""
    return getattr(exc, _CALLER_DEADLINE, False) is True


#: The longest deadline there is: a day. A longer one bounds nothing, and a client
#: library handed a timeout near 1e308 fails deep inside (an OverflowError from a socket).
MAX_DEADLINE = 86400.0

_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("otelres_deadline", default=None)
#: The deadline an untrusted caller asked for (a request header), when it is the binding one.
_CALLER: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "otelres_caller_deadline", default=None
)


def caller_deadline_binds() -> bool:
    """Whether the deadline in force is one an untrusted caller set (a request header
    shorter than the service's own): a timeout it causes is the caller's doing. A
    deadline the application or the operator set is the service's own budget, and a
    dependency too slow for it is a failing dependency.
    """
    caller = _CALLER.get()
    return caller is not None and caller == _DEADLINE.get()


def current_deadline() -> float | None:
    """The innermost deadline on the monotonic scale, or None."""
    return _DEADLINE.get()


def time_left(clock: Clock = MONOTONIC) -> float | None:
    """Seconds until the current deadline (may be negative), or None without one."""
    limit = _DEADLINE.get()
    return None if limit is None else limit - clock.monotonic()


@contextlib.contextmanager
def deadline(seconds: float, *, clock: Clock = MONOTONIC, caller: bool = False) -> Iterator[float]:
    """Bound the retries made inside the block to ``seconds`` from now.

    Nested deadlines never extend an outer one. Yields the absolute deadline.
    ``seconds`` must be a finite number from 0 to :data:`MAX_DEADLINE` (a day).
    ``caller=True`` says an untrusted caller asked for it (the middleware's
    deadline header): timeouts it causes never count against a breaker.
    """
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, (int, float))
        or not math.isfinite(seconds)
        or not 0 <= seconds <= MAX_DEADLINE
    ):
        raise ConfigError("deadline", seconds, f"a finite number of seconds from 0 to {MAX_DEADLINE:g}")
    limit = clock.monotonic() + seconds
    outer = _DEADLINE.get()
    if outer is not None:
        limit = min(limit, outer)
    token = _DEADLINE.set(limit)
    caller_token = _CALLER.set(limit) if caller and limit != outer else None
    try:
        yield limit
    finally:
        if caller_token is not None:
            _CALLER.reset(caller_token)
        _DEADLINE.reset(token)
