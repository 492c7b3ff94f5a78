"""Which calls may be repeated: the caller's word that a non-idempotent call is safe to retry.

An integration never retries a call that could do its work twice (an HTTP POST
without an ``Idempotency-Key``, a Redis write): the server may have done it
before the answer was lost. A caller that knows better (the server deduplicates,
the operation is naturally idempotent) says so for a block with
:func:`retry_unsafe`; the integrations read :func:`unsafe_retries_allowed`.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["retry_unsafe", "unsafe_retries_allowed"]

_UNSAFE_OK: contextvars.ContextVar[bool] = contextvars.ContextVar("otelres_retry_unsafe", default=False)


@contextlib.contextmanager
def retry_unsafe() -> Iterator[None]:
    """Within the block, non-idempotent HTTP requests (POST, PATCH) may be retried
    too: the caller knows the server deduplicates them.
    """
    token = _UNSAFE_OK.set(True)
    try:
        yield
    finally:
        _UNSAFE_OK.reset(token)


def unsafe_retries_allowed() -> bool:
    """Whether the current block is inside :func:`retry_unsafe`."""
    return _UNSAFE_OK.get()
