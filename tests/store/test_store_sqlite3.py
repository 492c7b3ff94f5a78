"""The sqlite3 integration against a database file: the store contract, the
transaction rule for locked databases, the connection proxy and breaker names."""

from __future__ import annotations

import os
import sqlite3
import sqlite3.dbapi2
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from opentelemetry.instrumentation.sqlite3 import SQLite3Instrumentor
from store_contract import Store, StoreContract, call_and_attempts

import otelres
from otelres import default_registry
from otelres.instrumentation.sqlite3 import MEMORY, Sqlite3Instrumentor, breaker_name
from otelres.testing import capture_events, in_trouble

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from opentelemetry.instrumentation.instrumentor import BaseInstrumentor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


class _Counting(sqlite3.Connection):
    """Counts the connections sqlite3 tries to open (the subclass of each store)."""

    opened = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        type(self).opened += 1
        super().__init__(*args, **kwargs)


class _Release(otelres.Listener):
    """Ends the locker's transaction when the next retry is scheduled: the lock
    lasts exactly one failed attempt.
    """

    def __init__(self, locker: sqlite3.Connection) -> None:
        self.locker = locker
        self.ending = "ROLLBACK"

    def on_event(self, event: otelres.Event) -> None:
        if event.kind == "retry" and self.locker.in_transaction:
            self.locker.execute(self.ending)


class SqliteStore(Store):
    """A database file; the instrumented connections wait for no lock (timeout=0)."""

    read_reason = "locked"
    unsafe_reason = "in_transaction"
    unsafe_applied = 0
    outage_error = sqlite3.OperationalError
    integration = "otelres.instrumentation.sqlite3"
    caller_error_type = sqlite3.IntegrityError

    def __init__(self, tmp_path: Path) -> None:
        # Made before the test instruments: these connections are sqlite3's own.
        self.directory = tmp_path / "data"
        self.directory.mkdir()
        self.away = tmp_path / "away"
        self.path = self.directory / "app.db"
        self.name = f"sqlite://{self.path}"
        with sqlite3.connect(self.path) as setup:
            setup.executescript("""
                CREATE TABLE counter (v INTEGER);
                INSERT INTO counter VALUES (0);
                CREATE TABLE uniq (k INTEGER PRIMARY KEY);
                INSERT INTO uniq VALUES (1);
                CREATE TABLE log (item INTEGER);
            """)
        setup.close()
        self.truth = sqlite3.connect(self.path, isolation_level=None)
        self.locker = sqlite3.connect(self.path, isolation_level=None, timeout=0)
        self.release = _Release(self.locker)
        otelres.add_listener(self.release)
        self.factory: type[_Counting] = type("Counting", (_Counting,), {"opened": 0})
        self._conn: Any = None

    @property
    def conn(self) -> Any:
        """The instrumented connection (opened on first use, after the test instrumented)."""
        if self._conn is None:
            self._conn = self.connect()
        return self._conn

    def connect(self, **kwargs: Any) -> Any:
        return sqlite3.connect(self.path, timeout=0, factory=self.factory, **kwargs)

    def close(self) -> None:
        otelres.remove_listener(self.release)
        if self._conn is not None:
            self._conn.close()
        self.locker.close()
        self.truth.close()

    def lock(self, mode: str = "EXCLUSIVE") -> None:
        """Lock the database (until the next retry or :meth:`close`): EXCLUSIVE keeps
        readers out too, IMMEDIATE only other writers.
        """
        self.locker.execute(f"BEGIN {mode}")

    def read(self) -> int:
        return int(self.conn.execute("SELECT v FROM counter").fetchone()[0])

    def write(self) -> None:
        self.conn.execute("UPDATE counter SET v = v + 1")
        self.conn.commit()

    def counter(self) -> int:
        return int(self.truth.execute("SELECT v FROM counter").fetchone()[0])

    def break_next_read(self) -> None:
        self.lock()

    def unsafe_write(self) -> None:
        conn = self.conn
        conn.execute("BEGIN")
        self.lock()
        try:
            conn.execute("UPDATE counter SET v = v + 1")
        finally:
            conn.rollback()
            self.locker.execute("ROLLBACK")

    def caller_error(self) -> None:
        try:
            self.conn.execute("INSERT INTO uniq VALUES (1)")
        finally:
            self.conn.rollback()

    def log(self, item: int) -> None:
        conn = self.connect()
        try:
            conn.execute("INSERT INTO log VALUES (?)", (item,))
            conn.commit()
        finally:
            conn.close()

    def logged(self) -> list[int]:
        return [row[0] for row in self.truth.execute("SELECT item FROM log ORDER BY rowid")]

    def stop(self) -> None:
        self.directory.rename(self.away)  # the file system the database lives on goes away

    def start(self) -> None:
        self.away.rename(self.directory)

    def connects(self) -> int:
        return self.factory.opened


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SqliteStore]:
    """A database file with a counter, a unique key, a log, and a connection to lock it with."""
    store = SqliteStore(tmp_path)
    yield store
    store.close()


