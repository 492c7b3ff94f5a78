"""The shared-state gauges, read from a real fleet member syncing with a real redis-server:
connected or not, how many processes, where they disagree; nothing while shared state is off."""

from __future__ import annotations

import importlib
import os
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import otelres.telemetry
from otelres import CircuitBreaker, SharedState
from otelres import _fleet as fleet_module
from otelres._fleet import Fleet
from otelres.telemetry import names

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

_STORE = str(Path(__file__).resolve().parent.parent / "store")
if _STORE not in sys.path:
    sys.path.append(_STORE)
store_servers: Any = importlib.import_module("store_servers")

WAIT = 10.0  # generous bound on waits that end as soon as the other side acts
NAME = "https://payments.internal:443"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Any]:
    with store_servers.RedisServer(tmp_path, durable=True) as running:
        yield running


@pytest.fixture
def reader() -> Iterator[InMemoryMetricReader]:
    metric_reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[metric_reader], shutdown_on_exit=False)
    otelres.telemetry.enable(meter_provider=provider)
    yield metric_reader
    otelres.telemetry.disable()
    provider.shutdown()


def gauges(reader: InMemoryMetricReader) -> dict[str, list[tuple[dict[str, Any], float]]]:
    """The shared-state gauges collected now: name -> [(attributes, value)]."""
    found: dict[str, list[tuple[dict[str, Any], float]]] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name.startswith("otelres.shared_state."):
                    found[metric.name] = [
                        (dict(p.attributes or {}), p.value) for p in metric.data.data_points
                    ]
    return found


def until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT} s: {what}")
        time.sleep(0.01)


def test_nothing_is_reported_while_shared_state_is_off(reader: InMemoryMetricReader) -> None:
    assert fleet_module.current() is None
    assert gauges(reader) == {}


def test_connected_processes_and_disagreement(
    reader: InMemoryMetricReader, server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine, theirs = CircuitBreaker(NAME), CircuitBreaker(NAME)
    url = f"redis://127.0.0.1:{server.port}/0"
    other = Fleet(SharedState(url, service="telemetry"), breakers=lambda: [theirs])
    member = Fleet(SharedState(url, service="telemetry"), breakers=lambda: [mine])
    monkeypatch.setattr(fleet_module, "_current", member)
    theirs.force_open()  # by hand in the other process: it disagrees with the fleet (closed)
    assert other.sync_once()
    assert member.sync_once()
    got = gauges(reader)
    assert got[names.SHARED_STATE_CONNECTED] == [({}, 1)]
    assert got[names.SHARED_STATE_PROCESSES] == [({}, 2)]
    assert got[names.SHARED_STATE_DISAGREEING] == [({names.ATTR_BREAKER: NAME}, 1)]
    server.stop()
    assert not member.sync_once()
    got = gauges(reader)
    assert got[names.SHARED_STATE_CONNECTED] == [({}, 0)]
    assert names.SHARED_STATE_PROCESSES not in got  # no fleet figures while alone


def test_instrument_starts_and_uninstrument_stops_the_member(
    server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OTELRES_SHARED_STATE turns a member on with instrument(); its thread connects on its own."""
    monkeypatch.setenv("OTELRES_SHARED_STATE", f"redis://127.0.0.1:{server.port}/0")
    monkeypatch.setenv("OTELRES_SHARED_STATE_INTERVAL", "0.1")
    otelres._config.configure(None)
    try:
        otelres.instrument()
        member = fleet_module.current()
        assert member is not None
        until(lambda: member.connected, "the member reaches Redis")
        assert any(t.name == "otelres-shared-state" for t in threading.enumerate())
    finally:
        otelres.uninstrument()
        otelres._config.configure(None)
    assert fleet_module.current() is None


def test_a_forked_child_is_a_member_of_its_own(server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """fork() of a process sharing breaker state: the child has a member of its own (another
    id, its own running thread) that reaches Redis; the parent's member goes on unchanged.
    """
    monkeypatch.setenv("OTELRES_SHARED_STATE", f"redis://127.0.0.1:{server.port}/0")
    monkeypatch.setenv("OTELRES_SHARED_STATE_INTERVAL", "0.1")
    otelres._config.configure(None)
    try:
        otelres.instrument()
        parent = fleet_module.current()
        assert parent is not None
        until(lambda: parent.connected, "the parent's member reaches Redis")
        read, write = os.pipe()
        with warnings.catch_warnings():
            # 3.12+ warns that fork() of a multi-threaded process may deadlock: what the
            # fork hooks exist for.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            answer = "no member"
            try:
                child = fleet_module.current()
                if child is not None:
                    deadline = time.monotonic() + WAIT
                    while not child.connected and time.monotonic() < deadline:
                        time.sleep(0.01)
                    alive = child._thread is not None and child._thread.is_alive()
                    answer = f"{child.process != parent.process} {alive} {child.connected}"
            finally:
                os.write(write, answer.encode())
                os._exit(0)
        os.close(write)
        with os.fdopen(read) as pipe:
            answer = pipe.read()
        os.waitpid(pid, 0)
        assert answer == "True True True"
        assert fleet_module.current() is parent
    finally:
        otelres.uninstrument()
        otelres._config.configure(None)
