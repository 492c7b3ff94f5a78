"""Settings from the environment, a TOML file and code: every key, every error, precedence."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pytest

import otelres
from otelres import _config
from otelres._config import KEYS as ALL_KEYS
from otelres._config import env_name

if TYPE_CHECKING:
    from pathlib import Path

# key -> (environment text, the value it must land as); every value differs from the default.
#: The keys these tables test one at a time. The shared_state keys depend on each other
#: (an interval means nothing without a URL): tests/core/test_shared_state_config.py.
KEYS = {name: key for name, key in ALL_KEYS.items() if not name.startswith("shared_state.")}

VALID: dict[str, tuple[str, object]] = {
    "enabled": ("false", False),
    "max_breakers": ("7", 7),
    "prometheus_ports": ("4", 4),
    "retry.attempts": ("5", 5),
    "retry.base_delay": ("0.25", 0.25),
    "retry.max_delay": ("2.5", 2.5),
    "retry.jitter": ("decorrelated", "decorrelated"),
    "retry.deadline": ("12.5", 12.5),
    "retry.retry_after_cap": ("10", 10.0),
    "breaker.failure_rate": ("0.25", 0.25),
    "breaker.minimum_calls": ("50", 50),
    "breaker.window_seconds": ("60", 60.0),
    "breaker.window_calls": ("100", 100),
    "breaker.consecutive_failures": ("4", 4),
    "breaker.slow_call_seconds": ("2", 2.0),
    "breaker.slow_call_rate": ("0.8", 0.8),
    "breaker.open_seconds": ("10", 10.0),
    "breaker.open_backoff": ("1.5", 1.5),
    "breaker.max_open_seconds": ("120", 120.0),
    "breaker.half_open_calls": ("3", 3),
    "budget.ratio": ("0.5", 0.5),
    "budget.min_retries": ("10", 10),
    "budget.enabled": ("false", False),
    "http.retry_500": ("true", True),
    "http.retry_unsafe": ("TRUE", True),
    "throttle.enabled": ("true", True),
    "throttle.k": ("1.5", 1.5),
    "throttle.window_seconds": ("60", 60.0),
    "throttle.min_requests": ("50", 50),
    "throttle.max_rejection": ("0.8", 0.8),
}

# (key, env text, err.value, err.allowed): at least one unparseable and one out-of-range value per key.
BAD_ENV: list[tuple[str, str, object, str]] = [
    ("enabled", "yes", "yes", "true | false"),
    ("enabled", "1", "1", "true | false"),
    ("max_breakers", "many", "many", "an integer"),
    ("max_breakers", "0", 0, "an integer >= 1 and <= 100000"),
    ("prometheus_ports", "all", "all", "an integer"),
    ("prometheus_ports", "0", 0, "an integer >= 1 and <= 1000"),
    ("prometheus_ports", "1001", 1001, "an integer >= 1 and <= 1000"),
    ("retry.attempts", "three", "three", "an integer"),
    ("retry.attempts", "2.0", "2.0", "an integer"),
    ("retry.attempts", "0", 0, "an integer >= 1 and <= 100"),
    ("retry.attempts", "101", 101, "an integer >= 1 and <= 100"),
    ("retry.base_delay", "fast", "fast", "a number"),
    ("retry.base_delay", "-1", -1.0, "a number >= 0 and <= 3600"),
    ("retry.max_delay", "5s", "5s", "a number"),
    ("retry.max_delay", "3601", 3601.0, "a number >= 0 and <= 3600"),
    ("retry.jitter", "", "", "full | equal | decorrelated | none"),
    ("retry.jitter", "random", "random", "full | equal | decorrelated | none"),
    ("retry.deadline", "soon", "soon", "a number or none"),
    ("retry.deadline", "0", 0.0, "a number > 0 (or None: unset)"),
    ("retry.retry_after_cap", "x", "x", "a number"),
    ("retry.retry_after_cap", "86401", 86401.0, "a number >= 0 and <= 86400"),
    ("breaker.failure_rate", "50%", "50%", "a number"),
    ("breaker.failure_rate", "1.5", 1.5, "a number > 0 and <= 1"),
    ("breaker.failure_rate", "0", 0.0, "a number > 0 and <= 1"),
    ("breaker.minimum_calls", "many", "many", "an integer"),
    ("breaker.minimum_calls", "0", 0, "an integer >= 1"),
    ("breaker.window_seconds", "30s", "30s", "a number"),
    ("breaker.window_seconds", "0.5", 0.5, "a number >= 1 and <= 86400"),
    ("breaker.window_calls", "lots", "lots", "an integer or none"),
    ("breaker.window_calls", "100001", 100001, "an integer >= 1 and <= 100000 (or None: unset)"),
    ("breaker.consecutive_failures", "x", "x", "an integer or none"),
    ("breaker.consecutive_failures", "0", 0, "an integer >= 1 (or None: unset)"),
    ("breaker.slow_call_seconds", "x", "x", "a number or none"),
    ("breaker.slow_call_seconds", "0", 0.0, "a number > 0 (or None: unset)"),
    ("breaker.slow_call_rate", "x", "x", "a number"),
    ("breaker.slow_call_rate", "1.01", 1.01, "a number > 0 and <= 1"),
    ("breaker.open_seconds", "x", "x", "a number"),
    ("breaker.open_seconds", "0", 0.0, "a number > 0 and <= 86400"),
    ("breaker.open_backoff", "x", "x", "a number"),
    ("breaker.open_backoff", "0.5", 0.5, "a number >= 1 and <= 100"),
    ("breaker.max_open_seconds", "x", "x", "a number"),
    ("breaker.max_open_seconds", "86401", 86401.0, "a number > 0 and <= 86400"),
    ("breaker.half_open_calls", "x", "x", "an integer"),
    ("breaker.half_open_calls", "0", 0, "an integer >= 1 and <= 10000"),
    ("budget.ratio", "20%", "20%", "a number"),
    ("budget.ratio", "1.5", 1.5, "a number >= 0 and <= 1"),
    ("budget.min_retries", "x", "x", "an integer"),
    ("budget.min_retries", "-1", -1, "an integer >= 0 and <= 1000000"),
    ("budget.enabled", "on", "on", "true | false"),
    ("budget.enabled", "0", "0", "true | false"),
    ("http.retry_500", "yes", "yes", "true | false"),
    ("http.retry_unsafe", "1", "1", "true | false"),
    ("throttle.enabled", "yes", "yes", "true | false"),
    ("throttle.k", "double", "double", "a number"),
    ("throttle.k", "0.5", 0.5, "a number >= 1 and <= 1000"),
    ("throttle.window_seconds", "2m", "2m", "a number"),
    ("throttle.window_seconds", "0", 0.0, "a number > 0 and <= 86400"),
    ("throttle.min_requests", "some", "some", "an integer"),
    ("throttle.min_requests", "-1", -1, "an integer >= 0 and <= 1000000"),
    ("throttle.max_rejection", "90%", "90%", "a number"),
    ("throttle.max_rejection", "0", 0.0, "a number > 0 and <= 1"),
]


OPTIONAL = sorted(k for k, key in KEYS.items() if key.optional)
BOOLEANS = sorted(k for k, key in KEYS.items() if key.kind == "bool")
TOML_WRONG_TYPE = {
    "int": ('"5"', "5"),
    "float": ('"0.5"', "0.5"),
    "bool": ('"false"', "false"),
    "str": ("5", 5),
}
ALLOWED_TYPE = {"int": "an integer", "float": "a number", "bool": "true | false", "str": "a string"}


def allowed_type(key: str) -> str:
    """What a type error from the file or code allows: the type, and None for an optional key."""
    return ALLOWED_TYPE[KEYS[key].kind] + (" or None" if KEYS[key].optional else "")


def value_of(settings: otelres.Settings, key: str) -> object:
    """The setting ``key`` as the default target (or the top level) holds it."""
    if key == "enabled":
        return settings.enabled
    if key in ("max_breakers", "prometheus_ports"):
        return getattr(settings, key)
    section, _, field = key.partition(".")
    return getattr(getattr(settings.default, section), field)


def toml_literal(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def toml_line(key: str, literal: str) -> str:
    section, dot, field = key.partition(".")
    return f"[{section}]\n{field} = {literal}\n" if dot else f"{key} = {literal}\n"


def config_file(tmp_path: Path, text: str) -> tuple[dict[str, str], str]:
    """Write ``text`` to a TOML file; return the environment naming it, and its path."""
    path = tmp_path / "otelres.toml"
    path.write_text(text, encoding="utf-8")
    return {"OTELRES_CONFIG": str(path)}, str(path)


# -- the environment -------------------------------------------------------------------


def test_valid_table_covers_every_key() -> None:
    """The tables in this file name every key otelres reads, and nothing else."""
    assert set(VALID) == set(KEYS)
    assert {key for key, *_ in BAD_ENV} == set(KEYS)


def test_env_names_follow_the_documented_style() -> None:
    """Dotted keys map to OTELRES_ variables, including the names the README documents."""
    assert env_name("retry.base_delay") == "OTELRES_RETRY_BASE_DELAY"
    names = {env_name(k) for k in KEYS}
    fixed = {
        "OTELRES_ENABLED",
        "OTELRES_RETRY_ATTEMPTS",
        "OTELRES_RETRY_BASE_DELAY",
        "OTELRES_RETRY_MAX_DELAY",
        "OTELRES_BREAKER_FAILURE_RATE",
        "OTELRES_BREAKER_MINIMUM_CALLS",
        "OTELRES_BREAKER_WINDOW_SECONDS",
        "OTELRES_BREAKER_OPEN_SECONDS",
        "OTELRES_BREAKER_HALF_OPEN_CALLS",
        "OTELRES_MAX_BREAKERS",
    }
    assert fixed <= names


@pytest.mark.parametrize("key", sorted(KEYS))
def test_every_key_is_read_from_its_environment_variable(key: str) -> None:
    """A valid non-default value in the key's variable lands in the right field, with the right type."""
    text, expected = VALID[key]
    assert value_of(otelres.Settings(), key) != expected
    settings = otelres.load_settings(env={env_name(key): text})
    got = value_of(settings, key)
    assert got == expected
    assert type(got) is type(expected)
    others = {k: value_of(settings, k) for k in KEYS if k != key}
    assert others == {k: value_of(otelres.Settings(), k) for k in KEYS if k != key}


