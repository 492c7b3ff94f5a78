"""Settings from code, ``OTELRES_*`` environment variables and a TOML file.

One table (:data:`KEYS`) names every setting once: its dotted key (the TOML
form), its environment variable and its type. Precedence, highest first: code
(:func:`load_settings` overrides, ``otelres.instrument(**overrides)``), the
environment, the TOML file named by ``OTELRES_CONFIG``, the defaults. The TOML
file may override any ``retry``/``breaker``/``budget`` key per target, keyed by
breaker name (``"https://api.example.com:443"``) or host (``"api.example.com"``).

Every bad value raises :class:`~otelres.ConfigError` naming where it came from
(the variable, or the file and key), the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from ._errors import ConfigError
from ._policy import BreakerPolicy, BudgetPolicy, RetryPolicy

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = ["KEYS", "Key", "Settings", "Target", "configure", "current", "env_name", "load_settings"]

Kind = Literal["int", "float", "bool", "str"]


@dataclasses.dataclass(frozen=True, slots=True)
class Key:
    """One setting: its dotted name, its type, and whether it may be unset (``none``)."""

    name: str
    kind: Kind
    optional: bool = False

    @property
    def section(self) -> str:
        """``retry``, ``breaker``, ``budget``, or ``""`` for a top-level key."""
        return self.name.partition(".")[0] if "." in self.name else ""

    @property
    def field(self) -> str:
        """The policy field (or top-level setting) this key sets."""
        return self.name.rpartition(".")[2]


def env_name(key: str) -> str:
    """``retry.base_delay`` → ``OTELRES_RETRY_BASE_DELAY``."""
    return "OTELRES_" + key.upper().replace(".", "_")


#: Every setting otelres reads. README.md lists them with their defaults.
KEYS: dict[str, Key] = {
    k.name: k
    for k in (
        Key("enabled", "bool"),
        Key("max_breakers", "int"),
        Key("retry.attempts", "int"),
        Key("retry.base_delay", "float"),
        Key("retry.max_delay", "float"),
        Key("retry.jitter", "str"),
        Key("retry.deadline", "float", optional=True),
        Key("retry.retry_after_cap", "float"),
        Key("breaker.failure_rate", "float"),
        Key("breaker.minimum_calls", "int"),
        Key("breaker.window_seconds", "float"),
        Key("breaker.window_calls", "int", optional=True),
        Key("breaker.consecutive_failures", "int", optional=True),
        Key("breaker.slow_call_seconds", "float", optional=True),
        Key("breaker.slow_call_rate", "float"),
        Key("breaker.open_seconds", "float"),
        Key("breaker.open_backoff", "float"),
        Key("breaker.max_open_seconds", "float"),
        Key("breaker.half_open_calls", "int"),
        Key("budget.ratio", "float"),
        Key("budget.min_retries", "int"),
        Key("budget.enabled", "bool"),
    )
}
_TARGET_KEYS = frozenset(k for k in KEYS if k != "max_breakers")
_ALLOWED = {"int": "an integer", "float": "a number", "bool": "true | false", "str": "a string"}
DEFAULT_MAX_BREAKERS = 256


def _parse_env(var: str, key: Key, text: str) -> object:
    """Parse the text of an environment variable into the key's type."""
    raw = text.strip()
    if key.optional and raw.lower() in ("", "none"):
        return None
    allowed = _ALLOWED[key.kind] + (" or none" if key.optional else "")
    if key.kind == "bool":
        lowered = raw.lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        raise ConfigError(var, text, allowed)
    if key.kind == "int":
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(var, text, allowed) from None
    if key.kind == "float":
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(var, text, allowed) from None
    return raw


def _check_toml(where: str, key: Key, value: object) -> object:
    """Check the type of a TOML value (the policy checks its range)."""
    ok = {
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "str": isinstance(value, str),
    }[key.kind]
    if not ok:
        raise ConfigError(where, value, _ALLOWED[key.kind])
    return float(value) if key.kind == "float" else value  # type: ignore[arg-type]


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """The policies in force for one breaker name."""

    enabled: bool
    retry: RetryPolicy
    breaker: BreakerPolicy
    budget: BudgetPolicy


