"""What the sqlite3 and redis integrations share: one :class:`Resilience` per
store, in a bounded cache, built from the store's failure and retry predicates
and the configuration of its breaker name (``sqlite:///path``, ``redis://host:port/db``).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from otelres import _config
from otelres._registry import OVERFLOW, Registry, default_registry
from otelres._resilience import Resilience

if TYPE_CHECKING:
    from collections.abc import Callable

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
        self._lock = threading.Lock()
        self._targets: dict[str, Resilience] = {}
        # Resilience objects hold the registry's breakers: a new registry
        # (otelres.reset, a test) starts a new cache.
        self._registry: Registry | None = None

    def get(self, name: str) -> Resilience:
        """The Resilience for ``name`` (bounded: past the registry's cap, one shared overflow)."""
        registry = default_registry()
        if registry is self._registry:
            found = self._targets.get(name)
            if found is not None:
                return found
        with self._lock:
            if registry is not self._registry:
                self._targets.clear()
                self._registry = registry
            found = self._targets.get(name)
            if found is None:
                if len(self._targets) >= _config.current().max_breakers:
                    name = OVERFLOW
                    found = self._targets.get(name)
                if found is None:
                    found = self._build(registry, name)
                    self._targets[name] = found
            return found

    def clear(self) -> None:
        """Forget every store (settings changed, or uninstrumented)."""
        with self._lock:
            self._targets.clear()
            self._registry = None

    def _build(self, registry: Registry, name: str) -> Resilience:
        target = registry.settings.for_target(name)
        retry = target.retry.evolve(retry_on=self._is_retryable, reason=self._reason)
        breaker, budget = registry.entry(name, failure_on=self._is_failure)
        return Resilience(name, retry=retry, breaker=breaker, budget=budget)
