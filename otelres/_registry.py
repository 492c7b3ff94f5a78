"""The process's breakers, by name, capped in number.

Every dependency gets one breaker and one retry budget, shared by every call
site that names it. A flood of distinct names (a crawler's hosts, a tenant id in
a host name) must not grow memory or metric cardinality without bound: past
``max_breakers`` every new name shares the one :data:`OVERFLOW` breaker, and a
warning is logged once.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from . import _config
from ._breaker import CircuitBreaker
from ._budget import RetryBudget
from ._clock import MONOTONIC, Clock
from ._config import Settings

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["OVERFLOW", "Registry", "default_registry"]

#: The name of the breaker that every name past the cap shares.
OVERFLOW = "otelres.overflow"

_log = logging.getLogger("otelres")


class Registry:
    """Breakers and budgets by name; thread-safe; capped."""

    __slots__ = ("_clock", "_entries", "_lock", "_settings", "_warned")

    def __init__(
        self,
        settings: Settings | Callable[[], Settings] | None = None,
        *,
        clock: Clock = MONOTONIC,
    ) -> None:
        self._settings = settings if settings is not None else _config.current
        self._clock = clock
        self._entries: dict[str, tuple[CircuitBreaker, RetryBudget]] = {}
        self._lock = threading.Lock()
        self._warned = False

    @property
    def settings(self) -> Settings:
        """The settings new breakers are configured from."""
        settings = self._settings
        return settings if isinstance(settings, Settings) else settings()

    def entry(self, name: str, **breaker_changes: Any) -> tuple[CircuitBreaker, RetryBudget]:
        """The breaker and budget for ``name``, created on first use.

        ``breaker_changes`` adjust the configured breaker policy when the
        breaker is created (an integration's failure predicates, say).
        """
        found = self._entries.get(name)
        if found is not None:
            return found
        with self._lock:
            found = self._entries.get(name)
            if found is not None:
                return found
            settings = self.settings
            if len(self._entries) >= settings.max_breakers:
                return self._overflow(name, settings, breaker_changes)
            target = settings.for_target(name)
            policy = target.breaker.evolve(**breaker_changes) if breaker_changes else target.breaker
            found = (CircuitBreaker(name, policy, clock=self._clock), RetryBudget(target.budget))
            self._entries[name] = found
            return found

    def _overflow(
        self, name: str, settings: Settings, breaker_changes: dict[str, Any]
    ) -> tuple[CircuitBreaker, RetryBudget]:
        found = self._entries.get(OVERFLOW)
        if found is None:
            target = settings.default
            policy = target.breaker.evolve(**breaker_changes) if breaker_changes else target.breaker
            found = (CircuitBreaker(OVERFLOW, policy, clock=self._clock), RetryBudget(target.budget))
            # Stored beyond the cap on purpose: it is the one entry the cap allows extra.
            self._entries[OVERFLOW] = found
        if not self._warned:
            self._warned = True
            _log.warning(
                "otelres: more than %d breakers; %r and every later new name share the breaker %r "
                "(raise OTELRES_MAX_BREAKERS if these are real dependencies)",
                settings.max_breakers,
                name,
                OVERFLOW,
            )
        return found

    def get(self, name: str) -> CircuitBreaker:
        """The breaker for ``name``."""
        return self.entry(name)[0]

    def breakers(self) -> list[CircuitBreaker]:
        """Every breaker, in creation order."""
        return [breaker for breaker, _ in list(self._entries.values())]

    def clear(self) -> None:
        """Forget every breaker (tests, and :func:`otelres.reset`)."""
        with self._lock:
            self._entries.clear()
            self._warned = False


_default: Registry | None = None
_default_lock = threading.Lock()


def default_registry() -> Registry:
    """The process-wide registry."""
    global _default  # noqa: PLW0603 - the one process-wide registry
    registry = _default
    if registry is None:
        with _default_lock:
            if _default is None:
                _default = Registry()
            registry = _default
    return registry


def set_default_registry(registry: Registry | None) -> Registry | None:
    """Swap the process-wide registry (returns the previous one); for tests."""
    global _default
    with _default_lock:
        previous, _default = _default, registry
    return previous
