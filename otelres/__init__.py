"""otelres: circuit breakers, jittered retries and OpenTelemetry for a Python service's dependencies.

This module only re-exports; the code lives in the private modules.
"""

from __future__ import annotations

from ._backoff import backoff_delay, parse_retry_after
from ._breaker import BreakerStats, CircuitBreaker, State, Transition
from ._budget import RetryBudget
from ._clock import Clock, MonotonicClock
from ._config import Settings, configure, load_settings
from ._deadline import deadline, time_left
from ._degrade import degrade
from ._errors import CircuitOpenError, ConfigError, OtelresError, RetryError
from ._events import Event, Listener, add_listener, remove_listener
from ._fallback import Fallback
from ._flow import Guard, current_attempt
from ._idempotency import retry_unsafe
from ._instrument import instrument, uninstrument
from ._limit import AdaptiveLimit, FixedLimit
from ._policy import BreakerPolicy, BudgetPolicy, RetryPolicy, SharedState, ThrottlePolicy
from ._registry import Profile, Registry, default_registry
from ._resilience import Attempt, Resilience, resilient
from ._throttle import AdaptiveThrottle, ThrottleStats

__all__ = [
    "AdaptiveLimit",
    "AdaptiveThrottle",
    "Attempt",
    "BreakerPolicy",
    "BreakerStats",
    "BudgetPolicy",
    "CircuitBreaker",
    "CircuitOpenError",
    "Clock",
    "ConfigError",
    "Event",
    "Fallback",
    "FixedLimit",
    "Guard",
    "Listener",
    "MonotonicClock",
    "OtelresError",
    "Profile",
    "Registry",
    "Resilience",
    "RetryBudget",
    "RetryError",
    "RetryPolicy",
    "Settings",
    "SharedState",
    "State",
    "ThrottlePolicy",
    "ThrottleStats",
    "Transition",
    "add_listener",
    "backoff_delay",
    "configure",
    "current_attempt",
    "deadline",
    "default_registry",
    "degrade",
    "instrument",
    "load_settings",
    "parse_retry_after",
    "remove_listener",
    "resilient",
    "retry_unsafe",
    "time_left",
    "uninstrument",
]

#: The one place the version is written: the package metadata (hatch) and the telemetry's
#: instrumentation scope read it from here.
__version__ = "0.1.0"