@pytest.mark.parametrize(
    ("key", "text", "value", "allowed"), BAD_ENV, ids=[f"{key}={text!r}" for key, text, *_ in BAD_ENV]
)
def test_bad_environment_value_names_variable_value_and_allowed(
    key: str, text: str, value: object, allowed: str
) -> None:
    """A bad value raises ConfigError with the variable, the value and what is allowed."""
    var = env_name(key)
    with pytest.raises(otelres.ConfigError) as info:
        otelres.load_settings(env={var: text})
    err = info.value
    assert err.key == var
    assert err.value == value
    assert type(err.value) is type(value)
    assert err.allowed == allowed
    assert str(err) == f"invalid value for {var}: {value!r} (allowed: {allowed})"


@pytest.mark.parametrize("spelling", ["none", "None", "NONE", "", "  "])
@pytest.mark.parametrize("key", OPTIONAL)
def test_optional_keys_accept_none_or_empty_to_unset(key: str, spelling: str, tmp_path: Path) -> None:
    """An optional key set in the file is unset again by `none` or an empty variable."""
    _, expected = VALID[key]
    env, _ = config_file(tmp_path, toml_line(key, toml_literal(expected)))
    assert value_of(otelres.load_settings(env=env), key) == expected
    settings = otelres.load_settings(env={**env, env_name(key): spelling})
    assert value_of(settings, key) is None


@pytest.mark.parametrize("key", ["retry.attempts", "breaker.open_seconds", "budget.ratio"])
def test_required_keys_reject_none(key: str) -> None:
    """`none` unsets only optional keys; elsewhere it is a bad value."""
    with pytest.raises(otelres.ConfigError) as info:
        otelres.load_settings(env={env_name(key): "none"})
    assert info.value.key == env_name(key)
    assert "none" not in info.value.allowed


@pytest.mark.parametrize(
    ("text", "expected"), [("true", True), ("TRUE", True), ("True", True), (" false ", False)]
)
@pytest.mark.parametrize("key", BOOLEANS)
def test_booleans_accept_true_and_false_in_any_case(key: str, text: str, expected: bool) -> None:
    """Booleans read true/false whatever the case and surrounding blanks."""
    assert value_of(otelres.load_settings(env={env_name(key): text}), key) is expected


@pytest.mark.parametrize("text", ["1", "0", "yes", "no", "on", "off", "", "t", "truee"])
@pytest.mark.parametrize("key", BOOLEANS)
def test_booleans_reject_everything_but_true_and_false(key: str, text: str) -> None:
    """1/0/yes/no/on/off and empty are not booleans."""
    with pytest.raises(otelres.ConfigError) as info:
        otelres.load_settings(env={env_name(key): text})
    assert info.value.key == env_name(key)
    assert info.value.value == text
    assert info.value.allowed == "true | false"


