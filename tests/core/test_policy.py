"""Policies: validated at construction, frozen, compared by value, copied with evolve()."""

from __future__ import annotations

import asyncio
import dataclasses
import math

import pytest

import otelres
from otelres import BreakerPolicy, BudgetPolicy, CircuitOpenError, ConfigError, RetryPolicy

NAN = math.nan
INF = math.inf


# (policy class, field, bad value, the key the error names)
BAD: list[tuple[type, str, object, str]] = [
    # BreakerPolicy
    (BreakerPolicy, "failure_rate", "0.5", "breaker.failure_rate"),
    (BreakerPolicy, "failure_rate", True, "breaker.failure_rate"),
    (BreakerPolicy, "failure_rate", None, "breaker.failure_rate"),
    (BreakerPolicy, "failure_rate", NAN, "breaker.failure_rate"),
    (BreakerPolicy, "failure_rate", INF, "breaker.failure_rate"),
    (BreakerPolicy, "failure_rate", 0.0, "breaker.failure_rate"),
    (BreakerPolicy, "failure_rate", 1.01, "breaker.failure_rate"),
    (BreakerPolicy, "failure_rate", -0.5, "breaker.failure_rate"),
    (BreakerPolicy, "minimum_calls", 20.0, "breaker.minimum_calls"),
    (BreakerPolicy, "minimum_calls", True, "breaker.minimum_calls"),
    (BreakerPolicy, "minimum_calls", "20", "breaker.minimum_calls"),
    (BreakerPolicy, "minimum_calls", 0, "breaker.minimum_calls"),
    (BreakerPolicy, "minimum_calls", None, "breaker.minimum_calls"),
    (BreakerPolicy, "window_seconds", 0.5, "breaker.window_seconds"),
    (BreakerPolicy, "window_seconds", 86400.5, "breaker.window_seconds"),
    (BreakerPolicy, "window_seconds", NAN, "breaker.window_seconds"),
    (BreakerPolicy, "window_seconds", INF, "breaker.window_seconds"),
    (BreakerPolicy, "window_seconds", True, "breaker.window_seconds"),
    (BreakerPolicy, "window_seconds", "30", "breaker.window_seconds"),
    (BreakerPolicy, "window_calls", 0, "breaker.window_calls"),
    (BreakerPolicy, "window_calls", 100_001, "breaker.window_calls"),
    (BreakerPolicy, "window_calls", 10.0, "breaker.window_calls"),
    (BreakerPolicy, "window_calls", True, "breaker.window_calls"),
    (BreakerPolicy, "consecutive_failures", 0, "breaker.consecutive_failures"),
    (BreakerPolicy, "consecutive_failures", 2.0, "breaker.consecutive_failures"),
    (BreakerPolicy, "consecutive_failures", False, "breaker.consecutive_failures"),
    (BreakerPolicy, "slow_call_seconds", 0, "breaker.slow_call_seconds"),
    (BreakerPolicy, "slow_call_seconds", -1.0, "breaker.slow_call_seconds"),
    (BreakerPolicy, "slow_call_seconds", NAN, "breaker.slow_call_seconds"),
    (BreakerPolicy, "slow_call_seconds", INF, "breaker.slow_call_seconds"),
    (BreakerPolicy, "slow_call_seconds", True, "breaker.slow_call_seconds"),
    (BreakerPolicy, "slow_call_rate", 0.0, "breaker.slow_call_rate"),
    (BreakerPolicy, "slow_call_rate", 1.5, "breaker.slow_call_rate"),
    (BreakerPolicy, "slow_call_rate", NAN, "breaker.slow_call_rate"),
    (BreakerPolicy, "open_seconds", 0.0, "breaker.open_seconds"),
    (BreakerPolicy, "open_seconds", -5.0, "breaker.open_seconds"),
    (BreakerPolicy, "open_seconds", 86401.0, "breaker.open_seconds"),
    (BreakerPolicy, "open_seconds", INF, "breaker.open_seconds"),
    (BreakerPolicy, "open_seconds", NAN, "breaker.open_seconds"),
    (BreakerPolicy, "open_seconds", "5", "breaker.open_seconds"),
    (BreakerPolicy, "open_backoff", 0.99, "breaker.open_backoff"),
    (BreakerPolicy, "open_backoff", 101.0, "breaker.open_backoff"),
    (BreakerPolicy, "open_backoff", NAN, "breaker.open_backoff"),
    (BreakerPolicy, "open_backoff", True, "breaker.open_backoff"),
    (BreakerPolicy, "max_open_seconds", 0.0, "breaker.max_open_seconds"),
    (BreakerPolicy, "max_open_seconds", 86401.0, "breaker.max_open_seconds"),
    (BreakerPolicy, "max_open_seconds", INF, "breaker.max_open_seconds"),
    (BreakerPolicy, "max_open_seconds", 4.0, "breaker.max_open_seconds"),  # < open_seconds (5)
    (BreakerPolicy, "half_open_calls", 0, "breaker.half_open_calls"),
    (BreakerPolicy, "half_open_calls", 10_001, "breaker.half_open_calls"),
    (BreakerPolicy, "half_open_calls", 1.0, "breaker.half_open_calls"),
    (BreakerPolicy, "half_open_calls", True, "breaker.half_open_calls"),
    (BreakerPolicy, "failure_on", "ValueError", "breaker.failure_on"),
    (BreakerPolicy, "failure_on", 5, "breaker.failure_on"),
    (BreakerPolicy, "failure_on", (ValueError, "KeyError"), "breaker.failure_on"),
    (BreakerPolicy, "failure_on", (ValueError, int), "breaker.failure_on"),
    (BreakerPolicy, "failure_on", [ValueError], "breaker.failure_on"),
    (BreakerPolicy, "ignore", "KeyError", "breaker.ignore"),
    (BreakerPolicy, "ignore", (KeyError, 3), "breaker.ignore"),
    (BreakerPolicy, "failure_result", 503, "breaker.failure_result"),
    (BreakerPolicy, "failure_result", "status >= 500", "breaker.failure_result"),
    (BreakerPolicy, "others_succeed", "yes", "breaker.others_succeed"),
    (BreakerPolicy, "throttle", {"k": 2.0}, "breaker.throttle"),
    (BreakerPolicy, "throttle", True, "breaker.throttle"),
    # RetryPolicy
    (RetryPolicy, "attempts", 0, "retry.attempts"),
    (RetryPolicy, "attempts", -1, "retry.attempts"),
    (RetryPolicy, "attempts", 101, "retry.attempts"),
    (RetryPolicy, "attempts", 3.0, "retry.attempts"),
    (RetryPolicy, "attempts", True, "retry.attempts"),
    (RetryPolicy, "attempts", "3", "retry.attempts"),
    (RetryPolicy, "attempts", None, "retry.attempts"),
    (RetryPolicy, "base_delay", -0.1, "retry.base_delay"),
    (RetryPolicy, "base_delay", 3601.0, "retry.base_delay"),
    (RetryPolicy, "base_delay", NAN, "retry.base_delay"),
    (RetryPolicy, "base_delay", INF, "retry.base_delay"),
    (RetryPolicy, "base_delay", True, "retry.base_delay"),
    (RetryPolicy, "base_delay", "0.1", "retry.base_delay"),
    (RetryPolicy, "max_delay", -1.0, "retry.max_delay"),
    (RetryPolicy, "max_delay", 3601.0, "retry.max_delay"),
    (RetryPolicy, "max_delay", NAN, "retry.max_delay"),
    (RetryPolicy, "max_delay", INF, "retry.max_delay"),
    (RetryPolicy, "max_delay", 0.05, "retry.max_delay"),  # < base_delay (0.1)
    (RetryPolicy, "jitter", "random", "retry.jitter"),
    (RetryPolicy, "jitter", "FULL", "retry.jitter"),
    (RetryPolicy, "jitter", "", "retry.jitter"),
    (RetryPolicy, "jitter", None, "retry.jitter"),
    (RetryPolicy, "jitter", ["full"], "retry.jitter"),
    (RetryPolicy, "deadline", 0, "retry.deadline"),
    (RetryPolicy, "deadline", -1.0, "retry.deadline"),
    (RetryPolicy, "deadline", NAN, "retry.deadline"),
    (RetryPolicy, "deadline", INF, "retry.deadline"),
    (RetryPolicy, "deadline", True, "retry.deadline"),
    (RetryPolicy, "deadline", "5", "retry.deadline"),
    (RetryPolicy, "retry_after_cap", -1.0, "retry.retry_after_cap"),
    (RetryPolicy, "retry_after_cap", 86401.0, "retry.retry_after_cap"),
    (RetryPolicy, "retry_after_cap", INF, "retry.retry_after_cap"),
    (RetryPolicy, "retry_after_cap", NAN, "retry.retry_after_cap"),
    (RetryPolicy, "retry_on", "ConnectionError", "retry.retry_on"),
    (RetryPolicy, "retry_on", 5, "retry.retry_on"),
    (RetryPolicy, "retry_on", (OSError, "x"), "retry.retry_on"),
    (RetryPolicy, "retry_on", (OSError, object), "retry.retry_on"),
    (RetryPolicy, "retry_on_result", 503, "retry.retry_on_result"),
    (RetryPolicy, "retry_after", "Retry-After", "retry.retry_after"),
    (RetryPolicy, "reason", "timeout", "retry.reason"),
    (RetryPolicy, "wrap_exhausted", 1, "retry.wrap_exhausted"),
    (RetryPolicy, "wrap_exhausted", "true", "retry.wrap_exhausted"),
    (RetryPolicy, "wrap_exhausted", None, "retry.wrap_exhausted"),
    # BudgetPolicy
    (BudgetPolicy, "ratio", -0.1, "budget.ratio"),
    (BudgetPolicy, "ratio", 1.1, "budget.ratio"),
    (BudgetPolicy, "ratio", NAN, "budget.ratio"),
    (BudgetPolicy, "ratio", INF, "budget.ratio"),
    (BudgetPolicy, "ratio", True, "budget.ratio"),
    (BudgetPolicy, "ratio", "0.2", "budget.ratio"),
    (BudgetPolicy, "min_retries", -1, "budget.min_retries"),
    (BudgetPolicy, "min_retries", 1_000_001, "budget.min_retries"),
    (BudgetPolicy, "min_retries", 3.0, "budget.min_retries"),
    (BudgetPolicy, "min_retries", True, "budget.min_retries"),
    (BudgetPolicy, "enabled", 1, "budget.enabled"),
    (BudgetPolicy, "enabled", "false", "budget.enabled"),
    (BudgetPolicy, "enabled", None, "budget.enabled"),
]


