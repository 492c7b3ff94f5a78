"""The contract every store integration keeps (the OpenTelemetry contrib pattern:
one abstract test, one subclass per library and per sync/async variant).

A subclass provides a ``store`` fixture: a :class:`Store`, the library's
client set up against a real server (or file) and the figures the contract
checks it against. The store's methods look synchronous to the tests; an
asyncio store runs each of them on its own event loop.
"""

from __future__ import annotations

import abc
import textwrap
from typing import TYPE_CHECKING

import pytest
from opentelemetry.trace import SpanKind
from rejection_support import check_rejection

import otelres
from otelres import CircuitOpenError, State, default_registry
from otelres.testing import capture_events, forced_state

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from otelres.testing import FakeClock

#: A breaker that opens after three failures in a row and stays open 5 s (of the fake clock).
OPEN_SECONDS = 5.0
OUTAGE = {"breaker_consecutive_failures": 3, "breaker_open_seconds": OPEN_SECONDS}


def call_and_attempts(
    exporter: InMemorySpanExporter, breaker: str
) -> tuple[ReadableSpan, list[ReadableSpan]]:
    """The one INTERNAL span of a call to ``breaker`` and the CLIENT spans, in start order."""
    spans = exporter.get_finished_spans()
    calls = [s for s in spans if s.kind is SpanKind.INTERNAL and s.name == f"otelres {breaker}"]
    assert len(calls) == 1, [s.name for s in spans]
    clients = sorted((s for s in spans if s.kind is SpanKind.CLIENT), key=lambda s: s.start_time or 0)
    return calls[0], clients


class Store(abc.ABC):
    """One library's client, set up against a real store, seen through the contract."""

    #: The breaker name the store's calls go under.
    name: str
    #: The retry reason of the transient failure that :meth:`break_next_read` causes.
    read_reason: str
    #: Why :meth:`unsafe_write` is not retried (the suppressed retry's reason).
    unsafe_reason: str
    #: How many times the failed :meth:`unsafe_write` was applied by the server (0 or 1).
    unsafe_applied: int
    #: What a call raises while the store is down (a rejection by an open circuit too).
    outage_error: type[BaseException]
    #: The otelres module of the integration (its ``CircuitOpenError``).
    integration: str
    #: What :meth:`caller_error` raises.
    caller_error_type: type[BaseException]

    @abc.abstractmethod
    def read(self) -> int:
        """Read the counter through the instrumented client (a retryable read)."""

    @abc.abstractmethod
    def write(self) -> None:
        """Increment the counter through the instrumented client."""

    @abc.abstractmethod
    def counter(self) -> int:
        """The counter as the store holds it, asked without otelres."""

    @abc.abstractmethod
    def break_next_read(self) -> None:
        """Make the next read's first attempt fail for a passing reason; the retry succeeds."""

    @abc.abstractmethod
    def unsafe_write(self) -> None:
        """Increment the counter where a retry would be wrong, and fail; raises."""

    @abc.abstractmethod
    def caller_error(self) -> None:
        """Make a call the store refuses as the caller's mistake; raises."""

    @abc.abstractmethod
    def log(self, item: int) -> None:
        """Append ``item`` to the log (a write that must be neither lost nor duplicated)."""

    @abc.abstractmethod
    def logged(self) -> list[int]:
        """The log as the store holds it, asked without otelres."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Take the store away (the server stops)."""

    @abc.abstractmethod
    def start(self) -> None:
        """Bring the store back, with its data."""

    @abc.abstractmethod
    def connects(self) -> int:
        """How many connections the client has tried to open so far."""