class TestSqlite3Contract(StoreContract):
    """The store contract for sqlite3."""

    @pytest.fixture
    def store(self, sqlite_store: SqliteStore) -> Store:
        return sqlite_store


def test_locked_write_outside_transaction_retried_once(
    instrument: Callable[..., None], sqlite_store: SqliteStore
) -> None:
    """A write locked out outside a transaction is retried and applied exactly once."""
    instrument()
    conn = sqlite_store.conn
    sqlite_store.lock()
    with capture_events() as events:
        conn.execute("UPDATE counter SET v = v + 1")
    conn.commit()
    assert [e.fields["reason"] for e in events.of("retry")] == ["locked"]
    assert sqlite_store.counter() == 1


def test_retried_once_the_other_writer_commits(
    instrument: Callable[..., None], sqlite_store: SqliteStore
) -> None:
    """A statement blocked by another writer's uncommitted write is retried after it commits, applied once."""
    instrument()
    conn = sqlite_store.conn
    sqlite_store.locker.execute("BEGIN IMMEDIATE")
    sqlite_store.locker.execute("INSERT INTO log VALUES (0)")
    sqlite_store.release.ending = "COMMIT"
    with capture_events() as events:
        conn.execute("INSERT INTO log SELECT v + 1 FROM counter")  # reads, then wants to write
    conn.commit()
    assert len(events.of("retry")) == 1
    assert sqlite_store.logged() == [0, 1]


def test_locked_statement_leaves_no_transaction(
    instrument: Callable[..., None], sqlite_store: SqliteStore
) -> None:
    """A write locked out through every attempt fails with sqlite3's implicit transaction rolled back."""
    instrument(retry_attempts=2)
    conn = sqlite_store.conn
    sqlite_store.release.ending = "SELECT 1"  # the lock outlasts the retries
    sqlite_store.lock("IMMEDIATE")  # the UPDATE gets its read lock, then fails in sqlite3's BEGIN
    with capture_events() as events, pytest.raises(sqlite3.OperationalError, match="locked"):
        conn.execute("UPDATE counter SET v = v + 1")
    assert not conn.in_transaction
    assert [e.fields["attempts"] for e in events.of("call")] == [2]
    sqlite_store.locker.execute("ROLLBACK")
    assert sqlite_store.counter() == 0


def test_executemany_retried_as_one_transaction(
    instrument: Callable[..., None], sqlite_store: SqliteStore
) -> None:
    """executemany over a list, outside a transaction, is retried whole: every row lands once."""
    instrument()
    cursor = sqlite_store.conn.cursor()
    sqlite_store.lock()
    with capture_events() as events:
        assert cursor.executemany("INSERT INTO log VALUES (?)", [(1,), (2,), (3,)]).rowcount == 3
    sqlite_store.conn.commit()
    assert len(events.of("retry")) == 1
    assert sqlite_store.logged() == [1, 2, 3]


@pytest.mark.parametrize(
    ("run", "reason"),
    [
        (
            lambda c: c.executescript("INSERT INTO log VALUES (1); INSERT INTO log VALUES (2);"),
            "not_idempotent",
        ),
        (lambda c: c.executemany("INSERT INTO log VALUES (?)", ((i,) for i in range(3))), "not_replayable"),
        (lambda c: c.cursor().executescript("INSERT INTO log VALUES (1);"), "not_idempotent"),
    ],
)
def test_statements_that_cannot_be_repeated_are_not_retried(
    instrument: Callable[..., None], sqlite_store: SqliteStore, run: Callable[[Any], Any], reason: str
) -> None:
    """A script, or rows from an iterator, meeting a locked database fail once, not retried."""
    instrument()
    conn = sqlite_store.conn
    sqlite_store.lock()
    with capture_events() as events, pytest.raises(sqlite3.OperationalError, match="locked"):
        run(conn)
    sqlite_store.locker.execute("ROLLBACK")
    conn.rollback()
    assert [e.fields["reason"] for e in events.of("retry_suppressed")] == [reason]
    assert sqlite_store.logged() == []


def test_executemany_in_autocommit_mode_not_retried(
    instrument: Callable[..., None], sqlite_store: SqliteStore
) -> None:
    """In autocommit mode each row commits on its own, so executemany is never retried."""
    instrument()
    conn = sqlite_store.connect(isolation_level=None)
    try:
        sqlite_store.lock()
        with capture_events() as events, pytest.raises(sqlite3.OperationalError):
            conn.executemany("INSERT INTO log VALUES (?)", [(1,), (2,)])
    finally:
        conn.close()
    assert [e.fields["reason"] for e in events.of("retry_suppressed")] == ["not_idempotent"]