def _case_id(case: tuple[type, str, object, str]) -> str:
    cls, field, value, _ = case
    return f"{cls.__name__}.{field}={value!r}"


def _same(a: object, b: object) -> bool:
    """Identity, or both NaN."""
    return a is b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


@pytest.mark.parametrize(("cls", "field", "value", "key"), BAD, ids=[_case_id(c) for c in BAD])
def test_bad_value_raises_config_error_naming_the_key(cls: type, field: str, value: object, key: str) -> None:
    """Each bad value is a ConfigError naming the dotted key, carrying the value and what is allowed."""
    with pytest.raises(ConfigError) as info:
        cls(**{field: value})
    err = info.value
    assert err.key == key
    assert _same(err.value, value)
    assert err.allowed
    assert str(err).startswith(f"invalid value for {key}: {value!r} (allowed: ")


@pytest.mark.parametrize(("cls", "field", "value", "key"), BAD, ids=[_case_id(c) for c in BAD])
def test_evolve_validates_like_construction(cls: type, field: str, value: object, key: str) -> None:
    """evolve() with a bad value raises the same ConfigError as construction."""
    with pytest.raises(ConfigError) as info:
        cls().evolve(**{field: value})
    assert info.value.key == key


def test_bad_value_table_covers_every_validated_field() -> None:
    """Every init field of each policy has at least one bad value above."""
    for cls in (BreakerPolicy, RetryPolicy, BudgetPolicy):
        fields = {f.name for f in dataclasses.fields(cls) if f.init}
        covered = {field for c, field, *_ in BAD if c is cls}
        assert fields == covered, cls.__name__


