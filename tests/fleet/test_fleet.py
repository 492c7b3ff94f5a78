"""Shared breaker state, one round at a time: several fleet members in this process
(each with its own breaker, as separate processes would have), a real redis-server,
and a fake clock for the breakers and the fleet (the script takes the test's time).

Each member's sync is driven by hand (``Fleet.sync_once``), so every test says
exactly which rounds happened; the thread, real processes and gunicorn are in
test_fleet_processes.py.
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis

from otelres import BreakerPolicy, CircuitBreaker, SharedState, State
from otelres._breaker import REJECTED, transition_hooks
from otelres._fleet import Fleet
from otelres._fleet_store import FleetStore
from otelres.testing import FakeClock

if TYPE_CHECKING:
    from collections.abc import Iterator

# The real-server helpers of the store tests (tests/ is not a package).
_STORE = str(Path(__file__).resolve().parent.parent / "store")
if _STORE not in sys.path:
    sys.path.append(_STORE)
store_servers: Any = importlib.import_module("store_servers")

NAME = "https://payments.internal:443"
POLICY = BreakerPolicy(minimum_calls=10, failure_rate=0.5, open_seconds=5.0, max_open_seconds=60.0)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Any]:
    """A redis-server of this test's own on loopback (durable: it may be stopped and started)."""
    with store_servers.RedisServer(tmp_path, durable=True) as running:
        yield running


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


class Member:
    """One process of the fleet: its breaker and its fleet member."""

    def __init__(
        self, url: str, clock: FakeClock, *, service: str = "checkout", policy: BreakerPolicy = POLICY
    ):
        self.breaker = CircuitBreaker(NAME, policy, clock=clock)
        self.fleet = Fleet(
            SharedState(url, interval=1.0, service=service), breakers=lambda: [self.breaker], clock=clock
        )
        self.fleet.listen()
        self.clock = clock

    def call(self, *, ok: bool) -> str:
        """One attempt: 'rejected', 'ok' or 'failed'."""
        token = self.breaker.acquire()
        if token == REJECTED:
            return "rejected"
        self.breaker.record(token, not ok, self.clock.monotonic())
        return "ok" if ok else "failed"

    @property
    def state(self) -> State:
        return self.breaker.state


@pytest.fixture
def members(server: Any, clock: FakeClock) -> Iterator[list[Member]]:
    made = [Member(f"redis://127.0.0.1:{server.port}/0", clock) for _ in range(3)]
    yield made
    for m in made:
        m.fleet.stop()
    assert not transition_hooks


def sync(members: list[Member]) -> None:
    for m in members:
        assert m.fleet.sync_once()


def failing_calls_until_all_reject(members: list[Member], *, shared: bool) -> int:
    """Rounds of one failing call per member (then a sync, when shared) until every member rejects."""
    failed = 0
    for _ in range(50):
        outcomes = [m.call(ok=False) for m in members]
        failed += outcomes.count("failed")
        if shared:
            sync(members)
        if all(m.state is State.OPEN for m in members):
            assert all(m.call(ok=False) == "rejected" for m in members)
            return failed
    raise AssertionError("the members never all rejected")


def test_the_fleet_trips_on_its_combined_window(members: list[Member], server: Any, clock: FakeClock) -> None:
    """Three members calling a dead dependency: shared, the trip rule sees every member's
    failures and the fleet rejects after far fewer failing calls than three breakers alone.
    """
    sync(members)
    shared = failing_calls_until_all_reject(members, shared=True)
    alone_members = [Member(f"redis://127.0.0.1:{server.port}/1", clock) for _ in range(3)]
    alone = failing_calls_until_all_reject(alone_members, shared=False)
    for m in alone_members:
        m.fleet.stop()
    assert alone == 30  # each breaker alone needs minimum_calls (10) failures
    assert shared <= 15  # about minimum_calls in total, plus one round of lag
    assert shared < alone / 2


