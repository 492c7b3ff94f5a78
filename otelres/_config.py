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
import logging
import os
import re
import sys
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from . import _fork
from ._errors import ConfigError
from ._names import safe_name
from ._policy import BreakerPolicy, BudgetPolicy, HttpPolicy, RetryPolicy, SharedState, ThrottlePolicy

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

_log = logging.getLogger("otelres")

__all__ = ["KEYS", "Key", "Settings", "Target", "configure", "current", "env_name", "load_settings"]

#: ``str`` is an enumeration (compared in lower case); ``text`` is kept as written (a URL).
Kind = Literal["int", "float", "bool", "str", "text"]


@dataclasses.dataclass(frozen=True, slots=True)
class Key:
    """One setting: its dotted name, its type, and whether it may be unset (``none``)."""

    name: str
    kind: Kind
    optional: bool = False

    @property
    def section(self) -> str:
        """``retry``, ``breaker``, ``budget``, ``http``, ``throttle``, ``shared_state``, or ``""`` for a
        top-level key.
        """
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
        Key("prometheus_ports", "int"),
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
        Key("throttle.enabled", "bool"),
        Key("throttle.k", "float"),
        Key("throttle.window_seconds", "float"),
        Key("throttle.min_requests", "int"),
        Key("throttle.max_rejection", "float"),
        Key("http.retry_500", "bool"),
        Key("http.retry_unsafe", "bool"),
        Key("shared_state.url", "text", optional=True),
        Key("shared_state.interval", "float"),
        Key("shared_state.service", "text", optional=True),
    )
}
#: Settings of the whole process, not of one target.
_PROCESS_KEYS = frozenset(
    k for k in KEYS if k in ("max_breakers", "prometheus_ports") or k.startswith("shared_state.")
)
_TARGET_KEYS = frozenset(KEYS) - _PROCESS_KEYS
#: Environment variables that name a key by a shorter name than env_name() gives.
_ENV_ALIASES = {"OTELRES_SHARED_STATE": "shared_state.url"}
_ALLOWED = {
    "int": "an integer",
    "float": "a number",
    "bool": "true | false",
    "str": "a string",
    "text": "a string",
}
DEFAULT_MAX_BREAKERS = 256
#: Ports a process tries for its Prometheus ``/metrics``, from OTEL_EXPORTER_PROMETHEUS_PORT up.
DEFAULT_PROMETHEUS_PORTS = 16


#: Values that compare two keys: the policy names the second key when the pair
#: is wrong, but the user may only have set the first.
_PAIRS = {"retry.max_delay": "retry.base_delay", "breaker.max_open_seconds": "breaker.open_seconds"}
_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
_SECTIONS = ("retry", "breaker", "budget", "http", "throttle", "shared_state")
#: The sections that make a :class:`Target` (``shared_state`` is the process's).
_TARGET_SECTIONS = ("retry", "breaker", "budget", "http", "throttle")

#: One layer of configuration: dotted key -> (value, where it came from).
_Layer = dict[str, tuple[object, str]]


def _parse_env(var: str, key: Key, text: str) -> object:
    """Parse the text of an environment variable into the key's type."""
    raw = text.strip()
    if key.optional and raw.lower() in ("", "none"):
        return None
    allowed = _ALLOWED[key.kind] + (" or none" if key.optional else "")
    if key.kind == "bool":
        if raw.lower() in ("true", "false"):
            return raw.lower() == "true"
    elif key.kind == "int":
        if _INT.fullmatch(raw):
            return int(raw)
    elif key.kind == "float":
        if _FLOAT.fullmatch(raw):
            return float(raw)
    elif key.kind == "text":
        return raw
    else:
        return raw.lower()  # the only string key is an enumeration (retry.jitter)
    raise ConfigError(var, text, allowed)


def _check_type(where: str, key: Key, value: object) -> object:
    """Check the type of a value from a file or from code (the policy checks its range)."""
    if value is None and key.optional:
        return None
    ok = {
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "str": isinstance(value, str),
        "text": isinstance(value, str),
    }[key.kind]
    if not ok:
        raise ConfigError(where, value, _ALLOWED[key.kind] + (" or None" if key.optional else ""))
    return float(value) if key.kind == "float" else value  # type: ignore[arg-type]