def test_cross_field_messages_name_the_other_key() -> None:
    """max_delay < base_delay and max_open_seconds < open_seconds say which bound they broke."""
    with pytest.raises(ConfigError) as info:
        RetryPolicy(base_delay=2.0, max_delay=1.0)
    assert info.value.allowed == "a number >= retry.base_delay (2)"
    with pytest.raises(ConfigError) as info:
        BreakerPolicy(open_seconds=30.0, max_open_seconds=10.0)
    assert info.value.key == "breaker.max_open_seconds"
    assert info.value.allowed == "a number >= breaker.open_seconds (30)"


@pytest.mark.parametrize(
    ("cls", "changes"),
    [
        (BreakerPolicy, {"failure_rate": 1.0, "window_seconds": 1.0, "window_calls": 1}),
        (BreakerPolicy, {"window_seconds": 86400.0, "window_calls": 100_000, "half_open_calls": 10_000}),
        (BreakerPolicy, {"open_backoff": 1.0, "open_seconds": 60.0, "max_open_seconds": 60.0}),
        (BreakerPolicy, {"open_backoff": 100.0, "slow_call_rate": 1.0, "slow_call_seconds": 1e-6}),
        (BreakerPolicy, {"minimum_calls": 1, "consecutive_failures": 1, "ignore": None}),
        (RetryPolicy, {"attempts": 1, "base_delay": 0.0, "max_delay": 0.0}),
        (RetryPolicy, {"attempts": 100, "base_delay": 3600.0, "max_delay": 3600.0}),
        (RetryPolicy, {"deadline": 0.001, "retry_after_cap": 0.0}),
        (RetryPolicy, {"deadline": 1e9, "retry_after_cap": 86400.0}),
        (RetryPolicy, {"jitter": "none", "wrap_exhausted": True}),
        (RetryPolicy, {"jitter": "equal"}),
        (RetryPolicy, {"jitter": "decorrelated"}),
        (BudgetPolicy, {"ratio": 0.0, "min_retries": 0}),
        (BudgetPolicy, {"ratio": 1.0, "min_retries": 1_000_000, "enabled": False}),
    ],
)
def test_boundary_values_are_accepted(cls: type, changes: dict[str, object]) -> None:
    """Values on the edges of each allowed range construct a policy holding them."""
    policy = cls(**changes)
    for field, value in changes.items():
        assert getattr(policy, field) == value