def _unknown(where: str, key: str, allowed: frozenset[str] | Mapping[str, Any]) -> ConfigError:
    close = difflib.get_close_matches(key, list(allowed), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(where, key, "one of " + ", ".join(sorted(allowed)) + hint)


def _build(where: str, flat: Mapping[str, object], base: Target) -> Target:
    """Apply flat dotted overrides to ``base``, validating through the policies."""
    sections: dict[str, dict[str, object]] = {"retry": {}, "breaker": {}, "budget": {}}
    enabled = base.enabled
    for name, value in flat.items():
        if name.startswith("__source__."):
            continue
        key = KEYS[name]
        if key.section:
            sections[key.section][key.field] = value
        elif name == "enabled":
            enabled = bool(value)
    try:
        return Target(
            enabled,
            base.retry.evolve(**sections["retry"]),
            base.breaker.evolve(**sections["breaker"]),
            base.budget.evolve(**sections["budget"]),
        )
    except ConfigError as exc:
        source = flat.get("__source__." + exc.key)
        raise ConfigError(str(source) if source else f"{where}{exc.key}", exc.value, exc.allowed) from None


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """Everything configured: the default target, per-target overrides, the breaker cap."""

    default: Target = Target(
        enabled=True, retry=RetryPolicy(), breaker=BreakerPolicy(), budget=BudgetPolicy()
    )
    targets: Mapping[str, Target] = dataclasses.field(default_factory=dict)
    max_breakers: int = DEFAULT_MAX_BREAKERS

    @property
    def enabled(self) -> bool:
        """The global switch (``OTELRES_ENABLED``)."""
        return self.default.enabled

    def for_target(self, name: str) -> Target:
        """The policies for a breaker name: an exact name entry, else a host entry, else the default."""
        targets = self.targets
        if not targets:
            return self.default
        found = targets.get(name)
        if found is not None:
            return found
        host = _host_of(name)
        if host is not None:
            found = targets.get(host)
            if found is not None:
                return found
        return self.default


def _host_of(name: str) -> str | None:
    try:
        return urlsplit(name).hostname if "://" in name else None
    except ValueError:
        return None


def _flatten(where: str, table: Mapping[str, Any], allowed: frozenset[str]) -> dict[str, object]:
    """``{"retry": {"attempts": 2}}`` → ``{"retry.attempts": 2}``, checking names and types."""
    flat: dict[str, object] = {}
    for top, value in table.items():
        if isinstance(value, Mapping) and top in ("retry", "breaker", "budget"):
            items = [(f"{top}.{k}", v) for k, v in value.items()]
        else:
            items = [(top, value)]
        for name, item in items:
            if name not in allowed:
                raise _unknown(f"{where}{name}", name, allowed)
            flat[name] = _check_toml(f"{where}{name}", KEYS[name], item)
            flat["__source__." + name] = f"{where}{name}"
    return flat


def _strip_sources(flat: Mapping[str, object]) -> dict[str, object]:
    return {k: v for k, v in flat.items() if not k.startswith("__source__.")}


def load_settings(
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> Settings:
    """Build :class:`Settings` from the TOML file, the environment and ``overrides``.

    ``overrides`` take dotted keys (``"retry.attempts"``) or their underscore
    form (``retry_attempts``), and may hold whole policies under ``retry``,
    ``breaker`` and ``budget``.
    """
    env = os.environ if env is None else env
    flat: dict[str, object] = {}
    target_tables: dict[str, Mapping[str, Any]] = {}
    path = env.get("OTELRES_CONFIG", "").strip()
    if path:
        flat, target_tables = _read_file(path)
    for name, key in KEYS.items():
        var = env_name(name)
        if var in env:
            flat[name] = _parse_env(var, key, env[var])
            flat["__source__." + name] = var
    policies: dict[str, object] = {}
    for raw_name, value in (overrides or {}).items():
        if raw_name in ("retry", "breaker", "budget") and not isinstance(value, Mapping):
            policies[raw_name] = value
            continue
        dotted = raw_name if raw_name in KEYS else _dotted(raw_name)
        if dotted is None:
            raise _unknown(raw_name, raw_name, KEYS)
        flat[dotted] = value
        flat["__source__." + dotted] = raw_name
    max_breakers = flat.pop("max_breakers", DEFAULT_MAX_BREAKERS)
    source = flat.pop("__source__.max_breakers", "max_breakers")
    if type(max_breakers) is not int or not 1 <= max_breakers <= 100_000:
        raise ConfigError(str(source), max_breakers, "an integer >= 1 and <= 100000")
    base = Target(
        enabled=True,
        retry=_policy_or_default("retry", policies, RetryPolicy),
        breaker=_policy_or_default("breaker", policies, BreakerPolicy),
        budget=_policy_or_default("budget", policies, BudgetPolicy),
    )
    default = _build("", flat, base)
    targets = {
        target: _build(f"targets.{target}.", flat_target, default)
        for target, flat_target in (
            (t, _flatten(f"{path}: targets.{t}.", table, _TARGET_KEYS)) for t, table in target_tables.items()
        )
    }
    return Settings(default, targets, max_breakers)


def _policy_or_default(section: str, policies: Mapping[str, object], cls: type[Any]) -> Any:
    value = policies.get(section)
    if value is None:
        return cls()
    if not isinstance(value, cls):
        raise ConfigError(section, value, f"an otelres.{cls.__name__}")
    return value


def _dotted(name: str) -> str | None:
    for section in ("retry", "breaker", "budget"):
        if name.startswith(section + "_"):
            dotted = f"{section}.{name[len(section) + 1 :]}"
            if dotted in KEYS:
                return dotted
    return None


def _read_file(path: str) -> tuple[dict[str, object], dict[str, Mapping[str, Any]]]:
    try:
        with Path(path).open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError("OTELRES_CONFIG", path, f"a readable TOML file ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("OTELRES_CONFIG", path, f"valid TOML ({exc})") from None
    targets = data.pop("targets", {})
    if not isinstance(targets, Mapping) or not all(isinstance(t, Mapping) for t in targets.values()):
        raise ConfigError(f"{path}: targets", targets, 'tables such as [targets."api.example.com".retry]')
    return _flatten(f"{path}: ", data, frozenset(KEYS)), dict(targets)


_current: Settings | None = None
_lock = threading.Lock()


def current() -> Settings:
    """The process's settings, loaded from the environment on first use."""
    global _current  # noqa: PLW0603 - the one process-wide settings value
    settings = _current
    if settings is None:
        with _lock:
            if _current is None:
                _current = load_settings()
            settings = _current
    return settings


def configure(settings: Settings | None) -> None:
    """Replace the process's settings (None: reload from the environment on next use).

    Breakers already created keep their policies; see :func:`otelres.reset`.
    """
    global _current  # noqa: PLW0603
    with _lock:
        _current = settings