def test_environment_values_are_stripped() -> None:
    """Blanks around a number are ignored."""
    settings = otelres.load_settings(env={"OTELRES_RETRY_ATTEMPTS": " 4\n", "OTELRES_BUDGET_RATIO": "\t0.3 "})
    assert settings.default.retry.attempts == 4
    assert settings.default.budget.ratio == 0.3


@pytest.mark.parametrize(
    ("var", "text", "allowed"),
    [
        ("OTELRES_BREAKER_FAILURE_RATE", "nan", "a number"),
        ("OTELRES_RETRY_MAX_DELAY", "inf", "a number"),
        ("OTELRES_RETRY_MAX_DELAY", "-inf", "a number"),
        ("OTELRES_RETRY_MAX_DELAY", "Infinity", "a number"),
        ("OTELRES_RETRY_DEADLINE", "inf", "a number or none"),
        ("OTELRES_BREAKER_OPEN_SECONDS", "1_0", "a number"),
        ("OTELRES_RETRY_ATTEMPTS", "1_0", "an integer"),
        ("OTELRES_MAX_BREAKERS", "1_000", "an integer"),
    ],
)
def test_nan_inf_and_underscores_from_the_environment_are_rejected_as_written(
    var: str, text: str, allowed: str
) -> None:
    """`nan`, `inf` and `1_0` are not numbers in a variable: the error carries the raw text."""
    with pytest.raises(otelres.ConfigError) as info:
        otelres.load_settings(env={var: text})
    assert info.value.key == var
    assert info.value.value == text
    assert info.value.allowed == allowed


def test_a_number_too_large_for_a_float_is_rejected() -> None:
    """`1e400` (infinite as a float) is refused, not taken as an endless delay."""
    with pytest.raises(otelres.ConfigError) as info:
        otelres.load_settings(env={"OTELRES_RETRY_DEADLINE": "1e400"})
    assert info.value.key == "OTELRES_RETRY_DEADLINE"


@pytest.mark.parametrize(("text", "expected"), [("FULL", "full"), ("Equal", "equal"), (" None ", "none")])
def test_jitter_from_the_environment_is_case_insensitive(text: str, expected: str) -> None:
    """OTELRES_RETRY_JITTER=FULL is read as `full`."""
    assert otelres.load_settings(env={"OTELRES_RETRY_JITTER": text}).default.retry.jitter == expected