FLOAT_FIELDS = [
    (BreakerPolicy, "failure_rate"),
    (BreakerPolicy, "window_seconds"),
    (BreakerPolicy, "slow_call_seconds"),
    (BreakerPolicy, "slow_call_rate"),
    (BreakerPolicy, "open_seconds"),
    (BreakerPolicy, "open_backoff"),
    (BreakerPolicy, "max_open_seconds"),
    (RetryPolicy, "base_delay"),
    (RetryPolicy, "max_delay"),
    (RetryPolicy, "deadline"),
    (RetryPolicy, "retry_after_cap"),
    (BudgetPolicy, "ratio"),
]


@pytest.mark.parametrize("value", [INF, -INF, NAN])
@pytest.mark.parametrize(("cls", "field"), FLOAT_FIELDS, ids=[f"{c.__name__}.{f}" for c, f in FLOAT_FIELDS])
def test_non_finite_numbers_are_refused_everywhere(cls: type, field: str, value: float) -> None:
    """inf, -inf and nan are refused by every number field, bounded above or not."""
    with pytest.raises(ConfigError) as info:
        cls(**{field: value})
    assert info.value.key.endswith("." + field)
    assert _same(info.value.value, value)


@pytest.mark.parametrize(
    ("make", "allowed"),
    [
        (lambda: RetryPolicy(attempts=0), "an integer >= 1 and <= 100"),
        (lambda: RetryPolicy(deadline=0), "a number > 0 (or None: unset)"),
        (lambda: BreakerPolicy(window_calls=0), "an integer >= 1 and <= 100000 (or None: unset)"),
        (lambda: BreakerPolicy(consecutive_failures=0), "an integer >= 1 (or None: unset)"),
        (lambda: BreakerPolicy(slow_call_seconds=-1.0), "a number > 0 (or None: unset)"),
        (lambda: BreakerPolicy(failure_rate=2.0), "a number > 0 and <= 1"),
        (lambda: BreakerPolicy(window_seconds=0.5), "a number >= 1 and <= 86400"),
        (lambda: BudgetPolicy(min_retries=-1), "an integer >= 0 and <= 1000000"),
    ],
)
def test_allowed_text_states_the_range_plainly(make: object, allowed: str) -> None:
    """Limits print as written (1000000, not 1e+06), and optional keys add "(or None: unset)"."""
    with pytest.raises(ConfigError) as info:
        make()  # type: ignore[operator]
    assert info.value.allowed == allowed


