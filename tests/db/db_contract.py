# ruff: noqa: S608 - table names are made by the tests, never taken from input
"""The contract every PostgreSQL driver integration keeps (the OpenTelemetry contrib
pattern): one abstract test class, implemented once per driver and flavour
(psycopg sync and async, psycopg2, asyncpg) by saying how to connect, run a
statement and close, and what the integration patches.

Every test talks to the real server of conftest.py; the outage tests stop it and
start it again. The async drivers run each operation to completion on the test's
own event loop, so that one test body serves both flavours.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import gc
import importlib
import sys
import uuid
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote, urlsplit

import pytest
import wrapt
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.trace import SpanKind, StatusCode
from pg_server import free_port
from rejection_support import check_rejection

import otelres
import otelres.telemetry
from otelres import State
from otelres._registry import Registry, set_default_registry
from otelres.testing import FakeClock, capture_events, forced_state, in_trouble

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Iterator
    from pathlib import Path

    from conftest import Pg
    from opentelemetry.instrumentation.instrumentor import BaseInstrumentor
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from otelres._breaker import BreakerStats, CircuitBreaker

__all__ = ["FAST", "AsyncRunner", "DbContract"]

#: Retries within a few milliseconds: no test waits for a real backoff.
FAST: dict[str, object] = {"retry_base_delay": 0.001, "retry_max_delay": 0.002}
PROXY: Any = getattr(wrapt, "BaseObjectProxy", wrapt.ObjectProxy)


def breaker(name: str) -> CircuitBreaker | None:
    """The registered breaker ``name``, or None when it does not exist."""
    for found in otelres.default_registry().breakers():
        if found.name == name:
            return found
    return None


def stats(name: str) -> BreakerStats:
    found = breaker(name)
    assert found is not None, (
        f"no breaker {name!r}: {[b.name for b in otelres.default_registry().breakers()]}"
    )
    return found.stats()


def ours_in_chain(owner: object, attr: str) -> int:
    """How many otelres wrappers sit in the wrapt chain of ``owner.attr``."""
    count = 0
    node = vars(owner)[attr]
    while isinstance(node, PROXY):
        wrapper = getattr(node, "_self_wrapper", None)
        if getattr(wrapper, "__module__", "").startswith("otelres."):
            count += 1
        node = node.__wrapped__
    return count


class DbContract(abc.ABC):
    """The behaviours; a subclass says how its driver connects and runs statements."""

    #: What the driver raises when it cannot connect, or its connection broke.
    connection_errors: ClassVar[tuple[type[BaseException], ...]]
    #: What a rejection by an open circuit is too: the driver's errors for a lost server,
    #: the first the one an application is most likely to catch.
    rejected_as: ClassVar[tuple[type[BaseException], ...]]
    #: The otelres module of the integration (its ``CircuitOpenError``).
    integration: ClassVar[str]
    #: What the driver raises for ``1/0`` in SQL and for a duplicate primary key.
    division_by_zero: ClassVar[type[BaseException]]
    unique_violation: ClassVar[type[BaseException]]

    # -- what a driver says ---------------------------------------------------------------------------

    @abc.abstractmethod
    def open(self, dsn: str | None, params: dict[str, Any]) -> Any:
        """Connect (autocommit) with a URL and/or keywords (``host``, ``port``, ``dbname``,
        ``user``, ``password``); the connection.
        """

    @abc.abstractmethod
    def execute(self, conn: Any, sql: str) -> None:
        """Run a statement."""

    @abc.abstractmethod
    def fetchval(self, conn: Any, sql: str) -> Any:
        """Run a query; the first value of its first row."""

    @abc.abstractmethod
    def close(self, conn: Any) -> None:
        """Close a connection (a broken one too)."""

    @abc.abstractmethod
    def patched(self) -> list[tuple[object, str]]:
        """Every (owner, attribute) that otelres's instrumentor of this driver replaces."""

    @abc.abstractmethod
    def otelres_instrumentor(self) -> BaseInstrumentor:
        """otelres's instrumentor of this driver."""

    @abc.abstractmethod
    def opentelemetry_instrumentor(self) -> BaseInstrumentor:
        """OpenTelemetry's own instrumentor of this driver (the CLIENT spans)."""

    # -- helpers --------------------------------------------------------------------------------------

    @pytest.fixture(autouse=True)
    def _connections(self) -> Iterator[None]:
        """Every connection a test opened is closed after it, whatever happened."""
        self.opened: list[Any] = []
        self.table = f"t_{uuid.uuid4().hex[:12]}"
        yield
        for conn in self.opened:
            with contextlib.suppress(Exception):
                self.close(conn)
        self.finish()

    def finish(self) -> None:  # noqa: B027 - a hook: a sync driver has nothing to finish
        """After the connections are closed (an async driver closes its loop)."""

    def connect(self, dsn: str | None = None, **params: Any) -> Any:
        conn = self.open(dsn, params)
        self.opened.append(conn)
        return conn

    @pytest.fixture
    def instrument(self) -> Callable[..., None]:
        """``otelres.instrument()`` with fast retries, plus the test's own overrides."""

        def run(**overrides: object) -> None:
            otelres.instrument(**{**FAST, **overrides})

        return run

    # -- connections and statements -----------------------------------------------------------------

    def test_queries_work_through_one_breaker(self, pg: Pg, instrument: Callable[..., None]) -> None:
        """Connect and run statements through otelres: results as usual, one breaker for the database."""
        instrument()
        conn = self.connect(pg.dsn())
        self.execute(conn, f"CREATE TABLE {self.table} (id int PRIMARY KEY)")
        self.execute(conn, f"INSERT INTO {self.table} VALUES (1), (2)")
        assert self.fetchval(conn, f"SELECT sum(id) FROM {self.table}") == 3
        assert [b.name for b in otelres.default_registry().breakers()] == [pg.name]
        found = stats(pg.name)
        assert found.state is State.CLOSED
        assert (found.successes, found.failures) == (4, 0)  # the connect and three statements

    def test_breaker_name_never_has_user_or_password(self, pg: Pg, instrument: Callable[..., None]) -> None:
        """A URL and keywords with a password name the same breaker, postgresql://host:port/db, bare."""
        instrument()
        self.connect(pg.dsn(password="s3cret-pw"))  # noqa: S106 - a made-up password to look for
        self.connect(host=pg.host, port=pg.port, dbname="app", user="postgres", password="an0ther-pw")  # noqa: S106
        names = [b.name for b in otelres.default_registry().breakers()]
        assert names == [pg.name]
        parts = urlsplit(names[0])
        assert (parts.username, parts.password) == (None, None)
        assert "s3cret" not in names[0]
        assert "an0ther" not in names[0]

    def test_unix_socket_is_named_by_its_directory(self, pg: Pg, instrument: Callable[..., None]) -> None:
        """A connection over the Unix socket is named by the percent-encoded socket directory."""
        instrument()
        directory = str(pg.server.socket_dir)
        conn = self.connect(host=directory, port=pg.port, dbname="app", user="postgres")
        assert self.fetchval(conn, "SELECT 1") == 1
        expected = f"postgresql://{quote(directory, safe='')}:{pg.port}/app"
        assert [b.name for b in otelres.default_registry().breakers()] == [expected]
        assert stats(expected).successes == 2

    def test_sql_errors_are_the_callers(self, pg: Pg, instrument: Callable[..., None]) -> None:
        """SQL errors reach the caller unchanged, each statement sent once, and never trip the breaker."""
        instrument(breaker_consecutive_failures=2, breaker_minimum_calls=2)
        conn = self.connect(pg.dsn())
        self.execute(conn, f"CREATE SEQUENCE {self.table}")
        with capture_events() as events:
            for _ in range(4):
                with pytest.raises(self.division_by_zero):
                    self.fetchval(conn, f"SELECT nextval('{self.table}') / 0")
        assert pg.query(f"SELECT last_value FROM {self.table}") == [(4,)]  # four statements, four runs
        assert events.of("retry") == []
        assert [e.fields["attempts"] for e in events.of("call")] == [1, 1, 1, 1]
        found = stats(pg.name)
        assert found.state is State.CLOSED
        assert found.failures == 0

    def test_constraint_violation_is_the_callers(self, pg: Pg, instrument: Callable[..., None]) -> None:
        """A duplicate key raises the driver's UniqueViolation, is not retried and counts as a success."""
        instrument(breaker_consecutive_failures=1)
        conn = self.connect(pg.dsn())
        self.execute(conn, f"CREATE TABLE {self.table} (id int PRIMARY KEY)")
        self.execute(conn, f"INSERT INTO {self.table} VALUES (1)")
        with capture_events() as events, pytest.raises(self.unique_violation):
            self.execute(conn, f"INSERT INTO {self.table} VALUES (1)")
        assert events.of("retry") == []
        assert pg.query(f"SELECT count(*) FROM {self.table}") == [(1,)]
        assert (stats(pg.name).state, stats(pg.name).failures) == (State.CLOSED, 0)

    def test_statement_on_closed_connection_passes_through(
        self, pg: Pg, instrument: Callable[..., None]
    ) -> None:
        """A statement on a connection the application closed fails as usual and is not counted."""
        instrument()
        conn = self.connect(pg.dsn())
        self.close(conn)
        before = stats(pg.name)
        with pytest.raises(Exception) as info:
            self.execute(conn, "SELECT 1")
        assert not isinstance(info.value, otelres.OtelresError)
        after = stats(pg.name)
        assert (after.successes, after.failures) == (before.successes, before.failures)

    # -- connection establishment ----------------------------------------------------------------------

    def test_refused_connect_is_retried_then_raises(self, pg: Pg, instrument: Callable[..., None]) -> None:
        """A refused connection is tried three times, then the driver's own error reaches the caller."""
        instrument()
        port = free_port()
        name = f"postgresql://127.0.0.1:{port}/app"
        with capture_events() as events, pytest.raises(self.connection_errors) as info:
            self.connect(pg.dsn(port=port))
        assert [(e.breaker, e.fields["reason"]) for e in events.of("retry")] == [(name, "connect")] * 2
        assert [e.fields["attempts"] for e in events.of("call")] == [3]
        assert stats(name).failures == 3
        if sys.version_info >= (3, 11):
            assert any("gave up after 3 attempts" in note for note in info.value.__notes__)

    def test_per_target_configuration(
        self, pg: Pg, instrument: Callable[..., None], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A [targets."postgresql://..."] table sets one database's retries and thresholds only."""
        quiet, other = free_port(), free_port()
        quiet_name, other_name = (f"postgresql://127.0.0.1:{p}/app" for p in (quiet, other))
        config = tmp_path / "otelres.toml"
        config.write_text(
            f'[targets."{quiet_name}".retry]\nattempts = 1\n'
            f'[targets."{quiet_name}".breaker]\nconsecutive_failures = 1\n',
            encoding="utf-8",
        )
        monkeypatch.setenv("OTELRES_CONFIG", str(config))
        instrument()
        with capture_events() as events:
            for port in (quiet, other):
                with pytest.raises(self.connection_errors):
                    self.connect(pg.dsn(port=port))
        assert [(e.breaker, e.fields["attempts"]) for e in events.of("call")] == [
            (quiet_name, 1),
            (other_name, 3),
        ]
        assert stats(quiet_name).state is State.OPEN
        assert stats(other_name).state is State.CLOSED

    def test_suppressed_instrumentation_passes_through(self, pg: Pg, instrument: Callable[..., None]) -> None:
        """A refused connect made while instrumentation is suppressed is tried once and not counted."""
        instrument()
        with capture_events() as events, suppress_instrumentation(), pytest.raises(self.connection_errors):
            self.connect(pg.dsn(port=free_port()))
        assert events.events == []
        assert otelres.default_registry().breakers() == []

    # -- open circuits and outages ---------------------------------------------------------------------

    def test_open_circuit_rejects_statements_without_the_server(
        self, pg: Pg, instrument: Callable[..., None]
    ) -> None:
        """While the circuit is open an INSERT raises CircuitOpenError and never reaches the server."""
        instrument()
        conn = self.connect(pg.dsn())
        self.execute(conn, f"CREATE TABLE {self.table} (id int PRIMARY KEY)")
        with forced_state(pg.name, State.FORCED_OPEN), pytest.raises(otelres.CircuitOpenError) as info:
            self.execute(conn, f"INSERT INTO {self.table} VALUES (1)")
        assert info.value.breaker == pg.name
        assert pg.query(f"SELECT count(*) FROM {self.table}") == [(0,)]
        self.execute(conn, f"INSERT INTO {self.table} VALUES (2)")  # closed again: on it goes
        assert pg.query(f"SELECT id FROM {self.table}") == [(2,)]

    def test_rejection_is_the_drivers_connection_error(self, pg: Pg, instrument: Callable[..., None]) -> None:
        """With the circuit open, the driver's own except clauses catch rejected statements and connects."""
        instrument()
        conn = self.connect(pg.dsn())
        self.execute(conn, f"CREATE TABLE {self.table} (id int PRIMARY KEY)")

        def insert() -> str:
            try:
                self.execute(conn, f"INSERT INTO {self.table} VALUES (1)")
            except self.rejected_as[0]:
                return "queued"
            return "written"

        with forced_state(pg.name, State.FORCED_OPEN), capture_events() as events:
            assert insert() == "queued"
            for error_class in self.rejected_as:
                with pytest.raises(error_class) as caught:
                    self.connect(pg.dsn())
                check_rejection(caught.value, pg.name, self.integration)
        calls = [(e.fields["outcome"], e.fields["attempts"]) for e in events.of("call")]
        assert calls == [("rejected", 0)] * (1 + len(self.rejected_as))  # not one attempt was made
        assert pg.query(f"SELECT count(*) FROM {self.table}") == [(0,)]

    def test_outage_opens_fails_fast_then_recovers(self, pg: Pg, instrument: Callable[..., None]) -> None:
        """Outage: failures open the breaker, which rejects without connecting, then one probe closes it."""
        clock = FakeClock()
        set_default_registry(Registry(clock=clock))
        instrument(breaker_consecutive_failures=3, breaker_open_seconds=0.2)
        conn = self.connect(pg.dsn())
        self.execute(conn, f"CREATE TABLE {self.table} (id int PRIMARY KEY)")
        self.execute(conn, f"INSERT INTO {self.table} VALUES (1)")

        pg.stop()
        with capture_events() as events, pytest.raises(self.connection_errors):
            self.execute(conn, f"INSERT INTO {self.table} VALUES (2)")
        assert events.of("retry") == []  # a statement is never retried
        with pytest.raises(self.connection_errors):
            self.connect(pg.dsn())
        circuit = breaker(pg.name)
        assert circuit is not None
        assert circuit.state is State.OPEN

        pg.start()  # the server is back, but the circuit stays open for its open period
        with capture_events() as events, pytest.raises(otelres.CircuitOpenError) as info:
            self.connect(pg.dsn())
        assert info.value.breaker == pg.name
        assert info.value.retry_after == pytest.approx(0.2)  # the fake clock has not moved
        # With the server up, any attempt would have connected: none was made.
        assert [(e.fields["outcome"], e.fields["attempts"]) for e in events.of("call")] == [("rejected", 0)]

        clock.advance(circuit.retry_after() + 0.001)
        conn = self.connect(pg.dsn())  # the half-open probe
        assert circuit.state is State.CLOSED
        assert self.fetchval(conn, f"SELECT count(*) FROM {self.table}") == 1
        self.execute(conn, f"INSERT INTO {self.table} VALUES (3)")
        # Row 1 survived the outage, the INSERT that failed during it (2) was not replayed behind
        # the caller's back, and the one after it (3) was written once.
        assert pg.query(f"SELECT id FROM {self.table} ORDER BY id") == [(1,), (3,)]

    # -- patching ------------------------------------------------------------------------------------

    def test_uninstrument_restores_the_originals(self, pg: Pg) -> None:
        """otelres.uninstrument() puts back the very objects instrument() replaced, and calls pass through."""
        originals = [(owner, attr, vars(owner)[attr]) for owner, attr in self.patched()]
        otelres.instrument(**FAST)
        assert all(vars(owner)[attr] is not original for owner, attr, original in originals)
        otelres.uninstrument()
        assert all(vars(owner)[attr] is original for owner, attr, original in originals)
        conn = self.connect(pg.dsn())
        assert self.fetchval(conn, "SELECT 1") == 1
        assert otelres.default_registry().breakers() == []

    def test_instrument_twice_patches_once(self, pg: Pg) -> None:
        """Instrumenting again (directly, then twice through otelres) leaves one otelres wrapper."""
        self.otelres_instrumentor().instrument()
        otelres.instrument(**FAST)
        otelres.instrument(**FAST)
        assert [ours_in_chain(owner, attr) for owner, attr in self.patched()] == [1] * len(self.patched())
        with capture_events() as events, pytest.raises(self.connection_errors):
            self.connect(pg.dsn(port=free_port()))
        assert [e.fields["attempts"] for e in events.of("call")] == [3]

    def test_statements_pass_through_once_uninstrumented(
        self, pg: Pg, instrument: Callable[..., None]
    ) -> None:
        """A connection opened while instrumented runs its statements untouched once otelres is off."""
        instrument()
        conn = self.connect(pg.dsn())
        before = stats(pg.name)
        otelres.uninstrument()
        with forced_state(pg.name, State.FORCED_OPEN):  # would reject, were it still consulted
            assert self.fetchval(conn, "SELECT 1") == 1
        assert stats(pg.name).successes == before.successes

    def test_reinstrumented_connection_is_found_by_its_address(
        self, pg: Pg, instrument: Callable[..., None]
    ) -> None:
        """A connection from an earlier instrumentation goes through its database's breaker again."""
        instrument()
        conn = self.connect(pg.dsn())
        otelres.uninstrument()
        instrument()
        before = stats(pg.name).successes
        assert self.fetchval(conn, "SELECT 1") == 1
        assert [b.name for b in otelres.default_registry().breakers()] == [pg.name]
        assert stats(pg.name).successes == before + 1

    # -- what a connection keeps -----------------------------------------------------------------------

    def test_a_connection_follows_new_settings(self, pg: Pg, instrument: Callable[..., None]) -> None:
        """The guard a connection keeps for its statements is the one of the settings in force."""
        instrument()
        conn = self.connect(pg.dsn())
        assert self.fetchval(conn, "SELECT 1") == 1
        otelres.configure(otelres.load_settings(overrides={**FAST, "enabled": False}))
        with forced_state(pg.name, State.FORCED_OPEN):  # otelres off: never consulted
            assert self.fetchval(conn, "SELECT 1") == 1
        otelres.configure(otelres.load_settings(overrides=FAST))
        with forced_state(pg.name, State.FORCED_OPEN), pytest.raises(otelres.CircuitOpenError):
            self.fetchval(conn, "SELECT 1")
        assert self.fetchval(conn, "SELECT 1") == 1

    def test_a_connection_follows_a_new_registry(self, pg: Pg, instrument: Callable[..., None]) -> None:
        """Statements count on the breaker of the registry in force, not of the one they first met."""
        instrument()
        conn = self.connect(pg.dsn())
        assert self.fetchval(conn, "SELECT 1") == 1
        first = stats(pg.name).successes
        previous = set_default_registry(Registry())
        try:
            assert self.fetchval(conn, "SELECT 1") == 1
            assert stats(pg.name).successes == 1
        finally:
            set_default_registry(previous)
        assert stats(pg.name).successes == first
        assert self.fetchval(conn, "SELECT 1") == 1
        assert stats(pg.name).successes == first + 1

    def test_a_connection_follows_a_cleared_registry(self, pg: Pg, instrument: Callable[..., None]) -> None:
        """After the registry forgets its breakers, statements go through the new breaker of the name."""
        instrument()
        conn = self.connect(pg.dsn())
        assert self.fetchval(conn, "SELECT 1") == 1
        otelres.default_registry().clear()
        assert self.fetchval(conn, "SELECT 1") == 1
        assert stats(pg.name).successes == 1
        with forced_state(pg.name, State.FORCED_OPEN), pytest.raises(otelres.CircuitOpenError):
            self.fetchval(conn, "SELECT 1")

    def test_what_a_connection_keeps_goes_with_it(self, pg: Pg, instrument: Callable[..., None]) -> None:
        """The name and guard otelres keeps for a connection are dropped when the connection is:
        many connections over time keep no more than the live ones.
        """
        instrument()
        kept = importlib.import_module(self.integration)._connections
        before = len(kept)
        for _ in range(5):
            conn = self.open(pg.dsn(), {})
            assert self.fetchval(conn, "SELECT 1") == 1
            self.close(conn)
        del conn
        gc.collect()
        assert len(kept) == before
        live = self.connect(pg.dsn())
        assert self.fetchval(live, "SELECT 1") == 1
        assert len(kept) == before + 1

    # -- spans -----------------------------------------------------------------------------------------

    @pytest.fixture
    def client_spans(
        self, tracing: tuple[TracerProvider, InMemorySpanExporter]
    ) -> Iterator[Callable[[str], InMemorySpanExporter]]:
        """Install otelres and OpenTelemetry's instrumentation (CLIENT spans into ``tracing``) in an order."""
        provider, exporter = tracing
        theirs = self.opentelemetry_instrumentor()
        ours = self.otelres_instrumentor()
        saved = [(owner, attr, vars(owner)[attr]) for owner, attr in self.patched()]

        def install(order: str) -> InMemorySpanExporter:
            if order == "otelres_first":
                otelres.configure(otelres.load_settings(overrides=FAST))
                ours.instrument()
                theirs.instrument(tracer_provider=provider)
            else:
                theirs.instrument(tracer_provider=provider)
                otelres.instrument(**FAST)
            otelres.telemetry.enable(tracer_provider=provider)
            return exporter

        yield install
        otelres.uninstrument()
        for instrumentor in (ours, theirs):  # not LIFO for "otelres_first": ours comes out of the middle
            if instrumentor.is_instrumented_by_opentelemetry:
                instrumentor.uninstrument()
        for owner, attr, original in saved:
            # OpenTelemetry's psycopg uninstrument leaves Connection.connect a method bound to
            # Connection instead of the classmethod: put the original back for the next tests.
            if vars(owner)[attr] is not original:
                setattr(owner, attr, original)

    @staticmethod
    def spans_of(exporter: InMemorySpanExporter) -> tuple[list[ReadableSpan], list[ReadableSpan]]:
        spans = exporter.get_finished_spans()
        calls = [s for s in spans if s.kind is SpanKind.INTERNAL and s.name.startswith("otelres ")]
        clients = [s for s in spans if s.kind is SpanKind.CLIENT]
        return calls, clients

    @pytest.mark.parametrize("order", ["otelres_first", "opentelemetry_first"])
    def test_statement_client_span_sits_under_the_call_span(
        self, pg: Pg, client_spans: Callable[[str], InMemorySpanExporter], order: str
    ) -> None:
        """A plain statement: OpenTelemetry's CLIENT span alone. In trouble, each statement: one otelres
        call span with one CLIENT child; a rejected one: no CLIENT span."""
        exporter = client_spans(order)
        conn = self.connect(pg.dsn())
        exporter.clear()
        assert self.fetchval(conn, "SELECT 41 + 1") == 42
        calls, clients = self.spans_of(exporter)
        assert (calls, len(clients)) == ([], 1)

        exporter.clear()
        with in_trouble(pg.name):
            assert self.fetchval(conn, "SELECT 41 + 1") == 42
        calls, clients = self.spans_of(exporter)
        assert [c.name for c in calls] == [f"otelres {pg.name}"]
        assert len(clients) == 1
        assert clients[0].parent is not None
        assert clients[0].parent.span_id == calls[0].context.span_id

        exporter.clear()
        with forced_state(pg.name, State.FORCED_OPEN), pytest.raises(otelres.CircuitOpenError):
            self.fetchval(conn, "SELECT 1")
        calls, clients = self.spans_of(exporter)
        assert clients == []
        assert len(calls) == 1
        assert calls[0].status.status_code is StatusCode.ERROR
        assert "otelres.circuit.rejected" in [e.name for e in calls[0].events]


class AsyncRunner:
    """For the async flavours: runs each operation to completion on the test's own loop."""

    _loop: asyncio.AbstractEventLoop | None = None

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(coro)

    def finish(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