@pytest.fixture(autouse=True)
def _no_variable_warned_yet(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts as a fresh process would: no unknown variable warned about yet."""
    monkeypatch.setattr(_config, "_warned_variables", set())


UNKNOWN = "otelres: ignoring unknown environment variable "


def warnings_on_otelres(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "otelres" and r.levelno == logging.WARNING]


def test_unknown_otelres_variables_are_ignored_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """A misspelt OTELRES_ variable changes nothing and is logged on "otelres", with the close name."""
    env = {"OTELRES_RETRY_ATTEMPT": "9", "OTELRES_NOTHING_LIKE_IT": "1", "OTELRES_CONFIG": "", "PATH": "/x"}
    with caplog.at_level(logging.WARNING, logger="otelres"):
        settings = otelres.load_settings(env=env)
    assert settings == otelres.Settings()
    records = [r for r in caplog.records if r.name == "otelres"]
    assert [r.levelno for r in records] == [logging.WARNING, logging.WARNING]
    messages = sorted(r.getMessage() for r in records)
    assert "OTELRES_NOTHING_LIKE_IT" in messages[0]
    assert "did you mean" not in messages[0]
    assert "OTELRES_RETRY_ATTEMPT" in messages[1]
    assert messages[1].endswith("did you mean OTELRES_RETRY_ATTEMPTS?")


def test_misspelt_variable_gets_one_did_you_mean_warning(caplog: pytest.LogCaptureFixture) -> None:
    """OTELRES_RETRY_ATEMPTS gets one "did you mean OTELRES_RETRY_ATTEMPTS?" warning per process,
    however often the settings are loaded."""
    env = {"OTELRES_RETRY_ATEMPTS": "5"}
    with caplog.at_level(logging.WARNING, logger="otelres"):
        for _ in range(3):
            assert otelres.load_settings(env=env) == otelres.Settings()
    assert warnings_on_otelres(caplog) == [
        UNKNOWN + "OTELRES_RETRY_ATEMPTS; did you mean OTELRES_RETRY_ATTEMPTS?"
    ]


def test_instrument_and_reloads_warn_once_per_name(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process's settings, reloaded by configure(None) and by instrument-style overrides, warn
    about each unknown variable once; a second unknown name gets its own warning."""
    monkeypatch.setenv("OTELRES_BREAKER_OPEN_SECOND", "3")
    with caplog.at_level(logging.WARNING, logger="otelres"):
        _config.current()
        _config.configure(None)
        _config.current()
        otelres.load_settings(overrides={"retry_attempts": 2})
        monkeypatch.setenv("OTELRES_UNHEARD_OF", "1")
        _config.configure(None)
        _config.current()
    assert warnings_on_otelres(caplog) == [
        UNKNOWN + "OTELRES_BREAKER_OPEN_SECOND; did you mean OTELRES_BREAKER_OPEN_SECONDS?",
        UNKNOWN + "OTELRES_UNHEARD_OF",
    ]


def test_a_setting_without_its_section_suggests_the_full_name(caplog: pytest.LogCaptureFixture) -> None:
    """OTELRES_ATTEMPTS (the section left out) suggests OTELRES_RETRY_ATTEMPTS, as the file's keys do."""
    with caplog.at_level(logging.WARNING, logger="otelres"):
        otelres.load_settings(env={"OTELRES_ATTEMPTS": "5", "OTELRES_HALF_OPEN_CALLS": "2"})
    assert sorted(warnings_on_otelres(caplog)) == [
        UNKNOWN + "OTELRES_ATTEMPTS; did you mean OTELRES_RETRY_ATTEMPTS?",
        UNKNOWN + "OTELRES_HALF_OPEN_CALLS; did you mean OTELRES_BREAKER_HALF_OPEN_CALLS?",
    ]


def test_known_variables_log_nothing(caplog: pytest.LogCaptureFixture) -> None:
    """Only unknown OTELRES_ variables are logged; known ones and others are silent."""
    with caplog.at_level(logging.DEBUG, logger="otelres"):
        otelres.load_settings(env={"OTELRES_RETRY_ATTEMPTS": "4", "OTELRES_CONFIG": " ", "HOME": "/"})
    assert [r for r in caplog.records if r.name == "otelres"] == []


def test_load_settings_without_env_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """env=None reads the process environment."""
    monkeypatch.setenv("OTELRES_RETRY_ATTEMPTS", "6")
    assert otelres.load_settings().default.retry.attempts == 6


RETRY_PAIR_ALLOWED = (
    "a number <= retry.max_delay (5.0); set retry.max_delay too "
    "(its environment variable is OTELRES_RETRY_MAX_DELAY)"
)
BREAKER_PAIR_ALLOWED = (
    "a number <= breaker.max_open_seconds (60.0); set breaker.max_open_seconds too "
    "(its environment variable is OTELRES_BREAKER_MAX_OPEN_SECONDS)"
)


def test_cross_field_error_from_environment_names_the_variable() -> None:
    """OTELRES_RETRY_BASE_DELAY above the default max_delay is blamed on that variable, with the fix."""
    with pytest.raises(otelres.ConfigError) as info:
        otelres.load_settings(env={"OTELRES_RETRY_BASE_DELAY": "10"})
    assert info.value.key == "OTELRES_RETRY_BASE_DELAY"
    assert info.value.value == 10.0
    assert info.value.allowed == RETRY_PAIR_ALLOWED
    assert (
        str(info.value) == f"invalid value for OTELRES_RETRY_BASE_DELAY: 10.0 (allowed: {RETRY_PAIR_ALLOWED})"
    )


def test_cross_field_error_with_both_variables_set_names_the_upper_one() -> None:
    """With both delays set and max below base, the error names OTELRES_RETRY_MAX_DELAY and the base."""
    with pytest.raises(otelres.ConfigError) as info:
        otelres.load_settings(env={"OTELRES_RETRY_BASE_DELAY": "10", "OTELRES_RETRY_MAX_DELAY": "2"})
    assert info.value.key == "OTELRES_RETRY_MAX_DELAY"
    assert info.value.value == 2.0
    assert info.value.allowed == "a number >= retry.base_delay (10)"


def test_open_seconds_above_the_default_cap_needs_max_open_seconds() -> None:
    """OTELRES_BREAKER_OPEN_SECONDS above 60 is blamed on that variable unless the cap is raised too."""
    with pytest.raises(otelres.ConfigError) as info:
        otelres.load_settings(env={"OTELRES_BREAKER_OPEN_SECONDS": "120"})
    assert info.value.key == "OTELRES_BREAKER_OPEN_SECONDS"
    assert info.value.value == 120.0
    assert info.value.allowed == BREAKER_PAIR_ALLOWED
    settings = otelres.load_settings(
        env={"OTELRES_BREAKER_OPEN_SECONDS": "120", "OTELRES_BREAKER_MAX_OPEN_SECONDS": "120"}
    )
    assert settings.default.breaker.open_seconds == 120.0


# -- max_breakers and enabled ----------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [("1", 1), ("100000", 100_000), ("7", 7)])
def test_max_breakers_accepts_its_range(text: str, expected: int) -> None:
    """OTELRES_MAX_BREAKERS takes an integer from 1 to 100000."""
    assert otelres.load_settings(env={"OTELRES_MAX_BREAKERS": text}).max_breakers == expected


@pytest.mark.parametrize("text", ["0", "-1", "100001", "7.5", "ten", "", "none"])
def test_max_breakers_rejects_values_outside_its_range(text: str) -> None:
    """OTELRES_MAX_BREAKERS outside 1..100000, or not an integer, is a ConfigError naming it."""
    with pytest.raises(otelres.ConfigError) as info:
        otelres.load_settings(env={"OTELRES_MAX_BREAKERS": text})
    assert info.value.key == "OTELRES_MAX_BREAKERS"
    assert "OTELRES_MAX_BREAKERS" in str(info.value)


@pytest.mark.parametrize("value", [0, -5, 100_001, True, "10", 10.0, None])
def test_max_breakers_from_code_is_validated(value: object) -> None:
    """max_breakers from code must be a real int in range (bool, str, float and None are refused)."""
    with pytest.raises(otelres.ConfigError) as info:
        otelres.load_settings(env={}, overrides={"max_breakers": value})
    assert info.value.key == "max_breakers"
    assert info.value.value is value


def test_max_breakers_from_file_is_validated(tmp_path: Path) -> None:
    """A bad max_breakers in the file names the file and key."""
    env, path = config_file(tmp_path, "max_breakers = 0\n")
    with pytest.raises(otelres.ConfigError) as info:
        otelres.load_settings(env=env)
    assert info.value.key == f"{path}: max_breakers"


def test_enabled_false_turns_otelres_off() -> None:
    """OTELRES_ENABLED=false gives settings.enabled False, and every target is off too."""
    settings = otelres.load_settings(env={"OTELRES_ENABLED": "false"})
    assert settings.enabled is False
    assert settings.for_target("https://api.example.com:443").enabled is False
    assert otelres.load_settings(env={"OTELRES_ENABLED": "true"}).enabled is True


def test_enabled_from_code_must_be_a_boolean() -> None:
    """enabled='false' from code is refused rather than read as True."""
    with pytest.raises(otelres.ConfigError) as info:
        otelres.load_settings(env={}, overrides={"enabled": "false"})
    assert info.value.key == "enabled"
    assert info.value.value == "false"
    assert info.value.allowed == "true | false"


def test_enabled_false_from_code() -> None:
    """overrides={'enabled': False} switches otelres off, beating the environment."""
    settings = otelres.load_settings(env={"OTELRES_ENABLED": "true"}, overrides={"enabled": False})
    assert settings.enabled is False


# -- defaults ---------------------------------------------------------------------------


def test_defaults_are_design_md_table() -> None:
    """With nothing configured, the policies carry the README's defaults."""
    settings = otelres.load_settings(env={})
    retry, breaker, budget = settings.default.retry, settings.default.breaker, settings.default.budget
    assert (retry.attempts, retry.jitter, retry.base_delay, retry.max_delay) == (3, "full", 0.1, 5.0)
    assert retry.retry_after_cap == 30.0
    assert retry.deadline is None
    assert (budget.min_retries, budget.ratio, budget.enabled) == (3, 0.2, True)
    assert (breaker.failure_rate, breaker.window_seconds, breaker.minimum_calls) == (0.5, 30.0, 20)
    assert breaker.window_calls is None
    assert (breaker.open_seconds, breaker.open_backoff, breaker.max_open_seconds) == (5.0, 2.0, 60.0)
    assert breaker.half_open_calls == 1
    assert breaker.consecutive_failures is None
    assert breaker.slow_call_seconds is None
    assert settings.enabled is True
    assert settings.max_breakers == 256
    assert dict(settings.targets) == {}


def test_loaded_defaults_equal_the_policy_defaults() -> None:
    """load_settings with nothing set equals Settings() built from the policies' own defaults."""
    assert otelres.load_settings(env={}) == otelres.Settings()
    assert otelres.load_settings(env={}).default.retry == otelres.RetryPolicy()


def test_unrelated_environment_variables_are_ignored() -> None:
    """Variables outside KEYS (including OTELRES_CONFIG when empty) change nothing."""
    settings = otelres.load_settings(env={"PATH": "/bin", "OTELRES_CONFIG": "  ", "RETRY_ATTEMPTS": "9"})
    assert settings == otelres.Settings()


# -- the TOML file --------------------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(KEYS))
def test_every_key_is_read_from_the_file(key: str, tmp_path: Path) -> None:
    """Each key in its TOML table (or at the top level) lands in the right field."""
    _, expected = VALID[key]
    env, _ = config_file(tmp_path, toml_line(key, toml_literal(expected)))
    got = value_of(otelres.load_settings(env=env), key)
    assert got == expected
    assert type(got) is type(expected)


@pytest.mark.parametrize("key", sorted(KEYS))
def test_wrong_type_in_file_names_file_and_key(key: str, tmp_path: Path) -> None:
    """A value of the wrong TOML type (a string for an int, ...) is a ConfigError naming file and key."""
    literal, value = TOML_WRONG_TYPE[KEYS[key].kind]
    env, path = config_file(tmp_path, toml_line(key, literal))
    with pytest.raises(otelres.ConfigError) as info:
        otelres.load_settings(env=env)
    assert info.value.key == f"{path}: {key}"
    assert info.value.value == value
    assert info.value.allowed == allowed_type(key)
    assert path in str(info.value)


@pytest.mark.parametrize("key", sorted(KEYS))
def test_wrong_type_from_code_is_checked_like_the_file(key: str) -> None:
    """A value of the wrong type from code (a string for an int, ...) is refused as in the file."""
    _, value = TOML_WRONG_TYPE[KEYS[key].kind]
    with pytest.raises(otelres.ConfigError) as info:
        otelres.load_settings(env={}, overrides={key: value})
    assert info.value.key == key
    assert info.value.value == value
    assert info.value.allowed == allowed_type(key)


@pytest.mark.parametrize(
    ("key", "value"),
    [(k, v) for k, t, v, _ in BAD_ENV if not isinstance(v, str) or KEYS[k].kind == "str"],
)
def test_out_of_range_value_in_file_names_file_and_key(key: str, value: object, tmp_path: Path) -> None:
    """A value of the right type but out of range is a ConfigError naming the file and key."""
    env, path = config_file(tmp_path, toml_line(key, toml_literal(value)))
    with pytest.raises(otelres.ConfigError) as info:
        otelres.load_settings(env=env)
    assert info.value.key == f"{path}: {key}"
    assert info.value.value == value


def test_file_sets_top_level_and_section_tables(tmp_path: Path) -> None:
    """Top-level keys and [retry], [breaker], [budget] tables are all applied together."""
    env, _ = config_file(
        tmp_path,
        "enabled = true\nmax_breakers = 50\n"
        '[retry]\nattempts = 4\nbase_delay = 0.2\njitter = "equal"\n'
        "[breaker]\nfailure_rate = 0.3\nopen_seconds = 2\n"
        "[budget]\nratio = 0.1\nmin_retries = 1\n",
    )
    settings = otelres.load_settings(env=env)
    assert settings.max_breakers == 50
    assert settings.enabled is True
    assert settings.default.retry == otelres.RetryPolicy(attempts=4, base_delay=0.2, jitter="equal")
    assert settings.default.breaker == otelres.BreakerPolicy(failure_rate=0.3, open_seconds=2.0)
    assert settings.default.budget == otelres.BudgetPolicy(ratio=0.1, min_retries=1)


def test_file_integer_for_a_float_key_becomes_a_float(tmp_path: Path) -> None:
    """`open_seconds = 2` (a TOML integer) is accepted for a float key and stored as 2.0."""
    env, _ = config_file(tmp_path, "[breaker]\nopen_seconds = 2\n")
    value = otelres.load_settings(env=env).default.breaker.open_seconds
    assert value == 2.0
    assert isinstance(value, float)


def test_file_float_for_an_integer_key_is_refused(tmp_path: Path) -> None:
    """`attempts = 3.0` is not an integer."""
    env, path = config_file(tmp_path, "[retry]\nattempts = 3.0\n")
    with pytest.raises(otelres.ConfigError) as info:
        otelres.load_settings(env=env)
    assert info.value.key == f"{path}: retry.attempts"
    assert info.value.allowed == "an integer"


TARGETS_TOML = """
[retry]
max_delay = 2.0

[targets."https://api.example.com:443".retry]
attempts = 5

[targets."db.internal".breaker]
open_seconds = 7

[targets."db.internal".budget]
min_retries = 9
"""


def test_target_by_exact_breaker_name(tmp_path: Path) -> None:
    """A [targets."<breaker name>"] table applies to exactly that breaker name."""
    env, _ = config_file(tmp_path, TARGETS_TOML)
    settings = otelres.load_settings(env=env)
    assert settings.for_target("https://api.example.com:443").retry.attempts == 5
    assert settings.for_target("https://api.example.com:8443").retry.attempts == 3


def test_target_by_host(tmp_path: Path) -> None:
    """A [targets."<host>"] table applies to every breaker name on that host, and to the bare host."""
    env, _ = config_file(tmp_path, TARGETS_TOML)
    settings = otelres.load_settings(env=env)
    for name in ("postgresql://db.internal:5432/app", "redis://db.internal:6379", "db.internal"):
        target = settings.for_target(name)
        assert target.breaker.open_seconds == 7.0
        assert target.budget.min_retries == 9


def test_unmatched_target_gets_the_default(tmp_path: Path) -> None:
    """A name matching no target (nor a host of one) gets the default target itself."""
    env, _ = config_file(tmp_path, TARGETS_TOML)
    settings = otelres.load_settings(env=env)
    for name in ("payments", "https://other.example.com:443", "postgresql://db.internal.evil:5432/x"):
        assert settings.for_target(name) is settings.default


def test_exact_name_beats_host(tmp_path: Path) -> None:
    """When both an exact-name and a host table exist, the exact name wins; other ports get the host's."""
    env, _ = config_file(
        tmp_path,
        '[targets."https://api.example.com:443".retry]\nattempts = 5\n'
        '[targets."api.example.com".retry]\nattempts = 2\n',
    )
    settings = otelres.load_settings(env=env)
    assert settings.for_target("https://api.example.com:443").retry.attempts == 5
    assert settings.for_target("http://api.example.com:80").retry.attempts == 2


def test_target_inherits_default_including_file_and_environment(tmp_path: Path) -> None:
    """A target override changes only its keys; the rest comes from the default (file and env)."""
    env, _ = config_file(tmp_path, TARGETS_TOML)
    settings = otelres.load_settings(env={**env, "OTELRES_RETRY_BASE_DELAY": "0.5"})
    api = settings.for_target("https://api.example.com:443")
    assert api.retry == otelres.RetryPolicy(attempts=5, base_delay=0.5, max_delay=2.0)
    assert api.breaker == settings.default.breaker
    assert api.budget == settings.default.budget
    db = settings.for_target("db.internal")
    assert db.retry == settings.default.retry
    assert db.retry.base_delay == 0.5


def test_target_can_switch_otelres_off_for_one_dependency(tmp_path: Path) -> None:
    """`enabled = false` in a target turns off that target only."""
    env, _ = config_file(tmp_path, '[targets."db.internal"]\nenabled = false\n')
    settings = otelres.load_settings(env=env)
    assert settings.for_target("db.internal").enabled is False
    assert settings.enabled is True


def test_target_host_is_case_insensitive(tmp_path: Path) -> None:
    """[targets."DB.internal"] applies to postgresql://db.internal:5432/app (and to DB.Internal in a URL)."""
    env, _ = config_file(tmp_path, '[targets."DB.internal".breaker]\nopen_seconds = 7\n')
    settings = otelres.load_settings(env=env)
    assert settings.for_target("postgresql://db.internal:5432/app").breaker.open_seconds == 7.0
    assert settings.for_target("redis://DB.Internal:6379").breaker.open_seconds == 7.0
    assert settings.for_target("postgresql://db.other:5432/app") is settings.default


def test_missing_file_names_the_variable_and_path(tmp_path: Path) -> None:
    """OTELRES_CONFIG naming a missing file is a ConfigError with the path."""
    path = str(tmp_path / "absent.toml")
    with pytest.raises(otelres.ConfigError) as info:
        otelres.load_settings(env={"OTELRES_CONFIG": path})
    assert info.value.key == "OTELRES_CONFIG"
    assert info.value.value == path
    assert "readable TOML file" in info.value.allowed
    assert path in str(info.value)


def test_invalid_toml_names_the_file_and_the_parse_error(tmp_path: Path) -> None:
    """A file that is not TOML is a ConfigError with the path and the parser's complaint."""
    env, path = config_file(tmp_path, "[retry\nattempts = 2\n")
    with pytest.raises(otelres.ConfigError) as info:
        otelres.load_settings(env=env)
    assert info.value.key == "OTELRES_CONFIG"
    assert info.value.value == path
    assert info.value.allowed.startswith("valid TOML (")
    assert "line 1" in info.value.allowed


@pytest.mark.parametrize(
    ("text", "name", "suggestion"),
    [
        ("[retry]\natempts = 2\n", "retry.atempts", "retry.attempts"),
        ("[breaker]\nopen_second = 2\n", "breaker.open_second", "breaker.open_seconds"),
        ("max_breaker = 2\n", "max_breaker", "max_breakers"),
        ("[budget]\nratoi = 0.1\n", "budget.ratoi", "budget.ratio"),
    ],
)
def test_unknown_key_in_file_suggests_the_close_match(
    text: str, name: str, suggestion: str, tmp_path: Path
) -> None:
    """A misspelt key names the file and key and suggests the key meant."""
    env, path = config_file(tmp_path, text)
    with pytest.raises(otelres.ConfigError) as info:
        otelres.load_settings(env=env)
    assert info.value.key == f"{path}: {name}"
    assert info.value.value == name
    assert info.value.allowed == f"a known key; did you mean {suggestion!r}?"


@pytest.mark.parametrize("section", ["retry", "breaker", "budget"])
def test_unknown_key_with_no_close_match_lists_its_section(section: str, tmp_path: Path) -> None:
    """A key like nothing known lists the known keys of its section."""
    env, path = config_file(tmp_path, f"[{section}]\nzzz = 1\n")
    with pytest.raises(otelres.ConfigError) as info:
        otelres.load_settings(env=env)
    assert info.value.key == f"{path}: {section}.zzz"
    same = sorted(k for k in KEYS if k.startswith(section + "."))
    assert info.value.allowed == "a known key: " + ", ".join(same)


@pytest.mark.parametrize("text", ["[retri]\nattempts = 2\n", "retry = 2\n", "[targets]\nfoo = 1\n"])
def test_misplaced_tables_are_refused(text: str, tmp_path: Path) -> None:
    """An unknown section, a scalar where a table belongs, or a non-table target is a ConfigError."""
    env, path = config_file(tmp_path, text)
    with pytest.raises(otelres.ConfigError) as info:
        otelres.load_settings(env=env)
    assert info.value.key.startswith(f"{path}: ")


def test_bad_value_inside_a_target_names_file_target_and_key(tmp_path: Path) -> None:
    """An out-of-range value in a target table names the file, the target and the key."""
    env, path = config_file(tmp_path, '[targets."db.internal".breaker]\nopen_seconds = 0\n')
    with pytest.raises(otelres.ConfigError) as info:
        otelres.load_settings(env=env)
    assert info.value.key == f'{path}: targets."db.internal".breaker.open_seconds'
    assert info.value.value == 0.0
    assert info.value.allowed == "a number > 0 and <= 86400"


def test_wrong_type_inside_a_target_names_file_and_key(tmp_path: Path) -> None:
    """A string for an int inside a target table names the file and key."""
    env, path = config_file(tmp_path, '[targets."https://api.example.com:443".retry]\nattempts = "5"\n')
    with pytest.raises(otelres.ConfigError) as info:
        otelres.load_settings(env=env)
    assert info.value.key == f'{path}: targets."https://api.example.com:443".retry.attempts'
    assert info.value.allowed == "an integer"


@pytest.mark.parametrize(
    ("text", "name", "suggestion"),
    [
        ('[targets."db.internal".retry]\natempts = 2\n', "retry.atempts", "retry.attempts"),
        ('[targets."db.internal"]\nattempts = 2\n', "attempts", "retry.attempts"),
    ],
)
def test_unknown_key_inside_a_target_suggests_the_close_match(
    text: str, name: str, suggestion: str, tmp_path: Path
) -> None:
    """A misspelt or misplaced key in a target table suggests the key meant."""
    env, path = config_file(tmp_path, text)
    with pytest.raises(otelres.ConfigError) as info:
        otelres.load_settings(env=env)
    assert info.value.key == f'{path}: targets."db.internal".{name}'
    assert info.value.value == name
    assert info.value.allowed == f"a known key; did you mean {suggestion!r}?"


def test_max_breakers_is_not_a_target_key(tmp_path: Path) -> None:
    """max_breakers is process-wide; inside a target it is an unknown key."""
    env, path = config_file(tmp_path, '[targets."db.internal"]\nmax_breakers = 3\n')
    with pytest.raises(otelres.ConfigError) as info:
        otelres.load_settings(env=env)
    assert info.value.key == f'{path}: targets."db.internal".max_breakers'
    assert info.value.allowed.startswith("a known key")
    assert "retry.attempts" in info.value.allowed
    assert "max_breakers" not in info.value.allowed


def test_cross_field_error_in_file_names_the_file(tmp_path: Path) -> None:
    """[retry] base_delay above the default max_delay is blamed on that file and key, with the fix."""
    env, path = config_file(tmp_path, "[retry]\nbase_delay = 10\n")
    with pytest.raises(otelres.ConfigError) as info:
        otelres.load_settings(env=env)
    assert info.value.key == f"{path}: retry.base_delay"
    assert info.value.value == 10.0
    assert info.value.allowed == RETRY_PAIR_ALLOWED


def test_cross_field_error_in_a_target_names_the_target_key(tmp_path: Path) -> None:
    """open_seconds above the cap inside a target is blamed on that target's key."""
    env, path = config_file(tmp_path, '[targets."db.internal".breaker]\nopen_seconds = 120\n')
    with pytest.raises(otelres.ConfigError) as info:
        otelres.load_settings(env=env)
    assert info.value.key == f'{path}: targets."db.internal".breaker.open_seconds'
    assert info.value.value == 120.0
    assert info.value.allowed == BREAKER_PAIR_ALLOWED


def test_cross_field_error_from_code_names_the_override() -> None:
    """retry_base_delay=10 from code is blamed on that override, as written."""
    with pytest.raises(otelres.ConfigError) as info:
        otelres.load_settings(env={}, overrides={"retry_base_delay": 10})
    assert info.value.key == "retry_base_delay"
    assert info.value.value == 10.0
    assert info.value.allowed == RETRY_PAIR_ALLOWED


# -- precedence and overrides ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("in_file", "in_env", "in_code", "expected"),
    [
        (False, False, False, 3),
        (True, False, False, 4),
        (True, True, False, 5),
        (False, True, False, 5),
        (True, True, True, 6),
        (True, False, True, 6),
        (False, False, True, 6),
    ],
)
def test_precedence_code_over_env_over_file_over_default(
    in_file: bool, in_env: bool, in_code: bool, expected: int, tmp_path: Path
) -> None:
    """overrides > OTELRES_* > the TOML file > the defaults."""
    env: dict[str, str] = {}
    if in_file:
        env, _ = config_file(tmp_path, "[retry]\nattempts = 4\n")
    if in_env:
        env["OTELRES_RETRY_ATTEMPTS"] = "5"
    overrides = {"retry.attempts": 6} if in_code else None
    assert otelres.load_settings(env=env, overrides=overrides).default.retry.attempts == expected