#: The throttle settings nobody turned on.
_THROTTLE_OFF = ThrottlePolicy(enabled=False)


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """The policies in force for one breaker name."""

    enabled: bool
    retry: RetryPolicy
    breaker: BreakerPolicy
    budget: BudgetPolicy
    http: HttpPolicy = dataclasses.field(default_factory=HttpPolicy)
    #: The adaptive throttle's settings (off by default); when on, ``breaker.throttle`` is it.
    throttle: ThrottlePolicy = dataclasses.field(default_factory=lambda: _THROTTLE_OFF)


def _unknown(where: str, key: str, known: Iterable[str]) -> ConfigError:
    """An unknown key: suggest the close match, or list the keys of its section."""
    known = sorted(known)
    # A key without its section ("attempts" for "retry.attempts") is the
    # likeliest slip: match it against the fields first.
    close = [k for k in known if k.rpartition(".")[2] == key] or difflib.get_close_matches(
        key, known, n=1, cutoff=0.75
    )
    if close:
        return ConfigError(where, key, f"a known key; did you mean {close[0]!r}?")
    section = key.partition(".")[0]
    same = [k for k in known if k.startswith(section + ".")] or known
    return ConfigError(where, key, "a known key: " + ", ".join(same))


def _build(layer: _Layer, base: Target) -> Target:
    """Apply a layer of dotted keys to ``base``, validated by the policies."""
    sections: dict[str, dict[str, object]] = {name: {} for name in _TARGET_SECTIONS}
    enabled = base.enabled
    for name, (value, _source) in layer.items():
        key = KEYS[name]
        if key.section:
            sections[key.section][key.field] = value
        elif name == "enabled":
            enabled = bool(value)
    try:
        # The throttle is the breaker policy's when throttle.enabled is true; its keys are
        # checked either way. A layer without throttle keys keeps the base's.
        throttle = base.throttle
        breaker = base.breaker.evolve(**sections["breaker"])
        if sections["throttle"]:
            throttle = throttle.evolve(**sections["throttle"])
            breaker = breaker.evolve(throttle=throttle if throttle.enabled else None)
        return Target(
            enabled,
            base.retry.evolve(**sections["retry"]),
            breaker,
            base.budget.evolve(**sections["budget"]),
            base.http.evolve(**sections["http"]),
            throttle,
        )
    except ConfigError as exc:
        raise _blame(exc, layer) from None


def _blame(exc: ConfigError, layer: _Layer) -> ConfigError:
    """Re-address a policy's error to where the user set the value."""
    if exc.key in layer:
        return ConfigError(layer[exc.key][1], exc.value, exc.allowed)
    partner = _PAIRS.get(exc.key)
    if partner is not None and partner in layer:
        value, source = layer[partner]
        limit = exc.value
        return ConfigError(
            source,
            value,
            f"a number <= {exc.key} ({limit!r}); set {exc.key} too (its environment variable "
            f"is {env_name(exc.key)})",
        )
    return exc


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """Everything configured: the default target, per-target overrides, the breaker cap."""

    default: Target = Target(
        enabled=True, retry=RetryPolicy(), breaker=BreakerPolicy(), budget=BudgetPolicy()
    )
    targets: Mapping[str, Target] = dataclasses.field(default_factory=dict)
    max_breakers: int = DEFAULT_MAX_BREAKERS
    #: Breaker state shared across processes on Redis (None: each process alone).
    shared_state: SharedState | None = None
    #: How many ports from OTEL_EXPORTER_PROMETHEUS_PORT up a process tries for its /metrics.
    prometheus_ports: int = DEFAULT_PROMETHEUS_PORTS

    @property
    def enabled(self) -> bool:
        """The global switch (``OTELRES_ENABLED``)."""
        return self.default.enabled

    def for_target(self, name: str) -> Target:
        """The policies for a breaker name: an exact name entry, else a host entry
        (host names compare case-insensitively), else the default.
        """
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
    """The host of a breaker name such as ``https://api.example.com:443`` (lower case)."""
    try:
        return urlsplit(name).hostname if "://" in name else None
    except ValueError:
        return None


