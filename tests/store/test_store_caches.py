"""What the redis and sqlite3 integrations keep between calls so that a command
costs little: each is bounded, goes with what it describes, and never outlives
the settings, the registry or the redis-py ``Retry`` it was worked out from.
"""

from __future__ import annotations

import asyncio
import gc
import sqlite3
from typing import TYPE_CHECKING, Any

import pytest
import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.retry import Retry

import otelres
from otelres import State, default_registry
from otelres._registry import Registry, set_default_registry
from otelres.instrumentation import redis as ours
from otelres.testing import capture_events, forced_state

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from store_servers import FlakyProxy

FAST = {"retry_base_delay": 0.001, "retry_max_delay": 0.002}


@pytest.fixture
def client(instrument: Callable[..., None], proxy: FlakyProxy) -> Iterator[Any]:
    """A sync redis-py client through the flaky proxy, otelres instrumented."""
    instrument(retry_attempts=2)
    made = redis.Redis(host="127.0.0.1", port=proxy.port)
    yield made
    made.close()


def _one_attempt_mode() -> Any:
    """Set what a wrapped call sets: redis-py's retry loop makes one attempt."""
    return ours._one_attempt.set(True)


# -- redis: what a pool keeps -------------------------------------------------------------------------


def test_a_client_follows_new_settings(client: Any, proxy: FlakyProxy) -> None:
    """Retries follow the settings in force, for a client made under the earlier ones."""
    client.ping()
    proxy.drop("GET", times=20)
    with pytest.raises(redis.ConnectionError):
        client.get("k")
    assert proxy.seen("GET") == 2
    otelres.configure(otelres.load_settings(overrides={**FAST, "retry_attempts": 4}))
    with pytest.raises(redis.ConnectionError):
        client.get("k")
    assert proxy.seen("GET") == 2 + 4


def test_a_client_follows_a_new_registry(client: Any) -> None:
    """Commands count on the breaker of the registry in force."""
    name = ours.breaker_name(client.connection_pool)
    client.ping()
    first = default_registry().get(name).stats().successes
    previous = set_default_registry(Registry())
    try:
        client.ping()
        assert default_registry().get(name).stats().successes == 1
    finally:
        set_default_registry(previous)
    client.ping()
    assert default_registry().get(name).stats().successes == first + 1


def test_a_client_follows_a_cleared_registry(client: Any) -> None:
    """After the registry forgets its breakers, commands go through the new breaker of the name."""
    name = ours.breaker_name(client.connection_pool)
    client.ping()
    default_registry().clear()
    client.ping()
    assert default_registry().get(name).stats().successes == 1
    with forced_state(name, State.FORCED_OPEN), pytest.raises(otelres.CircuitOpenError):
        client.ping()


def test_a_retry_set_on_the_pool_is_the_applications(client: Any, proxy: FlakyProxy) -> None:
    """A pool given a Retry of the application's after its first command leaves the retrying
    to redis-py from then on (and otelres's own retries while it had redis-py's default).
    """
    client.ping()
    proxy.drop("GET", times=20)
    with capture_events() as events, pytest.raises(redis.ConnectionError):
        client.get("k")
    assert proxy.seen("GET") == 2
    assert [e.fields["reason"] for e in events.of("retry")] == ["connect"]
    client.connection_pool.set_retry(Retry(NoBackoff(), 3))
    with capture_events() as events, pytest.raises(redis.ConnectionError):
        client.get("k")
    assert proxy.seen("GET") == 2 + 4  # redis-py's first attempt and its three retries
    assert [e.fields["reason"] for e in events.of("retry_suppressed")] == ["client_retry"]


def test_pools_kept_are_bounded_and_go_with_their_pools(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many pools keep at most the bound, and a pool that goes takes its entry along."""
    monkeypatch.setattr(ours, "_MAX_POOLS", 8)
    ours._pools.clear()
    clients = [redis.Redis(host="127.0.0.1", port=1000 + i) for i in range(20)]
    records = [ours._pool(c) for c in clients]
    names = {r.name for r in records if r is not None}
    del records
    assert names == {f"redis://127.0.0.1:{1000 + i}/0" for i in range(20)}
    assert 0 < len(ours._pools) <= 8
    del clients
    gc.collect()
    assert ours._pools == {}


def test_pool_names_never_carry_the_password() -> None:
    """The name kept for a pool is its breaker name: no user, no password."""
    client = redis.Redis.from_url("redis://app:s3cret@cache.example:6390/4")
    record = ours._pool(client)
    assert record is not None
    assert record.name == "redis://cache.example:6390/4"
    assert record.guard.name == "redis://cache.example:6390/4"


# -- redis: command reasons -------------------------------------------------------------------------


def test_command_reasons_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Learned command reasons stay under the bound whatever commands are sent."""
    monkeypatch.setattr(ours, "_MAX_REASONS", 16)
    ours._reasons.clear()
    for i in range(100):
        assert ours._learn_reason((f"NOSUCHCOMMAND{i}",)) == "not_idempotent"
    assert 0 < len(ours._reasons) <= 16


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (("GET", "k"), None),
        (("get", "k"), None),
        ((b"GET", "k"), None),
        (("SET", "k", "v"), "not_idempotent"),
        (("CONFIG", "GET", "maxmemory"), None),
        (("CONFIG", "SET", "maxmemory", "1"), "not_idempotent"),
        (("CONFIG",), "not_idempotent"),
        (("OBJECT", "ENCODING", "k"), None),
        (("OBJECT",), None),
    ],
)
def test_command_reasons_learned_as_worked_out(args: tuple[Any, ...], reason: str | None) -> None:
    """A reason learned is the one worked out, twice over; two-word commands are never learned."""
    ours._reasons.clear()
    assert ours._learn_reason(args) == reason
    assert ours._learn_reason(args) == reason
    first = args[0]
    if isinstance(first, str) and first.upper() not in ours._CONTAINERS:
        assert ours._reasons == {first: reason}
    else:
        assert ours._reasons == {}


