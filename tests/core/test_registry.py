"""The registry: one breaker and budget per name, per-target policies, a cap with one overflow breaker."""

from __future__ import annotations

import logging
import sys
import threading
from typing import TYPE_CHECKING

import pytest

import otelres
from otelres import _config
from otelres._registry import OVERFLOW, set_default_registry
from otelres._resilience import run

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from otelres.testing import FakeClock

THREADS = 16


def registry(**env: str) -> otelres.Registry:
    return otelres.Registry(otelres.load_settings(env=env))


def run_together(fn: Callable[[int], object], threads: int = THREADS) -> list[object]:
    """Run fn(i) on ``threads`` threads released at the same instant; return the results in order."""
    barrier = threading.Barrier(threads)
    results: list[object] = [None] * threads
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            barrier.wait()
            results[i] = fn(i)
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=10)
    assert not errors
    return results


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Switch threads every microsecond so that races show up within a few rounds."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(previous)


def overflow_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "otelres" and r.levelno == logging.WARNING]


# -- one breaker per name ------------------------------------------------------------------------


def test_same_name_gives_the_same_breaker_and_budget() -> None:
    """entry(name) twice returns the very same breaker and budget; another name gets others."""
    reg = registry()
    breaker, budget = reg.entry("https://api.example.com:443")
    assert reg.entry("https://api.example.com:443") == (breaker, budget)
    assert reg.get("https://api.example.com:443") is breaker
    other, other_budget = reg.entry("postgresql://db:5432/app")
    assert other is not breaker
    assert other_budget is not budget
    assert breaker.name == "https://api.example.com:443"
    assert [b.name for b in reg.breakers()] == ["https://api.example.com:443", "postgresql://db:5432/app"]


def test_new_breakers_get_the_default_policies() -> None:
    """A breaker and budget created from settings carry the settings' default policies."""
    reg = registry(OTELRES_BREAKER_OPEN_SECONDS="9", OTELRES_BUDGET_MIN_RETRIES="7")
    breaker, budget = reg.entry("anything")
    assert breaker.policy == otelres.BreakerPolicy(open_seconds=9.0)
    assert budget.policy == otelres.BudgetPolicy(min_retries=7)


def test_per_target_settings_apply_to_new_breakers(tmp_path: Path) -> None:
    """Breakers for names matching a target (exact or host) get its policies; others the default."""
    path = tmp_path / "otelres.toml"
    path.write_text(
        '[targets."https://api.example.com:443".breaker]\nopen_seconds = 3\n'
        '[targets."db.internal".breaker]\nconsecutive_failures = 2\n'
        '[targets."db.internal".budget]\nratio = 0.5\n',
        encoding="utf-8",
    )
    reg = registry(OTELRES_CONFIG=str(path))
    assert reg.get("https://api.example.com:443").policy.open_seconds == 3.0
    db, db_budget = reg.entry("postgresql://db.internal:5432/app")
    assert db.policy.consecutive_failures == 2
    assert db_budget.policy.ratio == 0.5
    plain, plain_budget = reg.entry("https://other.example.com:443")
    assert plain.policy == otelres.BreakerPolicy()
    assert plain_budget.policy == otelres.BudgetPolicy()


def test_registry_reads_settings_lazily_from_a_callable() -> None:
    """Registry(callable) asks for the settings when a breaker is created, not before."""
    current = {"settings": otelres.load_settings(env={"OTELRES_BREAKER_OPEN_SECONDS": "2"})}
    reg = otelres.Registry(lambda: current["settings"])
    assert reg.get("a").policy.open_seconds == 2.0
    current["settings"] = otelres.load_settings(env={"OTELRES_BREAKER_OPEN_SECONDS": "4"})
    assert reg.get("b").policy.open_seconds == 4.0
    assert reg.get("a").policy.open_seconds == 2.0


def test_registry_without_settings_uses_the_process_settings() -> None:
    """Registry() follows otelres.configure()."""
    settings = otelres.load_settings(env={"OTELRES_BREAKER_HALF_OPEN_CALLS": "4"})
    otelres.configure(settings)
    reg = otelres.Registry()
    assert reg.settings is settings
    assert reg.get("x").policy.half_open_calls == 4


def test_registry_passes_its_clock_to_breakers(clock: FakeClock) -> None:
    """Registry(clock=) gives every breaker, overflow included, that clock."""
    reg = otelres.Registry(otelres.load_settings(env={"OTELRES_MAX_BREAKERS": "1"}), clock=clock)
    assert reg.get("a").clock is clock
    assert reg.get("b").clock is clock
    assert reg.get("b").name == OVERFLOW