def test_a_bad_lower_layer_still_fails_under_a_good_upper_one(tmp_path: Path) -> None:
    """A bad value in the environment is reported even when code overrides the same key."""
    with pytest.raises(otelres.ConfigError) as info:
        otelres.load_settings(env={"OTELRES_RETRY_ATTEMPTS": "x"}, overrides={"retry.attempts": 2})
    assert info.value.key == "OTELRES_RETRY_ATTEMPTS"


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("retry.attempts", "retry.attempts"),
        ("retry_attempts", "retry.attempts"),
        ("breaker_open_seconds", "breaker.open_seconds"),
        ("budget_min_retries", "budget.min_retries"),
        ("max_breakers", "max_breakers"),
    ],
)
def test_overrides_accept_dotted_and_underscore_keys(name: str, key: str) -> None:
    """An override by dotted key or its underscore form lands in the same field."""
    _, expected = VALID[key]
    settings = otelres.load_settings(env={}, overrides={name: expected})
    assert value_of(settings, key) == expected


def test_bad_override_names_the_key_as_written() -> None:
    """A bad override is reported under the name the caller used."""
    with pytest.raises(otelres.ConfigError) as info:
        otelres.load_settings(env={}, overrides={"retry_attempts": 0})
    assert info.value.key == "retry_attempts"
    assert info.value.value == 0