def test_integer_is_accepted_where_a_float_is_wanted() -> None:
    """A float field accepts an int (5 for 5.0)."""
    assert BreakerPolicy(open_seconds=5).open_seconds == 5.0
    assert RetryPolicy(base_delay=1, max_delay=2).max_delay == 2.0


# -- evolve, frozen, value semantics -------------------------------------------------------------


def test_evolve_returns_a_changed_copy_and_leaves_the_original() -> None:
    """evolve() gives a new policy with the change; the original keeps its values."""
    original = RetryPolicy(attempts=4, base_delay=0.2)
    changed = original.evolve(attempts=6)
    assert changed is not original
    assert (changed.attempts, changed.base_delay) == (6, 0.2)
    assert original.attempts == 4
    assert original == RetryPolicy(attempts=4, base_delay=0.2)


def test_evolve_checks_cross_field_rules_against_the_kept_values() -> None:
    """evolve(base_delay=) is checked against the max_delay the copy keeps."""
    with pytest.raises(ConfigError) as info:
        RetryPolicy(max_delay=1.0).evolve(base_delay=2.0)
    assert info.value.key == "retry.max_delay"
    assert RetryPolicy(max_delay=1.0).evolve(base_delay=2.0, max_delay=3.0).base_delay == 2.0


def test_evolve_renormalises_exception_matchers() -> None:
    """After evolve(failure_on=...), classify follows the new matcher, not the old one."""
    policy = BreakerPolicy(failure_on=ValueError)
    changed = policy.evolve(failure_on=KeyError)
    assert changed.classify(KeyError("k")) is True
    assert changed.classify(ValueError("v")) is None
    assert policy.classify(ValueError("v")) is True
    retry = RetryPolicy(retry_on=ConnectionError).evolve(retry_on=TimeoutError)
    assert retry.should_retry(TimeoutError()) is True
    assert retry.should_retry(ConnectionError()) is False


@pytest.mark.parametrize(
    ("policy", "name", "key", "suggestion"),
    [
        (RetryPolicy(), "atempts", "RetryPolicy.atempts", "attempts"),
        (BreakerPolicy(), "open_second", "BreakerPolicy.open_second", "open_seconds"),
        (BudgetPolicy(), "ratoi", "BudgetPolicy.ratoi", "ratio"),
    ],
)
def test_evolve_with_an_unknown_field_is_refused(
    policy: object, name: str, key: str, suggestion: str
) -> None:
    """evolve(atempts=5) is a ConfigError naming the policy and field, suggesting the field meant."""
    with pytest.raises(ConfigError) as info:
        policy.evolve(**{name: 5})  # type: ignore[attr-defined]
    assert info.value.key == key
    assert info.value.value == 5
    assert info.value.allowed == f"a known field; did you mean {suggestion!r}?"


