"""The three errors a user of otelres catches, and nothing else.

They carry the figures a caller needs to act (which breaker, how long until it
probes again, how many attempts were made) so that nobody has to parse a message.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CircuitOpenError", "ConfigError", "OtelresError", "RetryError"]


class OtelresError(Exception):
    """Base class of every error otelres raises on its own account."""


class CircuitOpenError(OtelresError):
    """A call was rejected because its circuit breaker is open (or, with ``reason``
    ``"throttled"``, by the adaptive throttle beside a closed breaker).

    No attempt was made. ``retry_after`` is the number of seconds until the
    breaker admits a probe again (0.0 when it is half-open and all probe
    permits are taken), which servers turn into a ``Retry-After`` header.
    Construct it as ``CircuitOpenError(breaker_name, retry_after_seconds)``, or
    ``CircuitOpenError(breaker_name, 0.0, "throttled")``.
    """

    # No __init__ and no message built up front: a rejection is the hot path of
    # an outage, and a Python-level __init__ plus formatting cost more than the
    # rest of it. BaseException stores the two arguments in ``args``.
    args: tuple[str, float] | tuple[str, float, str]

    @property
    def reason(self) -> str:
        """Why the call was rejected: ``circuit_open``, or ``throttled`` (the adaptive throttle)."""
        args = self.args
        return args[2] if len(args) > 2 else "circuit_open"

    @property
    def breaker(self) -> str:
        """The name of the breaker that rejected the call."""
        return self.args[0]

    @property
    def retry_after(self) -> float:
        """Seconds until the breaker admits a probe (never negative)."""
        return max(0.0, self.args[1])

    def __str__(self) -> str:
        if self.reason == "throttled":
            return f"calls to {self.breaker!r} are throttled: it accepts too few of them lately"
        return f"circuit {self.breaker!r} is open; next probe in {self.retry_after:.3f} s"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), self.args[:2] if self.reason == "circuit_open" else self.args)


class RetryError(OtelresError):
    """Retries were exhausted (raised only where a policy asks for it).

    By default otelres re-raises the last error unchanged, so that code written
    against a client library keeps working; ``RetryPolicy(wrap_exhausted=True)``
    raises this instead. ``last_error`` is the exception of the last attempt, or
    ``None`` when the last attempt returned a result that counted as a failure
    (then ``last_result`` holds it).
    """

    def __init__(
        self,
        breaker: str,
        attempts: int,
        last_error: BaseException | None,
        last_result: Any = None,
    ) -> None:
        self.breaker = breaker
        self.attempts = attempts
        self.last_error = last_error
        self.last_result = last_result
        what = repr(last_error) if last_error is not None else repr(last_result)
        super().__init__(f"{breaker!r}: gave up after {attempts} attempt(s); last: {what}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.breaker, self.attempts, self.last_error, self.last_result))


class ConfigError(OtelresError, ValueError):
    """A configuration value is invalid: names the key, the value and what is allowed."""

    def __init__(self, key: str, value: object, allowed: str) -> None:
        self.key = key
        self.value = value
        self.allowed = allowed
        super().__init__(f"invalid value for {key}: {value!r} (allowed: {allowed})")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.key, self.value, self.allowed))


# Shown as ``otelres.CircuitOpenError`` (in Jaeger's exception.type, in tracebacks),
# not as the private module that defines them.
for _error in (OtelresError, CircuitOpenError, RetryError, ConfigError):
    _error.__module__ = "otelres"