class StoreContract:
    """The behaviour of a store integration, checked against the real store."""

    def test_commands_work(self, instrument: Callable[..., None], store: Store) -> None:
        """Instrumented, the client's reads and writes work as they did."""
        instrument()
        store.write()
        store.write()
        assert store.read() == 2
        assert store.counter() == 2
        stats = default_registry().get(store.name).stats()
        assert stats.failures == 0
        assert stats.successes >= 3

    def test_breaker_name(self, instrument: Callable[..., None], store: Store) -> None:
        """The calls go under one breaker named system://host:port/database (or the file)."""
        instrument()
        store.write()
        store.read()
        assert [breaker.name for breaker in default_registry().breakers()] == [store.name]

    def test_read_retried_after_transient_failure(
        self, instrument: Callable[..., None], store: Store
    ) -> None:
        """A read whose first attempt fails for a passing reason is retried and succeeds."""
        instrument()
        store.write()
        store.break_next_read()
        with capture_events() as events:
            assert store.read() == 1
        retries = events.of("retry")
        assert [(e.breaker, e.fields["reason"]) for e in retries] == [(store.name, store.read_reason)]
        stats = default_registry().get(store.name).stats()
        assert stats.failures == 1

    def test_unsafe_write_not_retried(self, instrument: Callable[..., None], store: Store) -> None:
        """A write that a retry could apply twice fails after one attempt, applied at most once."""
        instrument()
        with capture_events() as events, pytest.raises(Exception) as raised:
            store.unsafe_write()
        assert not isinstance(raised.value, otelres.OtelresError)
        assert events.of("retry") == []
        assert [e.fields["reason"] for e in events.of("retry_suppressed")] == [store.unsafe_reason]
        calls = events.of("call")  # a store may make calls before the write (connect, BEGIN)
        assert {e.fields["attempts"] for e in calls} == {1}
        assert calls[-1].fields["outcome"] == "failure"
        assert store.counter() == store.unsafe_applied

    def test_caller_error_neither_failure_nor_retried(
        self, instrument: Callable[..., None], store: Store
    ) -> None:
        """An error that is the caller's own reaches the caller, is not retried and counts as a success."""
        instrument()
        with capture_events() as events, pytest.raises(store.caller_error_type):
            store.caller_error()
        assert events.of("retry") == []
        assert events.of("retry_suppressed") == []
        stats = default_registry().get(store.name).stats()
        assert stats.failures == 0
        assert stats.successes >= 1

    def test_no_retries_for_one_target_by_configuration(
        self,
        instrument: Callable[..., None],
        store: Store,
        monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path,
    ) -> None:
        """The TOML file's per-target settings apply to the patched client: no retries for this store."""
        config = tmp_path / "otelres.toml"
        config.write_text(
            textwrap.dedent(f"""
                [targets."{store.name}".retry]
                attempts = 1
            """)
        )
        monkeypatch.setenv("OTELRES_CONFIG", str(config))
        instrument()
        store.write()
        store.break_next_read()
        with capture_events() as events, pytest.raises(store.outage_error):
            store.read()
        assert events.of("retry") == []
        assert [e.fields["attempts"] for e in events.of("call")] == [1]

    def test_rejection_is_the_librarys_connection_error(
        self, instrument: Callable[..., None], store: Store
    ) -> None:
        """With the circuit open, the library's own except clause answers from a cache; nothing connects."""
        instrument()
        store.write()

        def read_or_cached() -> int:
            try:
                return store.read()
            except store.outage_error:
                return -1

        connects = store.connects()
        with forced_state(store.name, State.FORCED_OPEN), capture_events() as events:
            assert read_or_cached() == -1
            with pytest.raises(store.outage_error) as caught:
                store.log(7)  # sqlite3: a connect, rejected as well
        check_rejection(caught.value, store.name, store.integration)
        calls = [(e.fields["outcome"], e.fields["attempts"]) for e in events.of("call")]
        assert calls == [("rejected", 0)] * 2  # not one attempt was made
        assert store.connects() == connects
        assert store.logged() == []

    def test_outage_opens_fails_fast_and_recovers(
        self, instrument: Callable[..., None], store: Store, fake_clock: FakeClock
    ) -> None:
        """Outage: breaker opens, rejects without connecting, closes on return; no write lost or doubled."""
        clock = fake_clock
        instrument(**OUTAGE)
        acked: list[int] = []
        for item in range(3):
            store.log(item)
            acked.append(item)
        breaker = default_registry().get(store.name)

        store.stop()
        item = 100
        while breaker.state is State.CLOSED and item < 110:
            with pytest.raises(store.outage_error):
                store.log(item)
            item += 1
        assert breaker.state is State.OPEN
        assert breaker.stats().failures == 3

        connects, now, before = store.connects(), clock.monotonic(), breaker.stats()
        for _ in range(3):
            with pytest.raises(CircuitOpenError) as rejected:
                store.log(item)
            assert rejected.value.breaker == store.name
            item += 1
        with pytest.raises(CircuitOpenError):
            store.read()
        after = breaker.stats()
        assert store.connects() == connects, "an open circuit must not connect"
        assert clock.monotonic() == now, "an open circuit must not wait"
        assert (after.successes, after.failures, after.rejected) == (
            before.successes,
            before.failures,
            before.rejected + 4,
        )

        store.start()
        with pytest.raises(CircuitOpenError):
            store.log(item)  # the store is back, but the open period is not over
        clock.advance(OPEN_SECONDS)
        store.log(200)  # the half-open probe
        acked.append(200)
        assert breaker.state is State.CLOSED
        for item in (201, 202):
            store.log(item)
            acked.append(item)
        assert store.logged() == acked
