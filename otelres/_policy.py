"""Frozen, validated policy values: what a breaker, a retry and a budget do.

Policies are values: immutable, slotted, validated once at construction (a bad
value raises :class:`~otelres.ConfigError` naming the key, the value and what is
allowed) and changed by copying with :meth:`evolve`. The defaults are the ones
README.md lists, with the reason for each.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Callable
from typing import Any, TypeVar, Union
from urllib.parse import urlsplit

from ._backoff import JITTER_MODES, Jitter
from ._deadline import caused_by_caller_deadline
from ._dependency import is_dependency_error
from ._errors import CircuitOpenError, ConfigError
from ._names import safe_name

__all__ = [
    "BreakerPolicy",
    "BudgetPolicy",
    "ExceptionMatcher",
    "HttpPolicy",
    "RetryPolicy",
    "SharedState",
    "ThrottlePolicy",
    "as_exception_predicate",
]

#: What a policy accepts to select exceptions: a class, a tuple of classes, or a predicate.
ExceptionMatcher = Union[  # noqa: UP007 - a runtime alias; `X | Y` of generics needs 3.10+ at runtime anyway
    type[BaseException],
    tuple[type[BaseException], ...],
    Callable[[BaseException], bool],
]
ExceptionPredicate = Callable[[BaseException], bool]
ResultPredicate = Callable[[Any], bool]
_P = TypeVar("_P")


def _never(_: object) -> bool:
    return False


def as_exception_predicate(key: str, matcher: ExceptionMatcher | None) -> ExceptionPredicate:
    """Turn a class, a tuple of classes or a predicate into one predicate."""
    if matcher is None:
        return _never
    if isinstance(matcher, type):
        # A class is callable too: without this check retry_on=str would "match"
        # every exception that has a message.
        if not issubclass(matcher, BaseException):
            raise ConfigError(key, matcher, "an exception class, a tuple of them, or a predicate")
        classes: tuple[type[BaseException], ...] = (matcher,)
    elif isinstance(matcher, tuple):
        if not all(isinstance(c, type) and issubclass(c, BaseException) for c in matcher):
            raise ConfigError(key, matcher, "exception classes")
        classes = matcher
    elif callable(matcher):
        return matcher
    else:
        raise ConfigError(key, matcher, "an exception class, a tuple of them, or a predicate")

    def matches(exc: BaseException) -> bool:
        return isinstance(exc, classes)

    matches.__qualname__ = f"isinstance_of{tuple(c.__name__ for c in classes)}"
    return matches


def _check_number(
    key: str,
    value: object,
    *,
    low: float,
    high: float = math.inf,
    low_open: bool = False,
    integer: bool = False,
    optional: bool = False,
) -> None:
    kind = "an integer" if integer else "a number"
    low_text = f"> {_number(low)}" if low_open else f">= {_number(low)}"
    allowed = f"{kind} {low_text}" + ("" if high == math.inf else f" and <= {_number(high)}")
    if optional:
        allowed += " (or None: unset)"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(key, value, allowed)
    if integer and not isinstance(value, int):
        raise ConfigError(key, value, allowed)
    if not math.isfinite(value) or value > high or value < low or (low_open and value == low):
        raise ConfigError(key, value, allowed)


def _number(limit: float) -> str:
    """A limit as people write it: 1000000, not 1e+06; 0.5, not 0.500000."""
    return str(int(limit)) if float(limit).is_integer() else repr(float(limit))


def _check_optional(key: str, value: object, **limits: Any) -> None:
    if value is not None:
        _check_number(key, value, optional=True, **limits)


def _check_callable(key: str, value: object) -> None:
    if value is not None and not callable(value):
        raise ConfigError(key, value, "a callable or None")


class _Evolve:
    __slots__ = ()

    def evolve(self: _P, **changes: Any) -> _P:  # noqa: PYI019 - Self needs 3.11 or typing_extensions
        """A copy with ``changes`` applied, validated like a new policy."""
        fields = [f.name for f in dataclasses.fields(self) if f.init]  # type: ignore[arg-type]
        for name, value in changes.items():
            if name not in fields:
                close = difflib.get_close_matches(name, fields, n=1)
                hint = f"did you mean {close[0]!r}?" if close else "one of " + ", ".join(fields)
                raise ConfigError(f"{type(self).__name__}.{name}", value, f"a known field; {hint}")
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


#: The most buckets a throttle's window keeps: a window longer than this many seconds has
#: wider buckets, so that a day-long window costs no more memory than a ten-minute one.
THROTTLE_MAX_BUCKETS = 600


@dataclasses.dataclass(frozen=True, slots=True)
class ThrottlePolicy(_Evolve):
    """How hard a :class:`Throttle` throttles, and over how much history.

    ``k``: the dependency receives about ``k`` times the requests it accepts (2.0, the SRE
    book's value: at most one request in two wasted on a struggling dependency; 1.1 throttles
    almost down to what it accepts, for a dependency whose rejections cost as much as its work).
    ``window_seconds``: the history the counts cover (120 s, the book's two minutes: long enough
    not to react to a blip, short enough to follow an incident). ``min_requests``: no rejection
    before this many requests were counted in the window (20, as the breaker's
    ``minimum_calls``). ``max_rejection``: the most the rejection probability may be (0.9, as
    failsafe-go: one request in ten still probes the dependency, whatever it answered lately).
    """

    k: float = 2.0
    window_seconds: float = 120.0
    min_requests: int = 20
    max_rejection: float = 0.9
    #: False: configured but off (the configuration's default, ``throttle.enabled``).
    enabled: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ConfigError("throttle.enabled", self.enabled, "true | false")
        # k < 1 would throttle a dependency that accepts everything.
        _check_number("throttle.k", self.k, low=1.0, high=1000.0)
        _check_number("throttle.window_seconds", self.window_seconds, low=0.0, high=86400.0, low_open=True)
        _check_number("throttle.min_requests", self.min_requests, low=0, high=1_000_000, integer=True)
        _check_number("throttle.max_rejection", self.max_rejection, low=0.0, high=1.0, low_open=True)

    @property
    def buckets(self) -> int:
        """How many buckets the window is made of: one a second, at most :data:`MAX_BUCKETS`."""
        return min(THROTTLE_MAX_BUCKETS, max(1, math.ceil(self.window_seconds)))


@dataclasses.dataclass(frozen=True, slots=True)
class BreakerPolicy(_Evolve):
    """When a circuit breaker opens, how long it stays open, and how it probes.

    It trips when, over the window (the last ``window_seconds`` seconds, or the
    last ``window_calls`` calls when that is set) and once ``minimum_calls``
    were seen, the failure rate reaches ``failure_rate`` or the rate of calls
    slower than ``slow_call_seconds`` reaches ``slow_call_rate``; or after
    ``consecutive_failures`` failures in a row. It stays open ``open_seconds``,
    multiplied by ``open_backoff`` each time a probe fails, up to
    ``max_open_seconds``; then admits ``half_open_calls`` probes and closes when
    all of them succeed.

    An exception counts as a failure when ``failure_on`` matches it (by default
    the errors that say a dependency failed: see :mod:`otelres._dependency`)
    and ``ignore`` does not. Any other exception counts neither way (the
    caller's own mistake, or a cancellation), or as a success with
    ``others_succeed=True`` (what a client integration says: the server
    answered, with a SQL error say). A result counts as a failure when
    ``failure_result`` says so (HTTP 5xx).
    """

    failure_rate: float = 0.5
    minimum_calls: int = 20
    window_seconds: float = 30.0
    window_calls: int | None = None
    consecutive_failures: int | None = None
    slow_call_seconds: float | None = None
    slow_call_rate: float = 1.0
    open_seconds: float = 5.0
    open_backoff: float = 2.0
    max_open_seconds: float = 60.0
    half_open_calls: int = 1
    failure_on: ExceptionMatcher = is_dependency_error
    ignore: ExceptionMatcher | None = None
    failure_result: ResultPredicate | None = None
    others_succeed: bool = False
    #: Client-side adaptive throttling beside the breaker (None: none); see :class:`ThrottlePolicy`.
    throttle: ThrottlePolicy | None = None

    def __post_init__(self) -> None:
        _check_number("breaker.failure_rate", self.failure_rate, low=0.0, high=1.0, low_open=True)
        _check_number("breaker.minimum_calls", self.minimum_calls, low=1, integer=True)
        _check_number("breaker.window_seconds", self.window_seconds, low=1.0, high=86400.0)
        _check_optional("breaker.window_calls", self.window_calls, low=1, high=100_000, integer=True)
        _check_optional("breaker.consecutive_failures", self.consecutive_failures, low=1, integer=True)
        _check_optional("breaker.slow_call_seconds", self.slow_call_seconds, low=0.0, low_open=True)
        _check_number("breaker.slow_call_rate", self.slow_call_rate, low=0.0, high=1.0, low_open=True)
        _check_number("breaker.open_seconds", self.open_seconds, low=0.0, high=86400.0, low_open=True)
        _check_number("breaker.open_backoff", self.open_backoff, low=1.0, high=100.0)
        _check_number("breaker.max_open_seconds", self.max_open_seconds, low=0.0, high=86400.0, low_open=True)
        _check_number("breaker.half_open_calls", self.half_open_calls, low=1, high=10_000, integer=True)
        if self.max_open_seconds < self.open_seconds:
            raise ConfigError(
                "breaker.max_open_seconds",
                self.max_open_seconds,
                f"a number >= breaker.open_seconds ({self.open_seconds:g})",
            )
        _check_callable("breaker.failure_result", self.failure_result)
        if not isinstance(self.others_succeed, bool):
            raise ConfigError("breaker.others_succeed", self.others_succeed, "true | false")
        if self.throttle is not None and not isinstance(self.throttle, ThrottlePolicy):
            raise ConfigError("breaker.throttle", self.throttle, "an otelres.ThrottlePolicy or None")
        # Normalised once here so that the hot path calls one predicate.
        object.__setattr__(self, "_is_failure", as_exception_predicate("breaker.failure_on", self.failure_on))
        object.__setattr__(self, "_is_ignored", as_exception_predicate("breaker.ignore", self.ignore))

    # Filled in by __post_init__; declared for the type checker and the slots.
    _is_failure: ExceptionPredicate = dataclasses.field(init=False, repr=False, compare=False, default=_never)
    _is_ignored: ExceptionPredicate = dataclasses.field(init=False, repr=False, compare=False, default=_never)

    def classify(self, exc: BaseException) -> bool | None:
        """True: a failure; False: a success; None: ignored."""
        if isinstance(exc, CircuitOpenError) or self._is_ignored(exc) or caused_by_caller_deadline(exc):
            # A timeout the caller's short deadline caused says nothing about the dependency.
            return None
        if self._is_failure(exc):
            return True
        # A cancellation or an interpreter exit says nothing about the dependency.
        return False if self.others_succeed and isinstance(exc, Exception) else None

    def judge(self, exc: BaseException | None, result: Any = None) -> bool | None:
        """Whether an attempt that raised ``exc`` (or, when None, returned ``result``)
        counts as a failure: True, False (a success) or None (neither way).
        """
        if exc is not None:
            return self.classify(exc)
        predicate = self.failure_result
        return bool(predicate(result)) if predicate is not None else False


def _default_reason(exc: BaseException | None, result: object) -> str:  # noqa: ARG001 - the reason hook's signature
    """A short, bounded label for why an attempt is retried (a metric attribute)."""
    if exc is None:
        return "result"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionError):
        return "connect"
    return "error"


@dataclasses.dataclass(frozen=True, slots=True)
class RetryPolicy(_Evolve):
    """How often, after what delay, and on what a call is retried.

    ``attempts`` counts every attempt, the first included (1 disables retries).
    The delay before retry *n* follows ``jitter`` (see
    :func:`otelres._backoff.backoff_delay`) with ``base_delay`` and
    ``max_delay``; a server's ``Retry-After`` (found by ``retry_after``) replaces
    it when it is at most ``retry_after_cap`` seconds, and a longer one ends the
    retries. ``deadline`` bounds one logical call, retries included: no retry is
    scheduled that could not start before it. ``retry_on`` selects the
    exceptions and ``retry_on_result`` the results worth another attempt.

    When the attempts are spent, the last exception is re-raised unchanged and
    the last result returned as it came, unless ``wrap_exhausted`` asks for
    :class:`~otelres.RetryError`.
    """

    attempts: int = 3
    base_delay: float = 0.1
    max_delay: float = 5.0
    jitter: Jitter = "full"
    deadline: float | None = None
    retry_on: ExceptionMatcher = is_dependency_error
    retry_on_result: ResultPredicate | None = None
    retry_after: Callable[[BaseException | None, Any], float | None] | None = None
    retry_after_cap: float = 30.0
    reason: Callable[[BaseException | None, Any], str] = _default_reason
    wrap_exhausted: bool = False

    def __post_init__(self) -> None:
        _check_number("retry.attempts", self.attempts, low=1, high=100, integer=True)
        _check_number("retry.base_delay", self.base_delay, low=0.0, high=3600.0)
        _check_number("retry.max_delay", self.max_delay, low=0.0, high=3600.0)
        if self.max_delay < self.base_delay:
            raise ConfigError(
                "retry.max_delay", self.max_delay, f"a number >= retry.base_delay ({self.base_delay:g})"
            )
        if self.jitter not in JITTER_MODES:
            raise ConfigError("retry.jitter", self.jitter, " | ".join(JITTER_MODES))
        _check_optional("retry.deadline", self.deadline, low=0.0, low_open=True)
        _check_number("retry.retry_after_cap", self.retry_after_cap, low=0.0, high=86400.0)
        _check_callable("retry.retry_on_result", self.retry_on_result)
        _check_callable("retry.retry_after", self.retry_after)
        if not callable(self.reason):
            raise ConfigError("retry.reason", self.reason, "a callable (exception, result) -> str")
        if not isinstance(self.wrap_exhausted, bool):
            raise ConfigError("retry.wrap_exhausted", self.wrap_exhausted, "true | false")
        object.__setattr__(self, "_retries_on", as_exception_predicate("retry.retry_on", self.retry_on))

    _retries_on: ExceptionPredicate = dataclasses.field(init=False, repr=False, compare=False, default=_never)

    def should_retry(self, exc: BaseException) -> bool:
        """Whether an attempt that raised ``exc`` is worth another one."""
        # A cancellation or an interpreter exit is never retried, whatever the
        # predicate says: retrying it would keep a cancelled task running.
        return (
            isinstance(exc, Exception)
            and not isinstance(exc, CircuitOpenError)
            and bool(self._retries_on(exc))
        )


@dataclasses.dataclass(frozen=True, slots=True)
class BudgetPolicy(_Evolve):
    """Envoy's retry budget: retries in flight <= max(``min_retries``, ``ratio`` * calls in flight).

    A quiet service keeps ``min_retries`` concurrent retries, so a lone caller
    still retries; under load, retries can add at most ``ratio`` to the load an
    outage already causes. ``enabled=False`` removes the limit.
    """

    ratio: float = 0.2
    min_retries: int = 3
    enabled: bool = True

    def __post_init__(self) -> None:
        _check_number("budget.ratio", self.ratio, low=0.0, high=1.0)
        _check_number("budget.min_retries", self.min_retries, low=0, high=1_000_000, integer=True)
        if not isinstance(self.enabled, bool):
            raise ConfigError("budget.enabled", self.enabled, "true | false")


@dataclasses.dataclass(frozen=True, slots=True)
class HttpPolicy(_Evolve):
    """What the HTTP integrations may retry beyond their defaults.

    ``retry_500``: also retry a 500 response (off by default: a 500 is more
    often a bug than a blip). ``retry_unsafe``: retry POST and PATCH too, for a
    server known to deduplicate them.
    """

    retry_500: bool = False
    retry_unsafe: bool = False

    def __post_init__(self) -> None:
        for key in ("retry_500", "retry_unsafe"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"http.{key}", getattr(self, key), "true | false")


@dataclasses.dataclass(frozen=True, slots=True)
class SharedState:
    """Where the fleet's breaker state lives and how often a process syncs with it.

    ``url``: ``redis://host:port/db`` (``rediss://`` for TLS, ``unix://`` for a
    socket); ``interval``: seconds between syncs; ``service``: the key
    namespace (default: ``OTEL_SERVICE_NAME``): processes of one service share
    their breakers, other services never see them.
    """

    url: str = dataclasses.field(repr=False)
    interval: float = 1.0
    service: str | None = None

    def __post_init__(self) -> None:
        parts = None
        if isinstance(self.url, str):
            try:
                parts = urlsplit(self.url)
                parts.port  # noqa: B018 - raises ValueError for a bad port
            except ValueError:
                parts = None
        if (
            parts is None
            or parts.scheme not in ("redis", "rediss", "unix")
            or not (parts.hostname or parts.path)
        ):
            # Never a password in a message: the URL as telemetry would show a name.
            shown = safe_name(self.url) if isinstance(self.url, str) and self.url.strip() else self.url
            raise ConfigError(
                "shared_state.url", shown, "redis://host:port/db, rediss://host:port/db or unix:///path"
            )
        _check_number("shared_state.interval", self.interval, low=0.05, high=60.0)
        if self.service is not None and (not isinstance(self.service, str) or not self.service.strip()):
            raise ConfigError("shared_state.service", self.service, "a non-empty service name, or None")

    def __repr__(self) -> str:
        return (
            f"SharedState(url={safe_name(self.url)!r}, interval={self.interval!r}, service={self.service!r})"
        )

    @property
    def ttl(self) -> float:
        """How long a process's published counts live after its last sync."""
        return max(3 * self.interval, 1.0)

    @property
    def timeout(self) -> float:
        """The round trip's time limit: past it the process decides alone."""
        return min(0.5, self.interval / 2)
