"""The redis integration (sync and asyncio) against a real redis-server: the
store contract, redis-py's own retries, pipelines and breaker names."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest
import redis
import redis.asyncio
from opentelemetry.instrumentation.redis import RedisInstrumentor as OpenTelemetryRedis
from redis.backoff import NoBackoff
from redis.retry import Retry
from store_contract import Store, StoreContract, call_and_attempts
from store_servers import FlakyProxy, RedisServer, resp

from otelres import CircuitOpenError, State, default_registry
from otelres.instrumentation.redis import READ_COMMANDS, RedisInstrumentor, breaker_name
from otelres.testing import capture_events, forced_state, in_trouble

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Iterator
    from pathlib import Path

    from opentelemetry.instrumentation.instrumentor import BaseInstrumentor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


class RedisStore(Store):
    """A sync redis-py client through the flaky proxy to the test's redis-server."""

    read_reason = "connect"
    unsafe_reason = "not_idempotent"
    unsafe_applied = 1
    outage_error = redis.ConnectionError
    integration = "otelres.instrumentation.redis"
    caller_error_type = redis.ResponseError

    def __init__(self, server: RedisServer, proxy: FlakyProxy) -> None:
        self.server = server
        self.proxy = proxy
        self.name = f"redis://127.0.0.1:{proxy.port}/0"
        self.client: Any = self.make_client()

    def make_client(self) -> Any:
        return redis.Redis(host="127.0.0.1", port=self.proxy.port)

    def call(self, method: str, *args: object) -> Any:
        return getattr(self.client, method)(*args)

    def close(self) -> None:
        self.client.close()

    def read(self) -> int:
        return int(self.call("get", "counter") or 0)

    def write(self) -> None:
        self.call("incr", "counter")

    def counter(self) -> int:
        return int(resp(self.server.port, "GET", "counter") or 0)

    def break_next_read(self) -> None:
        self.proxy.drop("GET")

    def unsafe_write(self) -> None:
        self.proxy.drop(
            "INCRBY", when="after"
        )  # redis-py sends incr() as INCRBY; the server applies it, the reply is lost
        self.write()

    def caller_error(self) -> None:
        self.call("set", "text", "x")
        self.call("lpush", "text", "y")  # WRONGTYPE

    def log(self, item: int) -> None:
        self.call("rpush", "log", item)

    def logged(self) -> list[int]:
        return [int(x) for x in resp(self.server.port, "LRANGE", "log", 0, -1)]

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server.start()

    def connects(self) -> int:
        return self.proxy.connections


class AsyncRedisStore(RedisStore):
    """A redis.asyncio client, each call run to completion on the store's own event loop."""

    def __init__(self, server: RedisServer, proxy: FlakyProxy) -> None:
        self.loop = asyncio.new_event_loop()
        super().__init__(server, proxy)

    def make_client(self) -> Any:
        return redis.asyncio.Redis(host="127.0.0.1", port=self.proxy.port)

    def run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return self.loop.run_until_complete(coroutine)

    def call(self, method: str, *args: object) -> Any:
        return self.run(getattr(self.client, method)(*args))

    def close(self) -> None:
        try:
            self.run(self.client.aclose())
            self.run(self.loop.shutdown_asyncgens())
        finally:
            self.loop.close()


class TestRedisContract(StoreContract):
    """The store contract for redis-py's sync client."""

    @pytest.fixture
    def store(self, redis_server: RedisServer, proxy: FlakyProxy) -> Iterator[Store]:
        store = RedisStore(redis_server, proxy)
        yield store
        store.close()


class TestRedisAsyncioContract(StoreContract):
    """The store contract for redis.asyncio."""

    @pytest.fixture
    def store(self, redis_server: RedisServer, proxy: FlakyProxy) -> Iterator[Store]:
        store = AsyncRedisStore(redis_server, proxy)
        yield store
        store.close()


@pytest.fixture(params=["sync", "asyncio"])
def client(
    request: pytest.FixtureRequest, redis_server: RedisServer, proxy: FlakyProxy
) -> Iterator[RedisStore]:
    """A store of each kind (sync and asyncio) for the tests below."""
    store = (
        RedisStore(redis_server, proxy) if request.param == "sync" else AsyncRedisStore(redis_server, proxy)
    )
    yield store
    store.close()


def _pipeline(store: RedisStore, commands: list[tuple[str, tuple[object, ...]]]) -> list[Any]:
    pipe = store.client.pipeline(transaction=False)
    for method, args in commands:
        getattr(pipe, method)(*args)
    if isinstance(store, AsyncRedisStore):
        return store.run(pipe.execute())
    return pipe.execute()


def test_redis_py_default_retry_makes_one_attempt(
    instrument: Callable[..., None], client: RedisStore
) -> None:
    """Inside a wrapped call redis-py's default Retry makes one attempt: attempts are not multiplied."""
    instrument(retry_attempts=3)
    client.call("ping")
    client.proxy.drop("GET", times=20)
    with pytest.raises(redis.ConnectionError):
        client.read()
    assert client.proxy.seen("GET") == 3
    assert default_registry().get(client.name).stats().failures == 3