# -- the cap ------------------------------------------------------------------------------------


def test_names_past_the_cap_share_the_overflow_breaker(caplog: pytest.LogCaptureFixture) -> None:
    """With max_breakers=3, the 4th and later names all get the one overflow breaker and budget."""
    reg = registry(OTELRES_MAX_BREAKERS="3")
    with caplog.at_level(logging.WARNING, logger="otelres"):
        own = [reg.entry(f"https://h{i}.example.com:443") for i in range(3)]
        past = [reg.entry(f"https://x{i}.example.com:443") for i in range(5)]
    assert [b.name for b, _ in own] == [f"https://h{i}.example.com:443" for i in range(3)]
    assert all(entry == past[0] for entry in past)
    assert past[0][0].name == OVERFLOW
    assert reg.entry("https://h1.example.com:443") == own[1]


def test_memory_stays_bounded_past_the_cap(caplog: pytest.LogCaptureFixture) -> None:
    """10,000 distinct names with max_breakers=N keep exactly N + 1 breakers."""
    n = 5
    reg = registry(OTELRES_MAX_BREAKERS=str(n))
    with caplog.at_level(logging.WARNING, logger="otelres"):
        breakers = {id(reg.get(f"https://tenant-{i}.example.com:443")) for i in range(10_000)}
    assert len(reg.breakers()) == n + 1
    assert len(breakers) == n + 1
    assert reg.breakers()[-1].name == OVERFLOW


def test_overflow_warning_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    """The first name past the cap logs one warning naming the cap, that name and the overflow breaker."""
    reg = registry(OTELRES_MAX_BREAKERS="2")
    with caplog.at_level(logging.WARNING, logger="otelres"):
        reg.get("a")
        reg.get("b")
        assert overflow_warnings(caplog) == []
        for i in range(10_000):
            reg.get(f"n{i}")
    records = overflow_warnings(caplog)
    assert len(records) == 1
    message = records[0].getMessage()
    assert "more than 2 breakers" in message
    assert "'n0'" in message
    assert repr(OVERFLOW) in message
    assert "OTELRES_MAX_BREAKERS" in message


def test_existing_names_keep_their_breaker_after_the_cap(caplog: pytest.LogCaptureFixture) -> None:
    """A name registered before the cap was reached keeps its own breaker afterwards."""
    reg = registry(OTELRES_MAX_BREAKERS="1")
    with caplog.at_level(logging.WARNING, logger="otelres"):
        first = reg.get("first")
        reg.get("second")
        assert reg.get("first") is first
    assert first.name == "first"


def test_clear_forgets_every_breaker_and_rearms_the_warning(caplog: pytest.LogCaptureFixture) -> None:
    """clear() empties the registry: new breakers for old names, and the cap warns again."""
    reg = registry(OTELRES_MAX_BREAKERS="1")
    with caplog.at_level(logging.WARNING, logger="otelres"):
        before = reg.get("a")
        reg.get("b")
        reg.clear()
        assert reg.breakers() == []
        after = reg.get("a")
        assert after is not before
        assert reg.get("b").name == OVERFLOW
    assert len(overflow_warnings(caplog)) == 2
    assert len(reg.breakers()) == 2


# -- threads ------------------------------------------------------------------------------------


def test_concurrent_creation_of_one_name_yields_one_breaker(fast_switching: None) -> None:
    """16 threads asking for the same new name at once all get one breaker and one budget."""
    reg = registry()
    for round_ in range(20):
        name = f"race-{round_}"
        entries = run_together(lambda _, name=name: reg.entry(name))
        assert len({id(breaker) for breaker, _ in entries}) == 1  # type: ignore[misc]
        assert len({id(budget) for _, budget in entries}) == 1  # type: ignore[misc]
        assert reg.entry(name) is entries[0]
    assert len(reg.breakers()) == 20


def test_concurrent_creation_respects_the_cap(caplog: pytest.LogCaptureFixture, fast_switching: None) -> None:
    """16 threads creating distinct names at once past the cap leave N + 1 breakers and one warning."""
    reg = registry(OTELRES_MAX_BREAKERS="4")
    with caplog.at_level(logging.WARNING, logger="otelres"):
        breakers = run_together(lambda i: [reg.get(f"t{i}-{j}") for j in range(50)])
    assert len(reg.breakers()) == 5
    assert len({id(b) for batch in breakers for b in batch}) == 5  # type: ignore[attr-defined]
    assert len(overflow_warnings(caplog)) == 1


