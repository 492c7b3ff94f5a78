"""The composition root: where a dependency's name becomes what its calls go through.

Every dependency gets one breaker and one retry budget, shared by every call
site that names it, whoever names it first (a decorator, a patched client).
:meth:`Registry.guard` combines them with the dependency's configuration
(``OTELRES_*``, the TOML file, code) and with the caller's :class:`Profile` (an
integration's verdict on failures and its retry predicates) into a
:class:`~otelres._flow.Guard`, once; nothing else reads the settings to build
one. Each caller judges its own attempts with its own predicates against the
shared breaker, so no caller's settings are dropped because another caller
named the dependency first.

A flood of distinct names (a crawler's hosts, a tenant id in a host name) must
not grow memory or metric cardinality without bound: past ``max_breakers``
every new name shares the one :data:`OVERFLOW` breaker, and a warning is
logged once. The cap is applied here and nowhere else, and so is
:func:`otelres._names.safe_name`: no credential in a name ever reaches a
breaker, a metric label, a span, a log line or a report.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import threading
from typing import TYPE_CHECKING, Any

from . import _config, _fork
from ._breaker import CircuitBreaker
from ._budget import RetryBudget
from ._clock import MONOTONIC, Clock
from ._config import Settings
from ._errors import CircuitOpenError, ConfigError
from ._flow import Guard
from ._names import safe_name
from ._policy import BreakerPolicy, BudgetPolicy, RetryPolicy

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from ._config import Target
    from ._fallback import Fallback
    from ._policy import ExceptionMatcher, ResultPredicate

__all__ = ["GENERIC", "OVERFLOW", "Profile", "Registry", "default_registry"]

#: The name of the breaker that every name past the cap shares.
OVERFLOW = "otelres.overflow"

_log = logging.getLogger("otelres")


@dataclasses.dataclass(frozen=True, eq=False)
class Profile:
    """How one kind of caller judges and retries its calls to a dependency.

    An integration has one per kind of call (HTTP requests; PostgreSQL connects
    and statements; ...): ``failure_on``, ``failure_result`` and
    ``others_succeed`` replace the configured breaker policy's (what counts
    against the breaker; by default an error the integration does not call a
    failure is the server's answer, a success; None keeps the configured), ``retry``
    gives the changes to the configured retry policy for a configuration entry
    (its predicates, its reason labels, ``attempts=1`` for a call never
    repeated), ``discard`` releases a result that is retried or replaced, and
    ``rejection`` gives the class a rejection raises (asked when a guard is
    built: a subclass of :class:`~otelres.CircuitOpenError` that is also the
    client library's own connection error, so an application's ``except``
    clauses keep working). Compared by identity: each is a module-level constant.
    """

    kind: str
    failure_on: ExceptionMatcher | None = None
    failure_result: ResultPredicate | None = None
    others_succeed: bool | None = True
    retry: Callable[[Target], Mapping[str, Any]] | None = None
    discard: Callable[[Any], object] | None = None
    rejection: Callable[[], type[CircuitOpenError]] | None = None

    def judge(self, target: Target) -> BreakerPolicy:
        """The breaker policy whose predicates judge this caller's attempts."""
        changes: dict[str, Any] = {}
        if self.failure_on is not None:
            changes["failure_on"] = self.failure_on
        if self.failure_result is not None:
            changes["failure_result"] = self.failure_result
        if self.others_succeed is not None:
            changes["others_succeed"] = self.others_succeed
        return target.breaker.evolve(**changes) if changes else target.breaker

    def error_class(self) -> type[CircuitOpenError]:
        """What a rejection of this caller's calls raises."""
        return self.rejection() if self.rejection is not None else CircuitOpenError

    def retry_policy(self, target: Target) -> RetryPolicy:
        """The configured retry policy with this caller's changes."""
        return target.retry.evolve(**self.retry(target)) if self.retry is not None else target.retry


#: A call site with no integration's predicates: the configuration as it is.
GENERIC = Profile("generic", others_succeed=None)