def _target_key(name: str) -> str:
    """Host keys are case-insensitive; a full breaker name is made safe as the registry
    makes every name (scheme and host in lower case, no user info), so that it matches
    (``https://API.example.com:443`` configures ``https://api.example.com:443``).
    """
    return safe_name(name) if "://" in name else name.lower()


def _layer_of_table(where: str, table: Mapping[str, Any], known: frozenset[str]) -> _Layer:
    """``{"retry": {"attempts": 2}}`` -> ``{"retry.attempts": (2, where+key)}``, names and types checked."""
    layer: _Layer = {}
    for top, value in table.items():
        if isinstance(value, Mapping) and top in _SECTIONS:
            items = [(f"{top}.{k}", v) for k, v in value.items()]
        else:
            items = [(top, value)]
        for name, item in items:
            where_key = f"{where}{name}"
            if name not in known:
                raise _unknown(where_key, name, known)
            layer[name] = (_check_type(where_key, KEYS[name], item), where_key)
    return layer


#: The unknown ``OTELRES_*`` variables already warned about: one warning per name per process.
_warned_variables: set[str] = set()
_warned_lock = threading.Lock()
_fork.renew(sys.modules[__name__], "_warned_lock")


def _unknown_variable(var: str, known: Iterable[str]) -> None:
    """Warn once per process about an ``OTELRES_*`` variable otelres does not read,
    with the close name when there is one (``did you mean OTELRES_RETRY_ATTEMPTS?``).
    """
    with _warned_lock:
        if var in _warned_variables:
            return
        _warned_variables.add(var)
    # The likeliest slips, as for the keys of the file: a setting without its
    # section (OTELRES_ATTEMPTS), then a misspelling.
    field = var.removeprefix("OTELRES_").lower()
    close = [env_name(k.name) for k in KEYS.values() if k.section and k.field == field]
    close = close or difflib.get_close_matches(var, sorted(known), n=1, cutoff=0.8)
    hint = f"; did you mean {close[0]}?" if close else ""
    _log.warning("otelres: ignoring unknown environment variable %s%s", var, hint)


def _layer_of_env(env: Mapping[str, str]) -> _Layer:
    layer: _Layer = {}
    names = {env_name(name): name for name in KEYS} | _ENV_ALIASES
    for var, text in env.items():
        if not var.startswith("OTELRES_") or var == "OTELRES_CONFIG":
            continue
        name = names.get(var)
        if name is None:
            _unknown_variable(var, [*names, "OTELRES_CONFIG"])
            continue
        layer[name] = (_parse_env(var, KEYS[name], text), var)
    return layer


def _layer_of_code(overrides: Mapping[str, object]) -> tuple[_Layer, dict[str, object]]:
    """Overrides from code: dotted or underscore keys, mappings and whole policies per section."""
    layer: _Layer = {}
    policies: dict[str, object] = {}
    for raw_name, value in overrides.items():
        if raw_name in _SECTIONS:
            if value is None:
                continue
            if isinstance(value, Mapping):
                layer.update(_layer_of_table("", {raw_name: value}, frozenset(KEYS)))
            else:
                policies[raw_name] = value
            continue
        name = raw_name if raw_name in KEYS else _dotted(raw_name)
        if name is None:
            raise _unknown(raw_name, raw_name, KEYS)
        layer[name] = (_check_type(raw_name, KEYS[name], value), raw_name)
    return layer, policies