def test_application_retry_left_to_redis_py(instrument: Callable[..., None], proxy: FlakyProxy) -> None:
    """A Retry the application configured does the retrying; otelres keeps the breaker, adds no retries."""
    instrument(retry_attempts=3)
    client = redis.Redis(host="127.0.0.1", port=proxy.port, retry=Retry(NoBackoff(), 2))
    try:
        client.ping()
        proxy.drop("GET", times=20)
        with capture_events() as events, pytest.raises(redis.ConnectionError):
            client.get("counter")
    finally:
        client.close()
    assert proxy.seen("GET") == 3  # redis-py's first attempt and its two retries
    assert [e.fields["reason"] for e in events.of("retry_suppressed")] == ["client_retry"]
    assert events.of("retry") == []


def test_two_word_read_command_retried(instrument: Callable[..., None], client: RedisStore) -> None:
    """A read sent as two words (CONFIG GET) is known as a read and retried."""
    instrument()
    client.proxy.drop("CONFIG")
    assert "maxmemory" in client.call("config_get", "maxmemory")
    assert client.proxy.seen("CONFIG") == 2


def test_pipeline_one_breaker_call_never_retried(instrument: Callable[..., None], client: RedisStore) -> None:
    """A pipeline is one breaker call: never retried (a write applied once), rejected fast when open."""
    instrument()
    client.proxy.drop("INCRBY", when="after")
    with capture_events() as events, pytest.raises(redis.ConnectionError):
        _pipeline(client, [("incr", ("counter",)), ("get", ("counter",))])
    assert client.counter() == 1
    assert [e.fields["reason"] for e in events.of("retry_suppressed")] == ["not_idempotent"]

    client.proxy.drop("GET")
    with capture_events() as events, pytest.raises(redis.ConnectionError):
        _pipeline(client, [("get", ("counter",)), ("ttl", ("counter",))])
    assert [e.fields["reason"] for e in events.of("retry_suppressed")] == ["not_replayable"]
    assert client.proxy.seen("GET") == 1
    breaker = default_registry().get(client.name)
    assert breaker.stats().failures == 2

    assert _pipeline(client, [("incr", ("counter",)), ("get", ("counter",))]) == [2, b"2"]
    connections = client.proxy.connections
    with forced_state(breaker, State.OPEN), pytest.raises(CircuitOpenError):
        _pipeline(client, [("get", ("counter",))])
    assert client.proxy.connections == connections
    assert client.counter() == 2


def test_unix_socket_breaker_name(instrument: Callable[..., None], tmp_path: Path) -> None:
    """A client over a unix socket works under the breaker redis+unix:///path/db."""
    socket_path = tmp_path / "redis.sock"
    with RedisServer(tmp_path, unix_socket=socket_path):
        instrument()
        client = redis.Redis(unix_socket_path=str(socket_path), db=1)
        try:
            client.set("k", "v")
            assert client.get("k") == b"v"
        finally:
            client.close()
    assert [b.name for b in default_registry().breakers()] == [f"redis+unix://{socket_path}/1"]


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (
            lambda: redis.Redis.from_url("redis://app:s3cret@Cache.Example:6390/4"),
            "redis://cache.example:6390/4",
        ),
        (
            lambda: redis.Redis(host="10.0.0.7", password="s3cret"),  # noqa: S106 - a fake one
            "redis://10.0.0.7:6379/0",
        ),
        (lambda: redis.Redis(host="cache", port=6380, ssl=True), "rediss://cache:6380/0"),
        (lambda: redis.Redis(host="::1"), "redis://[::1]:6379/0"),
        (lambda: redis.Redis.from_url("unix:///run/redis.sock?db=2"), "redis+unix:///run/redis.sock/2"),
        (
            lambda: redis.asyncio.Redis.from_url("redis://:s3cret@127.0.0.1:7000/3"),
            "redis://127.0.0.1:7000/3",
        ),
    ],
)
def test_breaker_name_of_pool(make: Callable[[], Any], expected: str) -> None:
    """The breaker name comes from the pool: scheme, host, port and database, never a password."""
    client = make()
    assert breaker_name(client.connection_pool) == expected


@pytest.mark.parametrize(
    "command", ["GET", "MGET", "EXISTS", "HGETALL", "LRANGE", "SMEMBERS", "ZRANGE", "TTL", "PING"]
)
def test_reads_are_known(command: str) -> None:
    """The idempotent reads the contract names are in READ_COMMANDS; writes are not."""
    assert command in READ_COMMANDS
    assert not {"SET", "INCR", "LPUSH", "RPUSH", "DEL", "EXPIRE", "GETDEL", "GETEX", "LPOP"} & READ_COMMANDS


def test_attempts_are_client_spans_under_one_call_span(
    install: Callable[[str, BaseInstrumentor, BaseInstrumentor], InMemorySpanExporter],
    client: RedisStore,
) -> None:
    """OpenTelemetry's instrumentation on first: a CLIENT span per attempt under the call's span
    (the store in trouble: the call's span starts before its first attempt)."""
    exporter = install("opentelemetry_first", OpenTelemetryRedis(), RedisInstrumentor())
    client.break_next_read()
    with in_trouble(client.name):
        assert client.read() == 0
    call, attempts = call_and_attempts(exporter, client.name)
    assert len(attempts) == 2
    for attempt in attempts:
        assert attempt.parent is not None
        assert attempt.parent.span_id == call.context.span_id
    assert [e.name for e in call.events] == ["otelres.retry"]