def test_evolve_with_an_unlike_or_internal_field_is_refused() -> None:
    """A field like nothing known, or one set by the policy itself, is refused by evolve()."""
    with pytest.raises(ConfigError) as info:
        RetryPolicy().evolve(zzz=1)
    assert info.value.key == "RetryPolicy.zzz"
    assert info.value.allowed.startswith("a known field; ")
    assert "attempts" in info.value.allowed
    with pytest.raises(ConfigError) as info:
        BreakerPolicy().evolve(_is_failure=lambda _: True)
    assert info.value.key == "BreakerPolicy._is_failure"


def test_evolve_with_nothing_gives_an_equal_policy() -> None:
    """evolve() without changes returns an equal policy."""
    policy = BreakerPolicy(consecutive_failures=3)
    assert policy.evolve() == policy


@pytest.mark.parametrize(
    ("policy", "field", "value"),
    [(BreakerPolicy(), "open_seconds", 1.0), (RetryPolicy(), "attempts", 5), (BudgetPolicy(), "ratio", 0.5)],
)
def test_policies_are_frozen(policy: object, field: str, value: object) -> None:
    """Assigning a field (or a new attribute) raises; the value is unchanged."""
    before = getattr(policy, field)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(policy, field, value)
    with pytest.raises((dataclasses.FrozenInstanceError, AttributeError, TypeError)):
        policy.extra = 1  # type: ignore[attr-defined]
    assert getattr(policy, field) == before


@pytest.mark.parametrize(
    ("make", "same", "different"),
    [
        (lambda: BreakerPolicy(failure_rate=0.3), {"failure_rate": 0.3}, {"failure_rate": 0.4}),
        (lambda: RetryPolicy(attempts=2, jitter="none"), {"attempts": 2, "jitter": "none"}, {"attempts": 2}),
        (lambda: BudgetPolicy(ratio=0.1), {"ratio": 0.1}, {"ratio": 0.1, "enabled": False}),
    ],
)
def test_policies_are_equal_and_hashable_by_value(
    make: object, same: dict[str, object], different: dict[str, object]
) -> None:
    """Two policies with the same values are equal, hash alike and dedupe in a set; others differ."""
    a = make()  # type: ignore[operator]
    cls = type(a)
    b = cls(**same)
    c = cls(**different)
    assert a == b
    assert hash(a) == hash(b)
    assert a != c
    assert len({a, b, c}) == 2
    assert {a: "x"}[b] == "x"


def test_policy_with_a_predicate_is_hashable() -> None:
    """A policy holding a predicate is hashable and equal to one holding the same predicate."""

    def is_5xx(result: object) -> bool:
        return getattr(result, "status", 0) >= 500

    assert BreakerPolicy(failure_result=is_5xx) == BreakerPolicy(failure_result=is_5xx)
    assert hash(BreakerPolicy(failure_result=is_5xx)) == hash(BreakerPolicy(failure_result=is_5xx))
    assert BreakerPolicy(failure_result=is_5xx) != BreakerPolicy()


def test_policies_are_slotted() -> None:
    """Policies have no __dict__ (one is built per breaker; they stay small)."""
    for policy in (BreakerPolicy(), RetryPolicy(), BudgetPolicy()):
        assert not hasattr(policy, "__dict__")


# -- exception matchers --------------------------------------------------------------------------


def test_failure_on_a_class() -> None:
    """failure_on=<class> counts that class and its subclasses as failures, others neither way."""
    policy = BreakerPolicy(failure_on=OSError)
    assert policy.classify(ConnectionResetError()) is True
    assert policy.classify(ValueError()) is None


def test_failure_on_a_tuple_of_classes() -> None:
    """failure_on=(A, B) counts either as a failure."""
    policy = BreakerPolicy(failure_on=(TimeoutError, KeyError), others_succeed=True)
    assert policy.classify(TimeoutError()) is True
    assert policy.classify(KeyError()) is True
    assert policy.classify(ValueError()) is False


def test_failure_on_a_predicate() -> None:
    """failure_on=<callable> decides from the exception itself."""
    policy = BreakerPolicy(failure_on=lambda exc: "503" in str(exc), others_succeed=True)
    assert policy.classify(RuntimeError("got 503")) is True
    assert policy.classify(RuntimeError("got 404")) is False


