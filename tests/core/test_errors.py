"""The three errors a user catches: their figures, messages, hierarchy and pickling."""

from __future__ import annotations

import copy
import pickle

import pytest

import otelres
from otelres import CircuitOpenError, ConfigError, OtelresError, RetryError

PROTOCOLS = list(range(pickle.HIGHEST_PROTOCOL + 1))


def roundtrip(exc: BaseException, protocol: int = pickle.HIGHEST_PROTOCOL) -> BaseException:
    return pickle.loads(pickle.dumps(exc, protocol=protocol))  # noqa: S301 - our own bytes


# -- CircuitOpenError -------------------------------------------------------------------------------


def test_circuit_open_error_carries_breaker_and_retry_after() -> None:
    """CircuitOpenError holds the breaker name and the seconds until the next probe."""
    err = CircuitOpenError("https://api.example.com:443", 2.5)
    assert err.breaker == "https://api.example.com:443"
    assert err.retry_after == 2.5
    assert str(err) == "circuit 'https://api.example.com:443' is open; next probe in 2.500 s"


@pytest.mark.parametrize("retry_after", [-0.001, -5.0, -1e9])
def test_circuit_open_error_clamps_negative_retry_after_to_zero(retry_after: float) -> None:
    """A negative retry_after (a probe already due) becomes 0.0, also in the message."""
    err = CircuitOpenError("db", retry_after)
    assert err.retry_after == 0.0
    assert str(err).endswith("next probe in 0.000 s")


def test_circuit_open_error_zero_retry_after_is_kept() -> None:
    """retry_after=0 (half-open, permits taken) is kept as 0.0."""
    assert CircuitOpenError("db", 0).retry_after == 0.0


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_circuit_open_error_pickles(protocol: int) -> None:
    """A pickled CircuitOpenError comes back with the same breaker, retry_after and message."""
    err = CircuitOpenError("redis://cache:6379", 1.25)
    back = roundtrip(err, protocol)
    assert type(back) is CircuitOpenError
    assert back.breaker == "redis://cache:6379"
    assert back.retry_after == 1.25
    assert str(back) == str(err)


def test_circuit_open_error_pickles_after_clamping() -> None:
    """A clamped retry_after survives pickling as 0.0."""
    back = roundtrip(CircuitOpenError("db", -3.0))
    assert back.retry_after == 0.0


def test_circuit_open_error_is_not_a_value_error() -> None:
    """CircuitOpenError is an OtelresError, never caught by `except ValueError`."""
    err = CircuitOpenError("db", 1.0)
    assert isinstance(err, OtelresError)
    assert not isinstance(err, ValueError)


# -- RetryError -------------------------------------------------------------------------------------


def test_retry_error_carries_attempts_and_last_error() -> None:
    """RetryError holds the breaker, the attempts made and the last exception."""
    last = ConnectionError("refused")
    err = RetryError("payments", 3, last)
    assert err.breaker == "payments"
    assert err.attempts == 3
    assert err.last_error is last
    assert err.last_result is None
    assert str(err) == "'payments': gave up after 3 attempt(s); last: ConnectionError('refused')"


def test_retry_error_with_a_failed_result() -> None:
    """Exhausted on a result: last_error is None, last_result holds it, the message shows it."""
    err = RetryError("https://api.example.com:443", 2, None, last_result=503)
    assert err.last_error is None
    assert err.last_result == 503
    assert str(err).endswith("gave up after 2 attempt(s); last: 503")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_retry_error_pickles(protocol: int) -> None:
    """A pickled RetryError keeps breaker, attempts, last_error (type and args) and last_result."""
    err = RetryError("payments", 4, LookupError("slow"), last_result={"status": 504})
    back = roundtrip(err, protocol)
    assert type(back) is RetryError
    assert (back.breaker, back.attempts, back.last_result) == ("payments", 4, {"status": 504})
    assert type(back.last_error) is LookupError
    assert back.last_error.args == ("slow",)
    assert str(back) == str(err)


def test_retry_error_is_an_otelres_error() -> None:
    """RetryError is an OtelresError and not a ValueError."""
    err = RetryError("x", 1, None)
    assert isinstance(err, OtelresError)
    assert not isinstance(err, ValueError)


# -- ConfigError ------------------------------------------------------------------------------------


def test_config_error_carries_key_value_and_allowed() -> None:
    """ConfigError holds the key, the bad value and what is allowed, and says all three."""
    err = ConfigError("OTELRES_RETRY_ATTEMPTS", "three", "an integer")
    assert (err.key, err.value, err.allowed) == ("OTELRES_RETRY_ATTEMPTS", "three", "an integer")
    assert str(err) == "invalid value for OTELRES_RETRY_ATTEMPTS: 'three' (allowed: an integer)"


def test_config_error_is_a_value_error() -> None:
    """`except ValueError` catches a ConfigError, as it does for any bad argument."""
    with pytest.raises(ValueError, match=r"retry\.attempts"):
        otelres.RetryPolicy(attempts=0)
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_config_error_pickles(protocol: int) -> None:
    """A pickled ConfigError keeps key, value and allowed."""
    err = ConfigError("breaker.failure_rate", [1.5], "a number > 0 and <= 1")
    back = roundtrip(err, protocol)
    assert type(back) is ConfigError
    assert (back.key, back.value, back.allowed) == ("breaker.failure_rate", [1.5], "a number > 0 and <= 1")
    assert str(back) == str(err)


def test_config_error_raised_by_a_policy_pickles() -> None:
    """A ConfigError as a policy raises it survives pickling (e.g. across a process pool)."""
    with pytest.raises(ConfigError) as info:
        otelres.BudgetPolicy(ratio=2.0)
    back = roundtrip(info.value)
    assert (back.key, back.value, back.allowed) == (info.value.key, 2.0, info.value.allowed)


# -- all three ------------------------------------------------------------------------------------


ALL = [CircuitOpenError("b", 1.0), RetryError("b", 2, ValueError("v")), ConfigError("k", 1, "x")]


@pytest.mark.parametrize("err", ALL, ids=lambda e: type(e).__name__)
def test_every_error_is_an_otelres_error(err: Exception) -> None:
    """Each error is caught by `except otelres.OtelresError`, which is an Exception."""
    assert isinstance(err, OtelresError)
    assert issubclass(OtelresError, Exception)
    with pytest.raises(OtelresError):
        raise err


@pytest.mark.parametrize("err", ALL, ids=lambda e: type(e).__name__)
def test_every_error_copies(err: Exception) -> None:
    """copy.copy and copy.deepcopy keep the type and the message."""
    for clone in (copy.copy(err), copy.deepcopy(err)):
        assert type(clone) is type(err)
        assert str(clone) == str(err)
        assert vars(clone).keys() == vars(err).keys()


def test_errors_are_exported_at_the_top_level() -> None:
    """The errors are importable from otelres and listed in __all__."""
    for name in ("CircuitOpenError", "ConfigError", "OtelresError", "RetryError"):
        assert name in otelres.__all__
    assert otelres.ConfigError is ConfigError