def test_connect_error_retried_and_counted(instrument: Callable[..., None], tmp_path: Path) -> None:
    """A database file that cannot be opened fails every attempt, each a breaker failure."""
    instrument(retry_attempts=3)
    path = tmp_path / "missing" / "app.db"
    with capture_events() as events, pytest.raises(sqlite3.OperationalError, match="unable to open"):
        sqlite3.connect(path)
    assert [e.fields["reason"] for e in events.of("retry")] == ["connect", "connect"]
    assert default_registry().get(f"sqlite://{path}").stats().failures == 3


@pytest.fixture(params=["with OpenTelemetry's sqlite3 instrumentation", "alone"])
def instrumented(request: pytest.FixtureRequest, instrument: Callable[..., None]) -> Iterator[None]:
    """otelres.instrument() (which enables OpenTelemetry's own proxy over otelres's), or the
    sqlite3 instrumentor alone (as without opentelemetry-instrumentation-sqlite3).
    """
    if request.param == "alone":
        Sqlite3Instrumentor().instrument()
        yield
        Sqlite3Instrumentor().uninstrument()
    else:
        instrument()
        yield


@pytest.mark.usefixtures("instrumented")
def test_connection_proxy_acts_as_connection(tmp_path: Path) -> None:
    """The proxy is a sqlite3.Connection to its users: with-blocks, cursors, rows, backup."""
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        assert isinstance(conn, sqlite3.Connection)
        assert type(conn) is not sqlite3.Connection
        conn.row_factory = sqlite3.Row
        conn.execute("CREATE TABLE t (x)")
        cursor = conn.cursor()
        assert cursor.execute("INSERT INTO t VALUES (1)").rowcount == 1
        cursor.executemany("INSERT INTO t VALUES (?)", [(2,), (3,)])
        assert [row["x"] for row in cursor.execute("SELECT x FROM t ORDER BY x")] == [1, 2, 3]
    copy = sqlite3.dbapi2.connect(":memory:")
    conn.backup(copy)
    assert copy.execute("SELECT count(*) FROM t").fetchone()[0] == 3
    copy.close()
    conn.close()
    names = [b.name for b in default_registry().breakers()]
    assert names == [f"sqlite://{path}", MEMORY]
    assert default_registry().get(names[0]).stats().successes == 5  # connect and four statements


@pytest.mark.parametrize(
    ("database", "uri", "expected"),
    [
        (":memory:", False, MEMORY),
        ("", False, MEMORY),
        ("/srv/app.db", False, "sqlite:///srv/app.db"),
        (b"/srv/app.db", False, "sqlite:///srv/app.db"),
        (Path("/srv/app.db"), False, "sqlite:///srv/app.db"),
        ("data/app.db", False, "sqlite://" + os.path.join(os.getcwd(), "data", "app.db")),  # noqa: PTH109, PTH118
        ("file:/srv/app.db?mode=ro", True, "sqlite:///srv/app.db"),
        ("file:///srv/a%20b.db", True, "sqlite:///srv/a b.db"),
        ("file://localhost/srv/app.db", True, "sqlite:///srv/app.db"),
        ("file::memory:?cache=shared", True, MEMORY),
        ("file:shared?mode=memory&cache=shared", True, MEMORY),
    ],
)
def test_breaker_name(database: object, uri: bool, expected: str) -> None:
    """sqlite:/// and the absolute path of the file, or sqlite:///:memory:."""
    assert breaker_name(database, uri) == expected


def test_attempts_are_client_spans_under_one_call_span(
    install: Callable[[str, BaseInstrumentor, BaseInstrumentor], InMemorySpanExporter],
    sqlite_store: SqliteStore,
) -> None:
    """OpenTelemetry's instrumentation on first: a CLIENT span per attempt under the call's span
    (the store in trouble: the call's span starts before its first attempt)."""
    exporter = install("opentelemetry_first", SQLite3Instrumentor(), Sqlite3Instrumentor())
    cursor = sqlite_store.conn.cursor()
    exporter.clear()
    sqlite_store.lock()
    with in_trouble(sqlite_store.name):
        assert cursor.execute("SELECT v FROM counter").fetchone()[0] == 0
    call, attempts = call_and_attempts(exporter, sqlite_store.name)
    assert len(attempts) == 2
    for attempt in attempts:
        assert attempt.parent is not None
        assert attempt.parent.span_id == call.context.span_id
    assert [e.name for e in call.events] == ["otelres.retry"]