@pytest.mark.parametrize(
    ("name", "suggestion"), [("retry.atempts", "retry.attempts"), ("retry_atempts", "retry.attempts")]
)
def test_unknown_override_suggests_the_close_match(name: str, suggestion: str) -> None:
    """A misspelt override is a ConfigError that suggests the key meant."""
    with pytest.raises(otelres.ConfigError) as info:
        otelres.load_settings(env={}, overrides={name: 2})
    assert info.value.key == name
    assert info.value.allowed == f"a known key; did you mean {suggestion!r}?"


def test_whole_policies_as_overrides() -> None:
    """retry=, breaker= and budget= take whole policies, used as they are."""
    retry = otelres.RetryPolicy(attempts=7, jitter="none")
    breaker = otelres.BreakerPolicy(consecutive_failures=3)
    budget = otelres.BudgetPolicy(enabled=False)
    settings = otelres.load_settings(env={}, overrides={"retry": retry, "breaker": breaker, "budget": budget})
    assert settings.default.retry == retry
    assert settings.default.breaker == breaker
    assert settings.default.budget == budget


def test_dotted_override_applies_on_top_of_a_whole_policy() -> None:
    """A dotted key given with a whole policy changes that one field of it."""
    settings = otelres.load_settings(
        env={}, overrides={"retry": otelres.RetryPolicy(attempts=7), "retry.base_delay": 0.3}
    )
    assert settings.default.retry == otelres.RetryPolicy(attempts=7, base_delay=0.3)


