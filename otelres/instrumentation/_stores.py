"""What the sqlite3 and redis integrations share: a :class:`~otelres.Profile`
per kind of call to a store (a database file, a server and database), made from
the store's failure and retry predicates; the registry combines it with the
configuration of the breaker name (``sqlite:///path``, ``redis://host:port/db``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from otelres._registry import Profile

from ._rejections import with_rejection

if TYPE_CHECKING:
    from collections.abc import Callable

    from otelres._config import Target

__all__ = ["store_profile"]


def store_profile(
    kind: str,
    *,
    library: str,
    is_failure: Callable[[BaseException], bool],
    is_retryable: Callable[[BaseException], bool],
    reason: Callable[[BaseException | None, object], str],
) -> Profile:
    """How one kind of call to a store is judged and retried.

    ``is_failure`` tells the errors that count against the breaker (connection
    errors, timeouts, a locked database); every other error is the caller's and
    counts as a success. ``is_retryable`` tells the errors worth another attempt
    and ``reason`` labels them for telemetry (``connect``, ``timeout``,
    ``locked``). Two kinds of call of one integration (connects and statements,
    say) share the breaker and the retry budget of a name: the registry holds them.
    A rejection raises ``library``'s own connection error too (see
    :mod:`otelres.instrumentation._rejections`).
    """

    def retry(target: Target) -> dict[str, Any]:
        return {"retry_on": is_retryable, "reason": reason}

    return with_rejection(Profile(kind, failure_on=is_failure, retry=retry), library)
