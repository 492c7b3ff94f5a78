"""The per-destination cache every integration keeps: one value per breaker name.

Built on first use from the current registry (whose breakers and budgets the
values hold) and settings; past ``max_breakers`` names, every new one shares the
:data:`~otelres._registry.OVERFLOW` entry, so a flood of hosts grows neither
memory nor metric cardinality; rebuilt whole when the registry or the settings
are replaced (``otelres.configure``, ``instrument(**overrides)``, a test).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Generic, TypeVar

from otelres import _config
from otelres._registry import OVERFLOW, Registry, default_registry

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["TargetCache"]

_T = TypeVar("_T")


class TargetCache(Generic[_T]):
    """``name -> build(name, registry)``, bounded and invalidated as the module says."""

    def __init__(self, build: Callable[[str, Registry], _T]) -> None:
        self._build = build
        self._lock = threading.Lock()
        self._values: dict[str, _T] = {}
        self._registry: Registry | None = None
        self._settings: _config.Settings | None = None

    def get(self, name: str) -> _T:
        """The value for ``name`` (the overflow entry's once the cap is reached)."""
        registry, settings = default_registry(), _config.current()
        if registry is self._registry and settings is self._settings:
            found = self._values.get(name)
            if found is not None:
                return found
        with self._lock:
            if registry is not self._registry or settings is not self._settings:
                self._values.clear()
                self._registry, self._settings = registry, settings
            found = self._values.get(name)
            if found is None:
                if len(self._values) >= settings.max_breakers:
                    name = OVERFLOW
                    found = self._values.get(name)
                if found is None:
                    found = self._values[name] = self._build(name, registry)
            return found

    def clear(self) -> None:
        """Forget every destination (uninstrumented)."""
        with self._lock:
            self._values.clear()
            self._registry = self._settings = None
