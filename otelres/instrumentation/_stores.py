"""What the sqlite3 and redis integrations share: one :class:`Resilience` per
store, in a bounded cache, built from the store's failure and retry predicates
and the configuration of its breaker name (``sqlite:///path``, ``redis://host:port/db``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from otelres._resilience import Resilience

from ._targets import TargetCache

if TYPE_CHECKING:
    from collections.abc import Callable

    from otelres._registry import Registry

__all__ = ["StoreTargets"]


class StoreTargets:
    """The Resilience of each store (database file, server and database) for one
    kind of call.

    ``is_failure`` tells the errors that count against the breaker (connection
    errors, timeouts, a locked database); every other error is the caller's and
    counts as a success. ``is_retryable`` tells the errors worth another attempt
    and ``reason`` labels them for telemetry (``connect``, ``timeout``, ``locked``).
    Two StoreTargets of one integration (connects and statements, say) share the
    breaker and the retry budget of a name: the registry holds them.
    """

    def __init__(
        self,
        *,
        is_failure: Callable[[BaseException], bool],
        is_retryable: Callable[[BaseException], bool],
        reason: Callable[[BaseException | None, object], str],
    ) -> None:
        self._is_failure = is_failure
        self._is_retryable = is_retryable
        self._reason = reason
        self._cache: TargetCache[Resilience] = TargetCache(self._build)

    def get(self, name: str) -> Resilience:
        """The Resilience for ``name`` (see :class:`TargetCache`)."""
        return self._cache.get(name)

    def clear(self) -> None:
        """Forget every store (uninstrumented)."""
        self._cache.clear()

    def _build(self, name: str, registry: Registry) -> Resilience:
        target = registry.settings.for_target(name)
        retry = target.retry.evolve(retry_on=self._is_retryable, reason=self._reason)
        breaker, budget = registry.entry(name, failure_on=self._is_failure)
        return Resilience(name, retry=retry, breaker=breaker, budget=budget)