def test_whole_policy_keeps_its_predicates() -> None:
    """A code policy's predicates (not expressible in env or TOML) survive loading."""

    def boom(exc: BaseException) -> bool:
        return "boom" in str(exc)

    settings = otelres.load_settings(env={}, overrides={"breaker": otelres.BreakerPolicy(failure_on=boom)})
    assert settings.default.breaker.classify(RuntimeError("boom")) is True
    assert settings.default.breaker.classify(RuntimeError("fine")) is None


def test_whole_policy_from_code_beats_the_environment() -> None:
    """retry=RetryPolicy(attempts=5) from code wins over OTELRES_RETRY_ATTEMPTS=2."""
    settings = otelres.load_settings(
        env={"OTELRES_RETRY_ATTEMPTS": "2"}, overrides={"retry": otelres.RetryPolicy(attempts=5)}
    )
    assert settings.default.retry.attempts == 5


def test_whole_policy_from_code_beats_the_file_and_environment_for_its_section_only(tmp_path: Path) -> None:
    """A code policy replaces every key of its section from env and file; other sections keep theirs."""
    env, _ = config_file(tmp_path, '[retry]\nmax_delay = 2.0\njitter = "none"\n[budget]\nratio = 0.5\n')
    env |= {"OTELRES_RETRY_BASE_DELAY": "0.5", "OTELRES_BREAKER_OPEN_SECONDS": "9"}
    retry = otelres.RetryPolicy(attempts=5)
    settings = otelres.load_settings(env=env, overrides={"retry": retry})
    assert settings.default.retry == retry
    assert settings.default.breaker.open_seconds == 9.0
    assert settings.default.budget.ratio == 0.5