class Registry:
    """Breakers and budgets by name, and the guards built on them; thread-safe; capped."""

    __slots__ = (
        "__weakref__",
        "_aliases",
        "_clock",
        "_entries",
        "_guards",
        "_guards_for",
        "_lock",
        "_settings",
        "_warned",
    )

    def __init__(
        self,
        settings: Settings | Callable[[], Settings] | None = None,
        *,
        clock: Clock = MONOTONIC,
    ) -> None:
        self._settings = settings if settings is not None else _config.current
        self._clock = clock
        self._entries: dict[str, tuple[CircuitBreaker, RetryBudget]] = {}
        # profile -> name -> guard, for the settings object they were built from.
        self._guards: dict[Profile, dict[str, Guard]] = {}
        # profile -> a name as written -> its guard, for names that are not their guard's
        # (made safe, or past the cap): bounded, emptied when full.
        self._aliases: dict[Profile, dict[str, Guard]] = {}
        self._guards_for: Settings | None = None
        self._lock = threading.Lock()
        _fork.renew(self, "_lock")
        self._warned = False

    @property
    def settings(self) -> Settings:
        """The settings new breakers and guards are configured from."""
        settings = self._settings
        return settings if isinstance(settings, Settings) else settings()

    # -- guards ---------------------------------------------------------------------------

    def guard(
        self,
        name: str,
        profile: Profile = GENERIC,
        *,
        retry: RetryPolicy | None = None,
        breaker: CircuitBreaker | BreakerPolicy | None = None,
        budget: RetryBudget | BudgetPolicy | None = None,
        fallback: Fallback[Any] | None = None,
        discard: Callable[[Any], object] | None = None,
        clock: Clock | None = None,
        random: Callable[[], float] | None = None,
    ) -> Guard:
        """What calls to ``name`` by a caller of ``profile`` go through.

        Without options the guard is the shared one for (name, profile), built
        on first use and rebuilt when the settings are replaced; the options
        make a call site's own guard: ``retry``, ``fallback``, ``discard`` and
        ``random`` replace what the configuration and profile give; a
        :class:`BreakerPolicy` (or a ``clock``) makes a private breaker and
        budget, a :class:`CircuitBreaker` or :class:`RetryBudget` is used as given.
        """
        if not isinstance(name, str) or not name.strip():
            raise ConfigError("name", name, "a non-empty string naming the dependency")
        if (retry, breaker, budget, fallback, discard, clock, random) == (None,) * 7:
            return self._shared_guard(name, profile)
        name = safe_name(name)
        settings = self.settings
        target = settings.for_target(name)
        judge: BreakerPolicy | None = None
        if isinstance(breaker, CircuitBreaker):
            judge = breaker.policy  # a breaker handed over judges by its own policy
        elif isinstance(breaker, BreakerPolicy):
            judge = breaker
            breaker = CircuitBreaker(name, judge, clock=clock)
        elif breaker is not None:
            raise ConfigError("breaker", breaker, "an otelres.BreakerPolicy or CircuitBreaker")
        elif clock is not None:
            breaker = CircuitBreaker(name, target.breaker, clock=clock)
        else:
            name, (breaker, shared_budget) = self._resolve(name, settings)
            if name == OVERFLOW:
                target = settings.default
            if budget is None:
                budget = shared_budget
        if not isinstance(budget, RetryBudget):
            # A breaker of the call site's own has a budget of its own too.
            budget = RetryBudget(budget if budget is not None else target.budget)
        return _compose(
            profile,
            target,
            breaker,
            budget,
            retry=retry,
            judge=judge,
            fallback=fallback,
            discard=discard,
            random=random,
        )

    def _shared_guard(self, name: str, profile: Profile) -> Guard:
        settings = self.settings
        if settings is self._guards_for:
            found = self._guards.get(profile, {}).get(name) or self._aliases.get(profile, {}).get(name)
            if found is not None:
                return found
        with self._lock:
            if settings is not self._guards_for:
                self._guards.clear()
                self._aliases.clear()
                self._guards_for = settings
        # Stored under the safe name; a name as written that differs (a password in it, or
        # past the cap) finds it through the bounded alias map below.
        key, (breaker, budget) = self._resolve(safe_name(name), settings)
        target = settings.for_target(key) if key != OVERFLOW else settings.default
        guard = _compose(profile, target, breaker, budget)
        with self._lock:
            if settings is self._guards_for:
                # Keyed by the name the breaker has: past the cap, one guard per profile.
                guard = self._guards.setdefault(profile, {}).setdefault(key, guard)
                if key != name:
                    aliases = self._aliases.setdefault(profile, {})
                    if len(aliases) >= settings.max_breakers:
                        aliases.clear()
                    aliases[name] = guard
        return guard

    # -- breakers and budgets ------------------------------------------------------------------

    def entry(self, name: str) -> tuple[CircuitBreaker, RetryBudget]:
        """The breaker and budget for ``name`` (the overflow pair past the cap), created on first use."""
        return self._resolve(safe_name(name), None)[1]

    def _resolve(
        self, name: str, settings: Settings | None
    ) -> tuple[str, tuple[CircuitBreaker, RetryBudget]]:
        """The name the dependency's breaker has (``name``, or :data:`OVERFLOW` past
        the cap) and its breaker and budget, created on first use.
        """
        found = self._entries.get(name)
        if found is not None:
            return name, found
        with self._lock:
            found = self._entries.get(name)
            if found is not None:
                return name, found
            if settings is None:
                settings = self.settings
            if len(self._entries) >= settings.max_breakers:
                return OVERFLOW, self._overflow(name, settings)
            target = settings.for_target(name)
            found = (CircuitBreaker(name, target.breaker, clock=self._clock), RetryBudget(target.budget))
            self._entries[name] = found
            return name, found

    def _overflow(self, name: str, settings: Settings) -> tuple[CircuitBreaker, RetryBudget]:
        found = self._entries.get(OVERFLOW)
        if found is None:
            target = settings.default
            found = (CircuitBreaker(OVERFLOW, target.breaker, clock=self._clock), RetryBudget(target.budget))
            # Stored beyond the cap on purpose: it is the one entry the cap allows extra.
            self._entries[OVERFLOW] = found
        if not self._warned:
            self._warned = True
            _log.warning(
                "otelres: more than %d breakers; %r and every later new name share the breaker %r "
                "(raise OTELRES_MAX_BREAKERS if these are real dependencies)",
                settings.max_breakers,
                name,
                OVERFLOW,
            )
        return found

    def get(self, name: str) -> CircuitBreaker:
        """The breaker for ``name``."""
        return self.entry(name)[0]

    def fresh(self, guard: Guard, settings: Settings | None) -> bool:
        """Whether ``guard``, which this registry gave while its settings were ``settings``,
        is still what it gives: the settings are the same and the breaker of the guard's name
        is still the guard's (:meth:`clear` makes new ones). For an integration that keeps a
        guard per connection or pool instead of asking on every call.
        """
        found = self._entries.get(guard.name)
        return self.settings is settings and found is not None and found[0] is guard.breaker

    def breakers(self) -> list[CircuitBreaker]:
        """Every breaker, in creation order."""
        return [breaker for breaker, _ in list(self._entries.values())]

    def clear(self) -> None:
        """Forget every breaker and guard (tests, and :func:`otelres.reset`)."""
        with self._lock:
            self._entries.clear()
            self._guards.clear()
            self._aliases.clear()
            self._guards_for = None
            self._warned = False