def test_ignore_wins_over_failure_on() -> None:
    """An ignored exception counts neither way, even when failure_on matches it."""
    policy = BreakerPolicy(failure_on=Exception, ignore=(KeyError, PermissionError))
    assert policy.classify(KeyError()) is None
    assert policy.classify(PermissionError()) is None
    assert policy.classify(OSError()) is True


def test_cancellation_and_exit_are_not_failures_by_default() -> None:
    """CancelledError, KeyboardInterrupt and SystemExit are ignored by the default policy."""
    policy = BreakerPolicy()
    assert policy.classify(asyncio.CancelledError()) is None
    assert policy.classify(KeyboardInterrupt()) is None
    assert policy.classify(SystemExit(1)) is None
    assert policy.classify(ConnectionError()) is True


@pytest.mark.parametrize(
    "failure_on", [Exception, BaseException, (CircuitOpenError,), otelres.OtelresError, lambda _: True]
)
def test_classify_never_counts_circuit_open_error(failure_on: object) -> None:
    """A rejection by an open breaker never counts as a failure, whatever failure_on says."""
    policy = BreakerPolicy(failure_on=failure_on)  # type: ignore[arg-type]
    assert policy.classify(CircuitOpenError("x", 1.0)) is None


def test_retry_on_a_class_a_tuple_and_a_predicate() -> None:
    """retry_on selects what is retried, by class, tuple of classes, or predicate."""
    assert RetryPolicy(retry_on=ConnectionError).should_retry(ConnectionRefusedError()) is True
    assert RetryPolicy(retry_on=ConnectionError).should_retry(ValueError()) is False
    by_tuple = RetryPolicy(retry_on=(TimeoutError, ConnectionError))
    assert by_tuple.should_retry(TimeoutError()) is True
    assert by_tuple.should_retry(KeyError()) is False
    by_predicate = RetryPolicy(retry_on=lambda exc: getattr(exc, "errno", None) == 111)
    err = OSError(111, "refused")
    assert by_predicate.should_retry(err) is True
    assert by_predicate.should_retry(OSError(2, "missing")) is False


def test_predicate_result_is_made_a_bool() -> None:
    """should_retry returns a bool even when the predicate returns a truthy non-bool."""
    assert RetryPolicy(retry_on=lambda _: "yes").should_retry(ValueError()) is True
    assert RetryPolicy(retry_on=lambda _: 0).should_retry(ValueError()) is False


def test_default_retry_on_is_dependency_errors_only() -> None:
    """By default only errors that say the dependency failed are retried: the OSError family and
    asyncio.TimeoutError; the caller's own errors, KeyboardInterrupt and CancelledError are not."""
    policy = RetryPolicy()
    assert policy.should_retry(ConnectionResetError()) is True
    assert policy.should_retry(TimeoutError()) is True
    assert policy.should_retry(asyncio.TimeoutError()) is True
    assert policy.should_retry(OSError("dns")) is True
    for own in (ValueError(), KeyError("k"), TypeError(), RuntimeError(), KeyboardInterrupt()):
        assert policy.should_retry(own) is False
    assert policy.should_retry(asyncio.CancelledError()) is False
    assert RetryPolicy(retry_on=Exception).should_retry(ValueError()) is True


def test_default_failure_on_counts_dependency_errors_and_ignores_the_callers() -> None:
    """By default the breaker counts dependency errors as failures and the caller's own errors
    neither way; others_succeed=True makes them successes (the server answered)."""
    policy = BreakerPolicy()
    assert policy.classify(ConnectionRefusedError()) is True
    assert policy.classify(ValueError()) is None
    assert policy.classify(KeyError("k")) is None
    assert BreakerPolicy(others_succeed=True).classify(ValueError()) is False
    assert BreakerPolicy(failure_on=Exception).classify(ValueError()) is True


