"""The shared_state settings: a URL turns breaker state sharing on; every bad value is
a ConfigError naming where it came from, and no password ever reaches a message."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

import otelres
from otelres import ConfigError, SharedState

if TYPE_CHECKING:
    from pathlib import Path


def test_off_without_a_url() -> None:
    """No URL: each process decides alone (an interval alone changes nothing)."""
    assert otelres.load_settings(env={}).shared_state is None
    assert otelres.load_settings(env={"OTELRES_SHARED_STATE_INTERVAL": "2"}).shared_state is None
    assert otelres.load_settings(env={"OTELRES_SHARED_STATE": ""}).shared_state is None


def test_the_environment_variables() -> None:
    """OTELRES_SHARED_STATE (the short name), _URL, _INTERVAL and _SERVICE; a URL keeps its case."""
    env = {
        "OTELRES_SHARED_STATE": "redis://:PassWord@Cache.internal:6380/3",
        "OTELRES_SHARED_STATE_INTERVAL": "0.5",
        "OTELRES_SHARED_STATE_SERVICE": "Checkout",
    }
    got = otelres.load_settings(env=env).shared_state
    assert got == SharedState("redis://:PassWord@Cache.internal:6380/3", 0.5, "Checkout")
    long_name = otelres.load_settings(env={"OTELRES_SHARED_STATE_URL": "redis://h:1/0"}).shared_state
    assert long_name == SharedState("redis://h:1/0")


def test_the_file_and_code(tmp_path: Path) -> None:
    """[shared_state] in the TOML file; code overrides by key, by mapping, or as a whole SharedState."""
    path = tmp_path / "otelres.toml"
    path.write_text('[shared_state]\nurl = "redis://h:1/0"\ninterval = 2\n', encoding="utf-8")
    env = {"OTELRES_CONFIG": str(path)}
    assert otelres.load_settings(env=env).shared_state == SharedState("redis://h:1/0", 2.0)
    by_key = otelres.load_settings(env=env, overrides={"shared_state_interval": 0.25})
    assert by_key.shared_state == SharedState("redis://h:1/0", 0.25)
    by_map = otelres.load_settings(env={}, overrides={"shared_state": {"url": "unix:///run/redis.sock"}})
    assert by_map.shared_state == SharedState("unix:///run/redis.sock")
    whole = otelres.load_settings(env=env, overrides={"shared_state": SharedState("rediss://h:2/1", 3.0)})
    assert whole.shared_state == SharedState("rediss://h:2/1", 3.0)


@pytest.mark.parametrize(
    ("env", "where", "value"),
    [
        ({"OTELRES_SHARED_STATE": "http://:hunter2@h:1/"}, "OTELRES_SHARED_STATE", "'http://h:1/'"),
        (
            {"OTELRES_SHARED_STATE": "redis://:hunter2@h:99999/0"},
            "OTELRES_SHARED_STATE",
            "'redis://h:99999/0'",
        ),
        ({"OTELRES_SHARED_STATE": "redis://"}, "OTELRES_SHARED_STATE", "'redis://'"),
        (
            {"OTELRES_SHARED_STATE": "redis://h", "OTELRES_SHARED_STATE_INTERVAL": "0"},
            "OTELRES_SHARED_STATE_INTERVAL",
            "0.0",
        ),
        (
            {"OTELRES_SHARED_STATE": "redis://h", "OTELRES_SHARED_STATE_INTERVAL": "soon"},
            "OTELRES_SHARED_STATE_INTERVAL",
            "'soon'",
        ),
        (
            {"OTELRES_SHARED_STATE": "redis://h", "OTELRES_SHARED_STATE_INTERVAL": "61"},
            "OTELRES_SHARED_STATE_INTERVAL",
            "61.0",
        ),
    ],
)
def test_bad_values_name_the_variable_and_never_the_password(
    env: dict[str, str], where: str, value: str
) -> None:
    with pytest.raises(ConfigError) as info:
        otelres.load_settings(env=env)
    message = str(info.value)
    assert where in message
    assert value in message
    assert "hunter2" not in message


def test_bad_types_from_code_and_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="shared_state"):
        otelres.load_settings(env={}, overrides={"shared_state": "redis://h"})
    with pytest.raises(ConfigError, match=r"shared_state\.interval"):
        otelres.load_settings(env={}, overrides={"shared_state": {"url": "redis://h", "interval": True}})
    path = tmp_path / "otelres.toml"
    path.write_text("[shared_state]\nurl = 6379\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"shared_state\.url"):
        otelres.load_settings(env={"OTELRES_CONFIG": str(path)})
    with pytest.raises(ConfigError, match=r"shared_state\.service"):
        SharedState("redis://h", service="")


def test_repr_hides_the_password() -> None:
    """A SharedState printed in a log or a traceback shows no credentials."""
    text = repr(SharedState("redis://user:hunter2@h:1/0?password=hunter3"))
    assert "hunter" not in text
    assert "redis://h:1/0" in text


def test_timeouts_and_expiry_follow_the_interval() -> None:
    """The round trip gives up well within an interval; published counts outlive three."""
    fast, slow = SharedState("redis://h", 0.1), SharedState("redis://h", 10)
    assert fast.timeout == pytest.approx(0.05)
    assert slow.timeout == 0.5
    assert fast.ttl == 1.0
    assert slow.ttl == 30.0