def _compose(
    profile: Profile,
    target: Target,
    breaker: CircuitBreaker,
    budget: RetryBudget,
    *,
    retry: RetryPolicy | None = None,
    judge: BreakerPolicy | None = None,
    fallback: Fallback[Any] | None = None,
    discard: Callable[[Any], object] | None = None,
    random: Callable[[], float] | None = None,
) -> Guard:
    """The guard of ``breaker`` and ``budget`` for a caller of ``profile`` under the
    configuration entry ``target``; a call site's own parts replace the profile's.
    """
    return Guard(
        breaker,
        budget,
        retry if retry is not None else profile.retry_policy(target),
        judge=judge if judge is not None else profile.judge(target),
        fallback=fallback,
        discard=discard if discard is not None else profile.discard,
        random=random,
        enabled=target.enabled,
        target=target,
        error_class=profile.error_class(),
    )


_default: Registry | None = None
_default_lock = threading.Lock()
_fork.renew(sys.modules[__name__], "_default_lock")


def default_registry() -> Registry:
    """The process-wide registry."""
    global _default  # noqa: PLW0603 - the one process-wide registry
    registry = _default
    if registry is None:
        with _default_lock:
            if _default is None:
                _default = Registry()
            registry = _default
    return registry


def set_default_registry(registry: Registry | None) -> Registry | None:
    """Swap the process-wide registry (returns the previous one); for tests."""
    global _default
    with _default_lock:
        previous, _default = _default, registry
    return previous
