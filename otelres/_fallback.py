"""What a call returns instead of an error: a value, a computed value, or the
last good result (stale-if-error).

A fallback applies when the circuit is open or the retries are exhausted; it
never applies to a cancellation or an interpreter exit. The stale cache is
bounded in size (least recently used out first) and in age, so an outage can
serve yesterday's data only if you asked for yesterday's data.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from . import _fork
from ._errors import ConfigError
from ._policy import _check_number

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable

__all__ = ["MISSING", "Fallback", "default_key"]

_T = TypeVar("_T")


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


#: What :meth:`Fallback.resolve` returns when it has nothing to offer.
MISSING: Any = _Missing()


def default_key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable:
    """The stale-cache key of a call: its arguments (unhashable ones are not cached)."""
    if kwargs:
        return (args, tuple(sorted(kwargs.items())))
    return args


class Fallback(Generic[_T]):
    """A fallback: build one with :meth:`value`, :meth:`call` or :meth:`stale`."""

    __slots__ = ("__weakref__", "_cache", "_factory", "_key", "_lock", "_max_age", "_max_size", "_otherwise")

    def __init__(
        self,
        factory: Callable[[BaseException], _T] | None = None,
        *,
        stale_size: int = 0,
        stale_age: float = 0.0,
        key: Callable[[tuple[Any, ...], dict[str, Any]], Hashable] = default_key,
        otherwise: Fallback[_T] | None = None,
    ) -> None:
        if factory is not None and not callable(factory):
            raise ConfigError("fallback", factory, "a callable taking the error")
        _check_number("fallback.stale_size", stale_size, low=0, high=10_000_000, integer=True)
        _check_number("fallback.stale_age", stale_age, low=0.0)
        self._factory = factory
        self._max_size = stale_size
        self._max_age = stale_age
        self._key = key
        self._otherwise = otherwise
        self._cache: OrderedDict[Hashable, tuple[float, _T]] = OrderedDict()
        self._lock = threading.Lock()
        _fork.renew(self, "_lock")

    @classmethod
    def value(cls, value: _T) -> Fallback[_T]:
        """Return ``value`` whenever the call fails."""
        return cls(lambda _exc: value)

    @classmethod
    def call(cls, factory: Callable[[BaseException], _T]) -> Fallback[_T]:
        """Return ``factory(error)``; the error is the :class:`~otelres.CircuitOpenError`,
        the last attempt's exception, or a :class:`~otelres.RetryError` holding the
        last failed result.
        """
        return cls(factory)

    @classmethod
    def stale(
        cls,
        *,
        max_size: int = 128,
        max_age: float = 300.0,
        key: Callable[[tuple[Any, ...], dict[str, Any]], Hashable] = default_key,
        otherwise: Fallback[_T] | None = None,
    ) -> Fallback[_T]:
        """Return the last good result of a call with the same key, if younger than
        ``max_age`` seconds; else ``otherwise`` (or the error itself).
        """
        if max_size < 1:
            raise ConfigError("fallback.stale_size", max_size, "an integer >= 1")
        return cls(stale_size=max_size, stale_age=max_age, key=key, otherwise=otherwise)

    @property
    def caches(self) -> bool:
        """Whether good results need to be remembered."""
        return self._max_size > 0 or (self._otherwise is not None and self._otherwise.caches)

    def key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable | None:
        """The cache key of a call, or None when its arguments cannot be one."""
        try:
            key = self._key(args, kwargs)
            hash(key)
        except TypeError:
            return None
        return key

    def remember(self, key: Hashable | None, result: _T, now: float) -> None:
        """Keep ``result`` as the last good result for ``key``."""
        if key is None:
            return
        if self._max_size:
            with self._lock:
                cache = self._cache
                cache[key] = (now, result)
                cache.move_to_end(key)
                while len(cache) > self._max_size:
                    cache.popitem(last=False)
        if self._otherwise is not None:
            self._otherwise.remember(key, result, now)

    def resolve(self, key: Hashable | None, error: BaseException, now: float) -> Any:
        """The value to return instead of ``error``, or :data:`MISSING`."""
        if not isinstance(error, Exception):
            return MISSING
        if self._max_size and key is not None:
            with self._lock:
                entry = self._cache.get(key)
                if entry is not None and now - entry[0] > self._max_age:
                    del self._cache[key]
                    entry = None
                elif entry is not None:
                    self._cache.move_to_end(key)  # least recently *used* goes first
            if entry is not None:
                return entry[1]
        if self._factory is not None:
            return self._factory(error)
        if self._otherwise is not None:
            return self._otherwise.resolve(key, error, now)
        return MISSING