@pytest.mark.parametrize(
    ("retry_on", "control"),
    [
        (Exception, RuntimeError()),
        (BaseException, LookupError()),
        ((CircuitOpenError, KeyError), KeyError()),
        (otelres.OtelresError, otelres.RetryError("x", 3, None)),
        (lambda _: True, ValueError()),
    ],
)
def test_should_retry_never_retries_circuit_open_error(retry_on: object, control: BaseException) -> None:
    """A rejection by an open breaker is never retried, whatever retry_on says (a sibling still is)."""
    policy = RetryPolicy(retry_on=retry_on)  # type: ignore[arg-type]
    assert policy.should_retry(CircuitOpenError("x", 0.0)) is False
    assert policy.should_retry(control) is True


@pytest.mark.parametrize("retry_on", [BaseException, lambda _: True])
@pytest.mark.parametrize("interrupt", [KeyboardInterrupt(), SystemExit(1), GeneratorExit()])
def test_interrupts_are_never_retried_whatever_retry_on_says(
    retry_on: object, interrupt: BaseException
) -> None:
    """A BaseException that is not an Exception (an interrupt, an exit) is never worth another attempt."""
    policy = RetryPolicy(retry_on=retry_on)  # type: ignore[arg-type]
    assert policy.should_retry(interrupt) is False


def test_circuit_open_subclass_is_never_retried_nor_counted() -> None:
    """A subclass of CircuitOpenError is treated like CircuitOpenError."""

    class MyOpen(CircuitOpenError):
        pass

    assert RetryPolicy().should_retry(MyOpen("x", 1.0)) is False
    assert BreakerPolicy().classify(MyOpen("x", 1.0)) is None


@pytest.mark.parametrize("matcher", [str, int, object])
@pytest.mark.parametrize(
    ("cls", "field", "key"),
    [
        (RetryPolicy, "retry_on", "retry.retry_on"),
        (BreakerPolicy, "failure_on", "breaker.failure_on"),
        (BreakerPolicy, "ignore", "breaker.ignore"),
    ],
)
def test_a_non_exception_class_is_rejected(cls: type, field: str, key: str, matcher: type) -> None:
    """retry_on=str is a mistake, not a predicate (str(exc) is truthy: it would retry everything)."""
    with pytest.raises(ConfigError) as info:
        cls(**{field: matcher})
    assert info.value.key == key
    assert info.value.value is matcher
    assert info.value.allowed == "an exception class, a tuple of them, or a predicate"


def test_reason_must_be_callable() -> None:
    """reason=None is refused at construction (the flow calls reason(exc, result) on every retry)."""
    with pytest.raises(ConfigError) as info:
        RetryPolicy(reason=None)  # type: ignore[arg-type]
    assert info.value.key == "retry.reason"
    assert info.value.value is None
    assert info.value.allowed == "a callable (exception, result) -> str"


def test_optional_predicates_accept_none_and_callables() -> None:
    """retry_on_result, retry_after and failure_result take None or any callable."""

    class Check:
        def __call__(self, *_: object) -> bool:
            return True

    check = Check()
    none = RetryPolicy(retry_on_result=None, retry_after=None)
    assert (none.retry_on_result, none.retry_after) == (None, None)
    assert RetryPolicy(retry_on_result=check, retry_after=check).retry_after is check
    assert BreakerPolicy(failure_result=check).failure_result is check


def test_http_status_errors_are_dependency_errors_only_for_5xx_and_429() -> None:
    """raise_for_status() errors: a 503 or a 429 says the dependency failed, a 404 is the caller's."""
    import httpx  # noqa: PLC0415 - the client libraries of this test only
    import requests  # noqa: PLC0415

    def requests_error(status: int) -> requests.HTTPError:
        response = requests.Response()
        response.status_code = status
        return requests.HTTPError(response=response)

    def httpx_error(status: int) -> httpx.HTTPStatusError:
        request = httpx.Request("GET", "http://api.example.com/")
        return httpx.HTTPStatusError(
            "status", request=request, response=httpx.Response(status, request=request)
        )

    policy = RetryPolicy()
    for make in (requests_error, httpx_error):
        assert policy.should_retry(make(503))
        assert policy.should_retry(make(429))
        assert not policy.should_retry(make(404))