# -- Resilience and the default registry --------------------------------------------------------------


def fail() -> None:
    raise ConnectionError("refused")


def trip_settings() -> otelres.Settings:
    return otelres.load_settings(
        env={"OTELRES_BREAKER_CONSECUTIVE_FAILURES": "2", "OTELRES_RETRY_ATTEMPTS": "1"}
    )


def test_resilience_without_a_breaker_uses_the_shared_one() -> None:
    """Resilience(name) takes the default registry's breaker and budget for that name."""
    first = otelres.Resilience("https://api.example.com:443")
    second = otelres.Resilience("https://api.example.com:443")
    registered, budget = otelres.default_registry().entry("https://api.example.com:443")
    assert first.breaker is second.breaker is registered
    assert first.budget is second.budget is budget


def test_two_resilience_objects_with_one_name_share_state() -> None:
    """Failures through one Resilience open the circuit for another with the same name."""
    otelres.configure(trip_settings())
    first = otelres.Resilience("payments")
    second = otelres.Resilience("payments")
    for _ in range(2):
        with pytest.raises(ConnectionError):
            first.call(fail)
    with pytest.raises(otelres.CircuitOpenError) as info:
        second.call(lambda: "ok")
    assert info.value.breaker == "payments"
    assert otelres.Resilience("other").call(lambda: "ok") == "ok"


def test_resilience_with_a_breaker_policy_gets_a_private_breaker() -> None:
    """breaker=BreakerPolicy(...) builds a private breaker and budget, outside the registry."""
    otelres.configure(trip_settings())
    private = otelres.Resilience("payments", breaker=otelres.BreakerPolicy(consecutive_failures=1))
    shared = otelres.Resilience("payments")
    assert private.breaker is not shared.breaker
    assert private.budget is not shared.budget
    assert private.breaker.policy.consecutive_failures == 1
    with pytest.raises(ConnectionError):
        private.call(fail)
    with pytest.raises(otelres.CircuitOpenError):
        private.call(lambda: "ok")
    assert shared.call(lambda: "ok") == "ok"
    assert [b.name for b in otelres.default_registry().breakers()] == ["payments"]
    assert otelres.default_registry().get("payments") is shared.breaker


def test_resilience_with_a_clock_gets_a_private_breaker_with_target_policy(clock: FakeClock) -> None:
    """clock= builds a private breaker on that clock, configured from the settings for the name."""
    otelres.configure(otelres.load_settings(env={"OTELRES_BREAKER_OPEN_SECONDS": "9"}))
    res = otelres.Resilience("payments", clock=clock)
    assert res.breaker.clock is clock
    assert res.breaker.policy.open_seconds == 9.0
    assert otelres.default_registry().breakers() == []
    assert res.breaker is not otelres.Resilience("payments").breaker


def test_resilience_with_a_circuit_breaker_shares_it_explicitly() -> None:
    """breaker=<CircuitBreaker> uses that very breaker, not the registry's."""
    breaker = otelres.CircuitBreaker("explicit")
    res = otelres.Resilience("payments", breaker=breaker)
    assert res.breaker is breaker
    assert res.name == "explicit"
    assert otelres.default_registry().breakers() == []


def test_default_registry_is_a_singleton() -> None:
    """default_registry() returns the same registry every time."""
    assert otelres.default_registry() is otelres.default_registry()


def test_default_registry_is_created_once_under_concurrency(fast_switching: None) -> None:
    """With no registry yet, 16 threads calling default_registry() at once get one registry."""
    set_default_registry(None)
    registries = run_together(lambda _: otelres.default_registry())
    assert len({id(r) for r in registries}) == 1
    assert registries[0] is otelres.default_registry()


def test_a_fresh_default_registry_follows_the_process_settings() -> None:
    """The lazily created default registry reads otelres.configure()'s settings."""
    set_default_registry(None)
    otelres.configure(otelres.load_settings(env={"OTELRES_MAX_BREAKERS": "9"}))
    assert otelres.default_registry().settings.max_breakers == 9
    otelres.configure(None)
    assert otelres.default_registry().settings is _config.current()


LEAK = "registry-isolation-probe"


def test_isolation_probe_registers_a_breaker() -> None:
    """(with the next test) a breaker registered here..."""
    otelres.Resilience(LEAK)
    assert LEAK in [b.name for b in otelres.default_registry().breakers()]