def test_one_member_opening_opens_every_member_at_its_next_sync(members: list[Member]) -> None:
    first, *others = members
    sync(members)
    first.breaker.force_open()  # a manual move is not news for the fleet
    first.breaker.reset()
    for _ in range(10):
        first.call(ok=False)
    assert first.state is State.OPEN
    assert [m.state for m in others] == [State.CLOSED, State.CLOSED]
    sync(members)
    assert [m.state for m in members] == [State.OPEN] * 3
    # Every member's open period ends with the fleet's.
    assert [m.breaker.retry_after() for m in members] == [pytest.approx(5.0, abs=0.01)] * 3
    assert all(m.fleet.views[NAME].state == "open" for m in members)


def ask(members: list[Member]) -> None:
    """Each member gets a call while the fleet is open past its period: refused for want of
    the lease, which makes it ask for the lease at its next sync (only a process with
    traffic does).
    """
    assert [m.call(ok=True) for m in members] == ["rejected"] * len(members)


def open_the_fleet(members: list[Member]) -> None:
    sync(members)
    for _ in range(10):
        members[0].call(ok=False)
    sync(members)
    assert [m.state for m in members] == [State.OPEN] * 3


def test_exactly_one_member_probes_per_open_period_and_its_success_closes_all(
    members: list[Member], clock: FakeClock
) -> None:
    open_the_fleet(members)
    clock.advance(5.0)
    # Every member's own wait is over, but only the lease holder may probe.
    ask(members)
    sync(members)
    leases = [m.fleet.views[NAME].lease for m in members]
    assert leases.count(True) == 1
    holder = members[leases.index(True)]
    rest = [m for m in members if m is not holder]
    # half_open_calls = 1 probe, across the fleet: the others reject until the fleet closes.
    assert [m.call(ok=True) for m in rest for _ in range(3)] == ["rejected"] * 6
    assert holder.call(ok=True) == "ok"
    assert holder.state is State.CLOSED
    assert [m.call(ok=True) for m in rest] == ["rejected"] * 2
    sync(members)
    assert [m.state for m in members] == [State.CLOSED] * 3
    assert members[0].fleet.views[NAME].state == "closed"


def test_a_failed_probe_reopens_the_fleet_with_the_backoff(members: list[Member], clock: FakeClock) -> None:
    open_the_fleet(members)
    clock.advance(5.0)
    ask(members)
    sync(members)
    outcomes = [m.call(ok=False) for m in members]
    assert outcomes.count("failed") == 1
    sync(members)
    assert [m.state for m in members] == [State.OPEN] * 3
    # open_seconds (5) * open_backoff (2) ** 1 reopen: the fleet's second period is 10 s.
    assert {m.fleet.views[NAME].remaining for m in members} == {10.0}
    clock.advance(9.9)
    sync(members)
    assert [m.call(ok=True) for m in members] == ["rejected"] * 3


def test_a_lease_whose_holder_went_quiet_passes_to_another_member(
    members: list[Member], clock: FakeClock
) -> None:
    """The holder dies before probing: after the lease's expiry another member probes."""
    open_the_fleet(members)
    clock.advance(5.0)
    ask(members)
    sync(members)
    holder = next(m for m in members if m.fleet.views[NAME].lease)
    rest = [m for m in members if m is not holder]
    holder.fleet.stop()  # gone: it never syncs (nor probes) again
    ask(rest)
    sync(rest)
    assert not any(m.fleet.views[NAME].lease for m in rest)  # the lease is still the holder's
    clock.advance(3.0)  # the lease lasts ttl = 3 intervals
    ask(rest)
    sync(rest)
    assert [m.fleet.views[NAME].lease for m in rest].count(True) == 1


def test_keys_are_namespaced_by_service_and_expire(server: Any, clock: FakeClock) -> None:
    url = f"redis://127.0.0.1:{server.port}/0"
    a, b = Member(url, clock, service="checkout"), Member(url, clock, service="search")
    try:
        for _ in range(10):
            a.call(ok=False)
        a.fleet.sync_once()
        b.fleet.sync_once()
        assert b.state is State.CLOSED
        assert b.fleet.views[NAME].state == ""
        client = redis.Redis(port=server.port)
        keys = {k.decode() for k in client.keys("*")}
        assert all(k.startswith(("otelres:checkout:", "otelres:search:")) for k in keys)
        assert all(0 < client.pttl(k) <= 86_400_000 for k in keys)  # nothing outlives its service for ever
    finally:
        a.fleet.stop()
        b.fleet.stop()