def load_settings(
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> Settings:
    """Build :class:`Settings` from the TOML file, the environment and ``overrides``.

    ``overrides`` take dotted keys (``"retry.attempts"``), their underscore form
    (``retry_attempts``), a mapping per section (``retry={"attempts": 2}``), or
    a whole policy per section (``retry=RetryPolicy(...)``), which then wins over
    the environment and the file for that section. Per-target entries of the
    file apply over all of it, for their target.
    """
    env = os.environ if env is None else env
    layer: _Layer = {}
    target_tables: dict[str, Mapping[str, Any]] = {}
    path = env.get("OTELRES_CONFIG", "").strip()
    if path:
        layer, target_tables = _read_file(path)
    layer.update(_layer_of_env(env))
    code, policies = _layer_of_code(overrides or {})
    # A whole policy given in code wins over the environment and the file for
    # its section; keys given in code still apply on top of it.
    layer = {name: entry for name, entry in layer.items() if KEYS[name].section not in policies}
    layer.update(code)
    shared_state = _shared_state(
        {name: layer.pop(name) for name in list(layer) if name.startswith("shared_state.")},
        policies.get("shared_state"),
    )
    max_breakers, source = layer.pop("max_breakers", (DEFAULT_MAX_BREAKERS, "max_breakers"))
    if type(max_breakers) is not int or not 1 <= max_breakers <= 100_000:
        raise ConfigError(source, max_breakers, "an integer >= 1 and <= 100000")
    prometheus_ports, source = layer.pop("prometheus_ports", (DEFAULT_PROMETHEUS_PORTS, "prometheus_ports"))
    if type(prometheus_ports) is not int or not 1 <= prometheus_ports <= 1000:
        raise ConfigError(source, prometheus_ports, "an integer >= 1 and <= 1000")
    breaker = _policy_or_default("breaker", policies, BreakerPolicy)
    # The throttle from code: a ThrottlePolicy of its own, or the one a BreakerPolicy carries.
    throttle = policies.get("throttle")
    if throttle is None:
        throttle = breaker.throttle if breaker.throttle is not None else _THROTTLE_OFF
    elif not isinstance(throttle, ThrottlePolicy):
        raise ConfigError("throttle", throttle, "an otelres.ThrottlePolicy or a mapping of its keys")
    else:
        breaker = breaker.evolve(throttle=throttle if throttle.enabled else None)
    base = Target(
        enabled=True,
        retry=_policy_or_default("retry", policies, RetryPolicy),
        breaker=breaker,
        budget=_policy_or_default("budget", policies, BudgetPolicy),
        http=_policy_or_default("http", policies, HttpPolicy),
        throttle=throttle,
    )
    default = _build(layer, base)
    targets: dict[str, Target] = {}
    for target, table in target_tables.items():
        where = f'{path}: targets."{target}".'
        targets[_target_key(target)] = _build(_layer_of_table(where, table, _TARGET_KEYS), default)
    return Settings(default, targets, max_breakers, shared_state, prometheus_ports)


def _shared_state(layer: _Layer, given: object) -> SharedState | None:
    """The shared-state settings: a whole :class:`SharedState` from code, with keys
    from any layer over it; None (each process alone) without a URL.
    """
    if given is not None and not isinstance(given, SharedState):
        raise ConfigError("shared_state", given, "an otelres.SharedState or a mapping of its keys")
    fields = {KEYS[name].field: value for name, (value, _source) in layer.items()}
    if given is not None:
        fields = {**dataclasses.asdict(given), **fields}
    if fields.get("url") is None:
        return None  # nothing to share through: an interval alone changes nothing
    try:
        return SharedState(**fields)  # type: ignore[arg-type]
    except ConfigError as exc:
        raise _blame(exc, layer) from None


def _policy_or_default(section: str, policies: Mapping[str, object], cls: type[Any]) -> Any:
    value = policies.get(section)
    if value is None:
        return cls()
    if not isinstance(value, cls):
        raise ConfigError(section, value, f"an otelres.{cls.__name__} or a mapping of its keys")
    return value


def _dotted(name: str) -> str | None:
    for section in _SECTIONS:
        if name.startswith(section + "_"):
            dotted = f"{section}.{name[len(section) + 1 :]}"
            if dotted in KEYS:
                return dotted
    return None


def _read_file(path: str) -> tuple[_Layer, dict[str, Mapping[str, Any]]]:
    try:
        with Path(path).open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError("OTELRES_CONFIG", path, f"a readable TOML file ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("OTELRES_CONFIG", path, f"valid TOML ({exc})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            "OTELRES_CONFIG", path, f"a TOML file in UTF-8 (byte {exc.start} is not: {exc.reason})"
        ) from None
    targets = data.pop("targets", {})
    if not isinstance(targets, Mapping) or not all(isinstance(t, Mapping) for t in targets.values()):
        raise ConfigError(f"{path}: targets", targets, 'tables such as [targets."api.example.com".retry]')
    return _layer_of_table(f"{path}: ", data, frozenset(KEYS)), dict(targets)


_current: Settings | None = None
_lock = threading.Lock()
_fork.renew(sys.modules[__name__], "_lock")


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