def test_isolation_probe_is_gone_in_the_next_test() -> None:
    """...is not in the default registry of the next test (conftest swaps it per test)."""
    assert LEAK not in [b.name for b in otelres.default_registry().breakers()]


# -- guards: the composition root --------------------------------------------------------------


FIVE_XX = otelres.Profile("http-like", failure_result=lambda status: status >= 500)


def test_callers_share_one_breaker_and_each_judges_its_own_attempts(clock: FakeClock) -> None:
    """A decorator built first and a client profile built second share the breaker, and the second's
    verdict (5xx results are failures) is not dropped: its 503s open the circuit."""
    reg = otelres.Registry(otelres.load_settings(env={"OTELRES_BREAKER_MINIMUM_CALLS": "4"}), clock=clock)
    generic = reg.guard("http://api:80")
    client = reg.guard("http://api:80", FIVE_XX)
    assert generic.breaker is client.breaker
    assert generic.budget is client.budget
    for _ in range(4):
        assert run(generic, lambda: 503, (), {}) == 503  # a result means nothing to the generic caller
    assert client.breaker.state is otelres.State.CLOSED
    for _ in range(4):
        run(client, lambda: 503, (), {})
    assert client.breaker.state is otelres.State.OPEN


def test_shared_guards_are_built_once_and_rebuilt_with_new_settings() -> None:
    """The same (name, profile) gets the same guard until the settings are replaced; then a new one
    with the new policies, over the same breaker (its state is kept)."""
    reg = otelres.Registry()
    first = reg.guard("https://api.example.com:443", FIVE_XX)
    assert reg.guard("https://api.example.com:443", FIVE_XX) is first
    assert reg.guard("https://api.example.com:443") is not first
    _config.configure(otelres.load_settings(env={"OTELRES_RETRY_ATTEMPTS": "5"}))
    second = reg.guard("https://api.example.com:443", FIVE_XX)
    assert second is not first
    assert (first.retry.attempts, second.retry.attempts) == (3, 5)
    assert second.breaker is first.breaker


def test_guards_past_the_cap_share_the_overflow_and_stay_bounded(caplog: pytest.LogCaptureFixture) -> None:
    """Past max_breakers every new name gets the overflow guard of its profile: no guard per name."""
    reg = registry(OTELRES_MAX_BREAKERS="3")
    with caplog.at_level(logging.WARNING, logger="otelres"):
        guards = [reg.guard(f"https://h{i}.example.com:443", FIVE_XX) for i in range(200)]
    assert {g.name for g in guards[3:]} == {OVERFLOW}
    assert len({id(g) for g in guards[3:]}) == 1
    assert len(reg._guards[FIVE_XX]) == 4  # three names and the overflow
    assert len(overflow_warnings(caplog)) == 1


def test_call_site_options_make_a_guard_of_their_own(clock: FakeClock) -> None:
    """A BreakerPolicy makes a private breaker and budget judged by that policy, apart from the shared one."""
    reg = otelres.Registry()
    policy = otelres.BreakerPolicy(consecutive_failures=1)
    own = reg.guard("dep", breaker=policy, clock=clock)
    shared = reg.guard("dep")
    assert own.breaker is not shared.breaker
    assert own.budget is not shared.budget
    assert own.judge is policy
    assert own.breaker.clock is clock


def test_guard_rejects_a_bad_name_and_a_bad_breaker() -> None:
    """An empty name, or a breaker of the wrong kind, is a ConfigError naming the key."""
    reg = otelres.Registry()
    with pytest.raises(otelres.ConfigError, match="invalid value for name"):
        reg.guard("")
    with pytest.raises(otelres.ConfigError, match="invalid value for breaker"):
        reg.guard("dep", breaker="closed")  # type: ignore[arg-type]


def test_a_kept_guard_is_fresh_until_the_settings_change_or_the_registry_is_cleared() -> None:
    """Registry.fresh(): what an integration that keeps a guard per connection asks before using it."""
    registry = otelres.Registry()
    settings = registry.settings
    guard = registry.guard("https://api.example.com:443")
    assert registry.fresh(guard, settings)
    assert not registry.fresh(guard, None)
    registry.clear()  # new breakers: the kept guard's is not the name's any more
    assert not registry.fresh(guard, registry.settings)
    guard = registry.guard("https://api.example.com:443")
    assert registry.fresh(guard, registry.settings)
    assert not registry.fresh(registry.guard("https://other.example.com:443"), otelres.load_settings(env={}))
