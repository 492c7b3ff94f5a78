"""Hostile and mistaken values at the trust boundaries: only ConfigError or the documented
result ever comes out (hypothesis explores the values)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import pytest
from hypothesis import given
from hypothesis import strategies as st

import otelres
from otelres._deadline import MAX_DEADLINE, time_left
from otelres._names import safe_name
from otelres.testing import capture_events

if TYPE_CHECKING:
    from pathlib import Path


@given(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(), st.booleans()))
def test_a_deadline_is_finite_or_refused(seconds: float) -> None:
    """otelres.deadline(x) holds a finite deadline of at most a day, or raises ConfigError."""
    ok = not isinstance(seconds, bool) and math.isfinite(seconds) and 0 <= seconds <= MAX_DEADLINE
    if not ok:
        with pytest.raises(otelres.ConfigError, match="for deadline"), otelres.deadline(seconds):
            pass
        return
    with otelres.deadline(seconds):
        left = time_left()
        assert left is not None
        assert left <= MAX_DEADLINE


def registry(**env: str) -> otelres.Registry:
    return otelres.Registry(otelres.load_settings(env=env))


SECRET = "S3CRET"  # noqa: S105 - the secret the test hunts for


@pytest.mark.parametrize(
    ("written", "published"),
    [
        ("postgresql://app:S3CRET@db:5432/app", "postgresql://db:5432/app"),
        ("postgresql://app:p@S3CRET/w#rd@db:5432/app", "postgresql://db:5432/app"),
        ("redis://:S3CRET@cache:6379/0?password=S3CRET&db=1", "redis://cache:6379/0?db=1"),
        ("https://api.example.com:443/v1?api_key=S3CRET&page=2", "https://api.example.com:443/v1?page=2"),
        ("HTTPS://API.Example.com:443", "https://api.example.com:443"),
        ("payments", "payments"),
    ],
)
def test_a_breaker_name_is_made_safe_where_it_is_made(written: str, published: str) -> None:
    """Resilience(name) with user info, a password holding '@', '/' or '#', or a secret query
    parameter publishes a name without them: the breaker, its events and its guard."""
    with capture_events() as events:
        res = otelres.Resilience(
            written, retry=otelres.RetryPolicy(attempts=2, base_delay=0.0, max_delay=0.0)
        )
        with pytest.raises(ConnectionError):
            res.call(refuse)
    assert res.name == published
    assert res.breaker.name == published
    assert otelres.default_registry().get(written) is res.breaker
    assert all(SECRET not in e.breaker and SECRET not in repr(e) for e in events.events)


@given(st.text(max_size=300))
def test_any_name_gives_a_bounded_safe_name_or_a_config_error(written: str) -> None:
    """Whatever a name holds, the published one is at most 200 characters without control
    characters, or an empty one is refused with ConfigError."""
    if not written.strip() or not safe_name(written):
        return
    name = otelres.default_registry().guard(written).name
    assert len(name) <= 200
    assert not any(ord(c) < 32 or ord(c) == 127 for c in name)


def test_a_huge_name_stays_bounded_and_apart() -> None:
    """Two 70 KB names share neither their breaker nor their length: 200 characters, distinct."""
    first = otelres.default_registry().guard("x" * 70_000 + "1")
    second = otelres.default_registry().guard("x" * 70_000 + "2")
    assert len(first.name) == len(second.name) == 200
    assert first.breaker is not second.breaker


def refuse() -> None:
    raise ConnectionRefusedError("refused")


def test_a_toml_file_not_in_utf8_is_a_config_error(tmp_path: Path) -> None:
    """OTELRES_CONFIG naming a Latin-1 file gives ConfigError naming the variable (no UnicodeDecodeError)."""
    path = tmp_path / "otelres.toml"
    path.write_bytes("[retry]\nattempts = 2 # caf\xe9\n".encode("latin-1"))
    with pytest.raises(otelres.ConfigError, match=r"OTELRES_CONFIG.*UTF-8"):
        otelres.load_settings(env={"OTELRES_CONFIG": str(path)})


def test_toml_target_keys_match_whatever_their_case(tmp_path: Path) -> None:
    """[targets."https://API.example.com:443"] configures the breaker https://api.example.com:443."""
    path = tmp_path / "otelres.toml"
    path.write_text('[targets."https://API.Example.com:443".retry]\nattempts = 5\n', encoding="utf-8")
    settings = otelres.load_settings(env={"OTELRES_CONFIG": str(path)})
    assert settings.for_target("https://api.example.com:443").retry.attempts == 5
    guard = otelres.Registry(settings).guard("https://api.example.com:443")
    assert guard.retry.attempts == 5