def test_a_dead_members_window_leaves_the_fleet(members: list[Member], server: Any, clock: FakeClock) -> None:
    first, second, third = members
    for _ in range(8):
        first.call(ok=False)
    sync(members)
    assert second.breaker._fleet == (8, 8, 0)
    first.fleet.stop()
    clock.advance(2.0)
    sync([second, third])
    clock.advance(1.5)  # past ttl (3 s) since the first member's last sync, not the others'
    sync([second, third])
    assert second.breaker._fleet == (0, 0, 0)
    assert second.fleet.processes == 2
    client = redis.Redis(port=server.port)
    assert not client.exists(f"otelres:checkout:p:{first.fleet.process}")  # its counts are gone


def test_redis_down_means_every_member_decides_alone(
    members: list[Member], server: Any, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    open_the_fleet(members)
    server.stop()
    with caplog.at_level(logging.WARNING, logger="otelres"):
        for _ in range(3):
            assert not any(m.fleet.sync_once() for m in members)
    unreachable = [r for r in caplog.records if "shared state unreachable" in r.getMessage()]
    assert len(unreachable) == 3  # one per member per outage, not per round
    assert all("127.0.0.1" in r.getMessage() for r in unreachable)
    assert not any(m.fleet.connected for m in members)
    # Alone, each breaker probes by itself once its own wait is over, as without shared state.
    clock.advance(5.0)
    assert [m.call(ok=True) for m in members] == ["ok"] * 3
    assert [m.state for m in members] == [State.CLOSED] * 3
    caplog.clear()
    server.start()
    with caplog.at_level(logging.WARNING, logger="otelres"):
        sync(members)
    assert all(m.fleet.connected for m in members)
    assert len([r for r in caplog.records if "shared state is back" in r.getMessage()]) == 3


def test_a_flushed_redis_closes_nothing(members: list[Member], server: Any, clock: FakeClock) -> None:
    """The fleet's state gone: each member's open period stands, and the fleet is made again from it."""
    open_the_fleet(members)
    redis.Redis(port=server.port).flushall()
    sync(members)
    assert [m.state for m in members] == [State.OPEN] * 3
    assert all(m.fleet.views[NAME].state == "open" for m in members)
    clock.advance(5.0)
    ask(members)
    sync(members)
    assert [m.fleet.views[NAME].lease for m in members].count(True) == 1


def test_where_members_disagree_shows(members: list[Member]) -> None:
    first, *_ = members
    sync(members)
    first.breaker.force_open()  # by hand, in one process only
    sync(members)
    view = first.fleet.views[NAME]
    assert (view.processes, view.disagreeing) == (3, 1)


def test_moves_made_by_following_are_not_published_back(members: list[Member]) -> None:
    open_the_fleet(members)
    assert not any(m.fleet._events for m in members)


def test_an_operator_forcing_a_breaker_reaches_every_member(members: list[Member], server: Any) -> None:
    sync(members)
    store = FleetStore(redis.Redis(port=server.port), "checkout")
    for state, expected in (
        ("forced_open", State.FORCED_OPEN),
        ("disabled", State.DISABLED),
        ("closed", State.CLOSED),
    ):
        store.control(NAME, state)
        sync(members)
        assert [m.state for m in members] == [expected] * 3
    with pytest.raises(ValueError, match="state must be one of"):
        store.control(NAME, "half_open")


def test_a_member_that_moved_during_the_round_trip_keeps_its_news(members: list[Member]) -> None:
    """follow() refuses a view older than the breaker's own last move; the move goes out next round."""
    first, *_ = members
    sync(members)
    seq = first.breaker.fleet_view().seq
    for _ in range(10):
        first.call(ok=False)
    assert first.state is State.OPEN
    assert not first.breaker.follow(State.CLOSED, 0.0, seq)
    assert first.state is State.OPEN


def test_an_idle_holder_steps_aside_for_a_member_with_traffic(
    members: list[Member], clock: FakeClock
) -> None:
    """A holder that got no call to probe with while its lease lasted gives way: the fleet
    is never kept open by a process that has no traffic for that dependency.
    """
    open_the_fleet(members)
    clock.advance(5.0)
    ask(members)
    sync(members)
    holder = next(m for m in members if m.fleet.views[NAME].lease)
    clock.advance(3.0)  # the lease (three intervals) runs out, unused
    rest = [m for m in members if m is not holder]
    ask(rest)  # they have traffic; the holder got no call
    sync(members)
    taker = next(m for m in members if m.fleet.views[NAME].lease)
    assert taker is not holder
    assert holder.call(ok=True) == "rejected"  # its own lease is gone with the sync
    assert taker.call(ok=True) == "ok"


def test_an_idle_holder_alone_takes_the_lease_again_after_stepping_aside(
    server: Any, clock: FakeClock
) -> None:
    alone = Member(f"redis://127.0.0.1:{server.port}/0", clock)
    try:
        assert alone.fleet.sync_once()
        for _ in range(10):
            alone.call(ok=False)
        clock.advance(5.0)
        ask([alone])
        assert alone.fleet.sync_once()
        assert alone.fleet.views[NAME].lease
        clock.advance(3.0)
        assert alone.call(ok=True) == "rejected"  # its lease is over, locally too
        assert alone.fleet.sync_once()
        assert not alone.fleet.views[NAME].lease  # stepping aside for one lease period
        clock.advance(3.0)
        ask([alone])
        assert alone.fleet.sync_once()
        assert alone.fleet.views[NAME].lease
        assert alone.call(ok=True) == "ok"
    finally:
        alone.fleet.stop()


def test_sums_that_claim_more_processes_than_live_are_made_again(members: list[Member], server: Any) -> None:
    """A process's row that vanished without being pruned (it expired while no process synced)
    leaves its counts in the sums; the next sync that sees more rows than live processes
    makes the sums again from the live rows.
    """
    first, second, third = members
    for _ in range(4):
        first.call(ok=False)
        third.call(ok=False)
    sync(members)
    sync(members)  # the second round sees every member's first
    assert second.breaker._fleet == (8, 8, 0)
    client = redis.Redis(port=server.port)
    client.delete(f"otelres:checkout:p:{first.fleet.process}")
    client.zrem("otelres:checkout:procs", first.fleet.process)
    assert second.fleet.sync_once()
    assert second.breaker._fleet == (4, 4, 0)  # the third's window only
    assert second.fleet.views[NAME].processes == 2


# -- what a review found: each test failed before its fix ------------------------------------


def test_a_holder_whose_lease_ran_out_never_probes_beside_the_next_holder(
    members: list[Member], clock: FakeClock
) -> None:
    """The holder learns at its next sync that Redis let its lease go; its own clock ends the
    lease no later than Redis's, so it cannot probe in the same open period as the next holder.
    """
    open_the_fleet(members)
    clock.advance(5.0)
    ask(members)
    sync(members)
    holder = next(m for m in members if m.fleet.views[NAME].lease)
    other = next(m for m in members if m is not holder)
    clock.advance(2.9)
    assert holder.fleet.sync_once()  # still its lease (no call came: not renewed)
    clock.advance(0.2)  # Redis's lease is over
    ask([other])
    assert other.fleet.sync_once()
    assert other.fleet.views[NAME].lease
    assert holder.call(ok=False) == "rejected"  # over on its own clock too
    assert other.call(ok=False) == "failed"  # the one probe of this open period


def test_a_holder_whose_probe_was_ignored_gives_way(members: list[Member], clock: FakeClock) -> None:
    """A probe that ends counting neither way (a cancellation) leaves the holder half-open with
    no probe in flight: it no longer renews the lease, and when the lease ends it goes back to
    open and another member probes.
    """
    open_the_fleet(members)
    clock.advance(5.0)
    ask(members)
    sync(members)
    holder = next(m for m in members if m.fleet.views[NAME].lease)
    token = holder.breaker.acquire()
    holder.breaker.record(token, None, clock.monotonic())  # ignored: the permit comes back
    assert holder.state is State.HALF_OPEN
    for _ in range(2):
        clock.advance(1.0)
        sync(members)
    clock.advance(1.1)
    rest = [m for m in members if m is not holder]
    ask(rest)
    sync(members)
    assert holder.state is State.OPEN
    assert [m.fleet.views[NAME].lease for m in rest].count(True) == 1


def test_only_a_member_with_traffic_takes_the_lease(members: list[Member], clock: FakeClock) -> None:
    """Members that get no call for the dependency (a pre-fork master, an idle worker) never
    take the lease: the one that has calls probes at once.
    """
    open_the_fleet(members)
    clock.advance(5.0)
    busy = members[-1]
    for _ in range(5):
        ask([busy])
        sync(members)
        if busy.fleet.views[NAME].lease:
            break
    assert [m.fleet.views[NAME].lease for m in members] == [False, False, True]
    assert busy.call(ok=True) == "ok"


def test_a_backoff_that_is_no_whole_number_of_milliseconds_reads_back(server: Any, clock: FakeClock) -> None:
    """open_backoff=1.5: the reopened period's end is a whole millisecond, and the operator's
    listing reads it (a fractional value made FleetStore.report raise).
    """
    policy = BreakerPolicy(minimum_calls=2, open_seconds=0.333, open_backoff=1.5)
    breaker = CircuitBreaker(NAME, policy, clock=clock)
    member = Fleet(
        SharedState(f"redis://127.0.0.1:{server.port}/0", service="checkout"),
        breakers=lambda: [breaker],
        clock=clock,
    )
    member.listen()
    try:
        for _ in range(2):
            breaker.record(breaker.acquire(), True, clock.monotonic())
        assert member.sync_once()
        for _ in range(3):  # probe, fail, reopen with the backoff
            clock.advance(10.0)
            assert breaker.acquire() == REJECTED
            assert member.sync_once()
            breaker.record(breaker.acquire(), True, clock.monotonic())
            assert member.sync_once()
        client = redis.Redis(port=server.port)
        (report,) = FleetStore(client, "checkout").report()
        assert (report.state, report.episode) == ("open", 4)
        assert client.hget(f"otelres:checkout:b:{NAME}", "until").isdigit()
    finally:
        member.stop()


def test_a_forked_child_does_not_keep_its_parents_lease(members: list[Member], clock: FakeClock) -> None:
    open_the_fleet(members)
    clock.advance(5.0)
    ask(members)
    sync(members)
    holder = next(m for m in members if m.fleet.views[NAME].lease)
    holder.breaker._after_fork_in_child()  # what a fork does in the child
    assert holder.call(ok=True) == "rejected"  # the child's own member asks for one of its own


def test_a_failed_probe_from_before_an_operators_reset_does_not_reopen_the_fleet(
    members: list[Member], server: Any, clock: FakeClock
) -> None:
    open_the_fleet(members)
    clock.advance(5.0)
    ask(members)
    sync(members)
    holder = next(m for m in members if m.fleet.views[NAME].lease)
    token = holder.breaker.acquire()  # the probe is in flight...
    FleetStore(redis.Redis(port=server.port), "checkout").control(NAME, "closed")  # ...the operator resets
    holder.breaker.record(token, True, clock.monotonic())  # ...and the probe fails
    sync(members)
    assert members[0].fleet.views[NAME].state == "closed"
    assert [m.state for m in members] == [State.CLOSED] * 3


def test_a_members_lost_row_or_lost_sums_are_made_again(members: list[Member], server: Any) -> None:
    """Redis evicted a key (every key expires, so volatile-* policies may take any): a member
    whose row is gone, or sums that are gone, are made again from the live rows.
    """
    first, second, third = members
    for _ in range(4):
        first.call(ok=False)
        third.call(ok=False)
    sync(members)
    sync(members)
    client = redis.Redis(port=server.port)
    client.delete(f"otelres:checkout:p:{first.fleet.process}")
    sync(members)
    sync(members)
    assert second.breaker._fleet == (8, 8, 0)
    assert second.fleet.views[NAME].processes == 3
    client.delete(f"otelres:checkout:s:{NAME}")
    sync(members)
    sync(members)
    assert second.breaker._fleet == (8, 8, 0)
    assert second.fleet.views[NAME].processes == 3