# -- redis: the one-attempt copy of a Retry -----------------------------------------------------------


@pytest.fixture
def patched_retry() -> Iterator[None]:
    """redis-py's Retry.call_with_retry patched by otelres (nothing else)."""
    instrumentor = ours.RedisInstrumentor()
    instrumentor.instrument(skip_dep_check=True)
    yield
    instrumentor.uninstrument()


def _attempts(retry: Retry, error: Exception) -> tuple[int, int]:
    """(attempts, failure callbacks) of a call_with_retry whose every attempt raises ``error``."""
    calls: list[int] = []
    fails: list[Exception] = []

    def do() -> None:
        calls.append(1)
        raise error

    with pytest.raises(type(error)):
        retry.call_with_retry(do, fails.append)
    return len(calls), len(fails)


def test_one_attempt_inside_a_wrapped_call(patched_retry: None) -> None:
    """Inside a wrapped call a Retry makes one attempt, its failure callback called;
    outside, its own retries; the Retry itself is never changed.
    """
    retry = Retry(NoBackoff(), 3)
    token = _one_attempt_mode()
    try:
        assert _attempts(retry, redis.ConnectionError()) == (1, 1)
        assert _attempts(retry, redis.ConnectionError()) == (1, 1)
    finally:
        ours._one_attempt.reset(token)
    assert retry.get_retries() == 3
    assert _attempts(retry, redis.ConnectionError()) == (4, 4)


def test_a_reconfigured_retry_is_honoured(patched_retry: None) -> None:
    """A Retry changed after its one-attempt copy was made gets a new copy: new supported
    errors are retried as redis-py would (failure callback called), no retries pass through.
    """
    retry = Retry(NoBackoff(), 3)
    token = _one_attempt_mode()
    try:
        assert _attempts(retry, redis.ConnectionError()) == (1, 1)
        assert _attempts(retry, ValueError()) == (1, 0)  # not an error it retries: raised at once
        retry.update_supported_errors([ValueError])
        assert _attempts(retry, ValueError()) == (1, 1)
        retry.update_retries(0)
        assert _attempts(retry, redis.ConnectionError()) == (1, 1)
        retry.update_retries(2)
        assert _attempts(retry, redis.ConnectionError()) == (1, 1)
    finally:
        ours._one_attempt.reset(token)
    assert _attempts(retry, ValueError()) == (3, 3)


def test_retry_copies_are_bounded_and_go_with_their_retries(
    patched_retry: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many Retries keep at most the bound of copies, and a Retry that goes takes its copy along."""
    monkeypatch.setattr(ours, "_MAX_ONCES", 8)
    ours._onces.clear()
    retries = [Retry(NoBackoff(), 3) for _ in range(20)]
    token = _one_attempt_mode()
    try:
        for retry in retries:
            assert _attempts(retry, redis.ConnectionError()) == (1, 1)
    finally:
        ours._one_attempt.reset(token)
    assert 0 < len(ours._onces) <= 8
    del retries, retry
    gc.collect()
    assert ours._onces == {}


def test_asyncio_client_one_attempt(instrument: Callable[..., None], proxy: FlakyProxy) -> None:
    """redis.asyncio: redis-py's default Retry makes one attempt per otelres attempt, twice over."""
    instrument(retry_attempts=3)
    client = redis.asyncio.Redis(host="127.0.0.1", port=proxy.port)
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(client.ping())
        proxy.drop("GET", times=20)
        for seen in (3, 6):
            with pytest.raises(redis.ConnectionError):
                loop.run_until_complete(client.get("k"))
            assert proxy.seen("GET") == seen
    finally:
        loop.run_until_complete(client.aclose())
        loop.close()


# -- sqlite3 ------------------------------------------------------------------------------------------


def test_sqlite_connection_follows_settings_and_registry(
    instrument: Callable[..., None], tmp_path: Path
) -> None:
    """A connection's statements (and its cursors') go through the guard of the settings and
    registry in force (a cleared registry's new breaker too), not the ones of their first statement.
    """
    instrument()
    conn = sqlite3.connect(tmp_path / "app.db")
    cursor = conn.cursor()
    name = f"sqlite://{tmp_path / 'app.db'}"
    try:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert cursor.execute("SELECT 2").fetchone() == (2,)
        otelres.configure(otelres.load_settings(overrides={**FAST, "enabled": False}))
        with forced_state(name, State.FORCED_OPEN):  # otelres off: never consulted
            assert conn.execute("SELECT 1").fetchone() == (1,)
            assert cursor.execute("SELECT 2").fetchone() == (2,)
        otelres.configure(otelres.load_settings(overrides=FAST))
        with forced_state(name, State.FORCED_OPEN):
            with pytest.raises(otelres.CircuitOpenError):
                conn.execute("SELECT 1")
            with pytest.raises(otelres.CircuitOpenError):
                cursor.execute("SELECT 2")
        previous = set_default_registry(Registry())
        try:
            assert conn.execute("SELECT 1").fetchone() == (1,)
            assert cursor.execute("SELECT 2").fetchone() == (2,)
            assert default_registry().get(name).stats().successes == 2
        finally:
            set_default_registry(previous)
        assert conn.execute("SELECT 1").fetchone() == (1,)
        default_registry().clear()
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert cursor.execute("SELECT 2").fetchone() == (2,)
        assert default_registry().get(name).stats().successes == 2
    finally:
        conn.close()