@given(st.text(max_size=100))
def test_retry_after_gives_none_or_a_finite_delay(value: str) -> None:
    """Any Retry-After header value gives None or a delay >= 0 (inf for one too large to matter,
    which every cap refuses), never NaN and never an exception."""
    delay = otelres.parse_retry_after(value, now=1_700_000_000.0)
    assert delay is None or (not math.isnan(delay) and delay >= 0)


@given(
    st.sampled_from(
        [
            "OTELRES_RETRY_ATTEMPTS",
            "OTELRES_RETRY_BASE_DELAY",
            "OTELRES_BREAKER_FAILURE_RATE",
            "OTELRES_ENABLED",
        ]
    ),
    st.text(max_size=40),
)
def test_any_environment_value_gives_settings_or_a_config_error(variable: str, value: str) -> None:
    """A configuration value from the environment is taken or refused with ConfigError naming it."""
    try:
        otelres.load_settings(env={variable: value})
    except otelres.ConfigError as error:
        named = variable in str(error)
    else:
        named = True
    assert named


@pytest.mark.parametrize(
    ("written", "published"),
    [
        ("https://AKIA/abc:S3CRET@api.example.com:443", "https://api.example.com:443"),
        ("postgresql://user:pa/S3CRET@db:5432/app", "postgresql://db:5432/app"),
        ("app:S3CRET@db:5432/app", "db:5432/app"),
        ("host=db password=S3CRET dbname=app", "host=db dbname=app"),
        ("sqlite:///home/john@corp/app.db", "sqlite:///home/john@corp/app.db"),
        ("https://api.example.com:443/u/foo@bar.com", "https://api.example.com:443/u/foo@bar.com"),
        ("postgresql://db1:5432,db2:5432/app", "postgresql://db1:5432,db2:5432/app"),
        ("http://[::1]:80", "http://[::1]:80"),
    ],
)
def test_safe_name_strips_user_info_and_keeps_paths(written: str, published: str) -> None:
    """User info goes however it is written (a '/' in the user or the password, no scheme, keyword
    DSNs); an '@' in a path, several hosts and IPv6 addresses stay as written."""
    assert safe_name(written) == published


def test_a_hand_built_breaker_is_named_safely() -> None:
    """CircuitBreaker(name) makes its name safe too: it reaches the state gauge's labels."""
    breaker = otelres.CircuitBreaker("postgresql://app:S3CRET@db:5432/app")
    assert breaker.name == "postgresql://db:5432/app"
    assert otelres.Resilience("x", breaker=breaker).name == "postgresql://db:5432/app"


def test_names_made_safe_or_past_the_cap_reuse_their_guard() -> None:
    """A name that had to be made safe, or that is past the cap, finds its guard without building one."""
    reg = registry(OTELRES_MAX_BREAKERS="2")
    first = reg.guard("postgresql://app:S3CRET@db:5432/app", otelres.Profile("p"))
    assert (
        reg.guard("postgresql://app:S3CRET@db:5432/app", otelres.Profile("p")) is not first
    )  # another profile
    profile = otelres.Profile("q")
    named = reg.guard("postgresql://app:S3CRET@db:5432/app", profile)
    assert reg.guard("postgresql://app:S3CRET@db:5432/app", profile) is named
    reg.guard("https://b.example.com:443", profile)
    past = reg.guard("https://c.example.com:443", profile)
    assert past.name == "otelres.overflow"
    assert reg.guard("https://c.example.com:443", profile) is past