def test_dotted_override_applies_on_top_of_a_whole_policy_that_beats_the_environment() -> None:
    """Dotted keys from code still change a code policy that the environment no longer touches."""
    settings = otelres.load_settings(
        env={"OTELRES_RETRY_ATTEMPTS": "2", "OTELRES_RETRY_BASE_DELAY": "0.5"},
        overrides={"retry": otelres.RetryPolicy(attempts=5), "retry.base_delay": 0.3},
    )
    assert settings.default.retry == otelres.RetryPolicy(attempts=5, base_delay=0.3)


def test_mapping_under_a_section_sets_its_keys() -> None:
    """retry={"attempts": 4} sets those keys like dotted overrides; the rest still comes from env."""
    settings = otelres.load_settings(
        env={"OTELRES_RETRY_ATTEMPTS": "2", "OTELRES_RETRY_BASE_DELAY": "0.5"},
        overrides={"retry": {"attempts": 4}, "breaker": {"open_seconds": 2}},
    )
    assert settings.default.retry == otelres.RetryPolicy(attempts=4, base_delay=0.5)
    assert settings.default.breaker == otelres.BreakerPolicy(open_seconds=2.0)


@pytest.mark.parametrize(
    ("mapping", "key", "value", "allowed"),
    [
        ({"atempts": 2}, "retry.atempts", "retry.atempts", "a known key; did you mean 'retry.attempts'?"),
        ({"attempts": "4"}, "retry.attempts", "4", "an integer"),
        ({"attempts": 0}, "retry.attempts", 0, "an integer >= 1 and <= 100"),
    ],
)
def test_bad_key_in_a_section_mapping_is_named(
    mapping: dict[str, object], key: str, value: object, allowed: str
) -> None:
    """A bad key or value in retry={...} is a ConfigError naming the dotted key."""
    with pytest.raises(otelres.ConfigError) as info:
        otelres.load_settings(env={}, overrides={"retry": mapping})
    assert info.value.key == key
    assert info.value.value == value
    assert info.value.allowed == allowed


@pytest.mark.parametrize(
    ("section", "value", "allowed"),
    [
        ("retry", otelres.BreakerPolicy(), "an otelres.RetryPolicy or a mapping of its keys"),
        ("breaker", otelres.RetryPolicy(), "an otelres.BreakerPolicy or a mapping of its keys"),
        ("budget", 0.2, "an otelres.BudgetPolicy or a mapping of its keys"),
    ],
)
def test_wrong_policy_type_is_a_config_error(section: str, value: object, allowed: str) -> None:
    """A policy of the wrong class under retry/breaker/budget is a ConfigError naming the section."""
    with pytest.raises(otelres.ConfigError) as info:
        otelres.load_settings(env={}, overrides={section: value})
    assert info.value.key == section
    assert info.value.value is value
    assert info.value.allowed == allowed


def test_none_override_unsets_an_optional_key() -> None:
    """retry.deadline=None from code unsets a deadline the environment set."""
    settings = otelres.load_settings(env={"OTELRES_RETRY_DEADLINE": "3"}, overrides={"retry.deadline": None})
    assert settings.default.retry.deadline is None


# -- the process's settings --------------------------------------------------------------------


def test_configure_replaces_the_process_settings() -> None:
    """configure(settings) makes current() return exactly that object."""
    settings = otelres.load_settings(env={"OTELRES_RETRY_ATTEMPTS": "8"})
    otelres.configure(settings)
    assert _config.current() is settings
    assert _config.current() is settings


def test_current_is_loaded_once_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """current() loads from os.environ on first use and keeps that value."""
    monkeypatch.setenv("OTELRES_RETRY_ATTEMPTS", "6")
    first = _config.current()
    assert first.default.retry.attempts == 6
    monkeypatch.setenv("OTELRES_RETRY_ATTEMPTS", "9")
    assert _config.current() is first


def test_configure_none_reloads_from_the_environment_on_next_use(monkeypatch: pytest.MonkeyPatch) -> None:
    """configure(None) drops the settings; the next current() reads the environment again."""
    otelres.configure(otelres.load_settings(env={"OTELRES_RETRY_ATTEMPTS": "8"}))
    monkeypatch.setenv("OTELRES_RETRY_ATTEMPTS", "2")
    otelres.configure(None)
    assert _config.current().default.retry.attempts == 2


def test_current_reports_a_bad_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad variable surfaces as ConfigError from current(), and again on the next try."""
    monkeypatch.setenv("OTELRES_BREAKER_FAILURE_RATE", "2")
    for _ in range(2):
        with pytest.raises(otelres.ConfigError) as info:
            _config.current()
        assert info.value.key == "OTELRES_BREAKER_FAILURE_RATE"
