"""Client-side adaptive throttling (otelres._throttle): the SRE book's rejection probability over a
sliding window, its guards (min_requests, max_rejection), its validation, threads and fork.

Time is a FakeClock and the random source is injected: nothing sleeps, every figure is exact.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import select
import signal
import statistics
import sys
import threading
import warnings
from typing import TYPE_CHECKING

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otelres import ConfigError
from otelres._throttle import MAX_BUCKETS, Throttle, ThrottlePolicy, ThrottleStats
from otelres.testing import FakeClock

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

#: A draw no probability below 1 reaches: the throttle never rejects with it.
NEVER = math.nextafter(1.0, 0.0)
#: Every wait on another thread or process gives up after this long instead of hanging the suite.
TIMEOUT = 10.0
#: The formula alone: no minimum, no cap.
BARE = ThrottlePolicy(min_requests=0, max_rejection=1.0)


def sre(requests: int, accepts: int, k: float) -> float:
    """The SRE book's client-side throttling probability."""
    return max(0.0, (requests - k * accepts) / (requests + 1))


def fill(throttle: Throttle, requests: int, accepts: int) -> None:
    """``requests`` admitted requests (the throttle must not reject any), ``accepts`` of them accepted."""
    for i in range(requests):
        assert throttle.admit()
        throttle.record(i < accepts)


class Draws:
    """A random source whose next draw the test sets."""

    def __init__(self, value: float = NEVER) -> None:
        self.value = value
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        return self.value


# -- the formula -------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1.0, 1.1, 2.0, 3.0])
@pytest.mark.parametrize(("requests", "accepts"), [(0, 0), (1, 0), (10, 0), (100, 20), (100, 50), (100, 100)])
def test_the_probability_is_the_sre_formula_at_known_counts(
    clock: FakeClock, k: float, requests: int, accepts: int
) -> None:
    """With no minimum and no cap, the probability is max(0, (requests - k * accepts) / (requests + 1))."""
    throttle = Throttle(BARE.evolve(k=k), clock=clock, random=Draws())
    fill(throttle, requests, accepts)
    assert throttle.rejection_probability() == pytest.approx(sre(requests, accepts, k), rel=1e-12)
    assert throttle.stats() == (requests, accepts, 0, throttle.rejection_probability())


def test_a_draw_below_the_probability_rejects_and_one_at_it_admits(clock: FakeClock) -> None:
    """admit() rejects exactly when the draw is below the probability computed before counting the request."""
    draws = Draws()
    throttle = Throttle(BARE, clock=clock, random=draws)
    fill(throttle, 100, 0)
    p = throttle.rejection_probability()
    assert p == 100 / 101
    draws.value = math.nextafter(p, 0.0)
    assert not throttle.admit()
    p = throttle.rejection_probability()
    assert p == 101 / 102  # the rejected request counts as a request, as in the SRE book
    draws.value = p
    assert throttle.admit()
    assert throttle.stats() == ThrottleStats(101, 0, 1, 101 / 102)  # not counted until answered
    throttle.record(False)
    assert throttle.stats() == ThrottleStats(102, 0, 1, 102 / 103)


def test_requests_in_flight_count_neither_way(clock: FakeClock) -> None:
    """A burst of requests whose answers have not come back is not mistaken for failures: a request
    admitted counts when its answer is recorded, whenever that is.
    """
    throttle = Throttle(BARE.evolve(window_seconds=10.0), clock=clock, random=Draws(0.0))
    assert all(throttle.admit() for _ in range(50))
    assert throttle.stats() == ThrottleStats(0, 0, 0, 0.0)
    clock.advance(30.0)
    for _ in range(50):
        throttle.record(False)
    assert throttle.stats() == ThrottleStats(50, 0, 0, 50 / 51)


def test_a_healthy_dependency_costs_no_random_draws(clock: FakeClock) -> None:
    """While the probability is 0 (accepts keep up), admit() never calls the random source."""
    draws = Draws(0.0)
    throttle = Throttle(BARE, clock=clock, random=draws)
    fill(throttle, 1000, 1000)
    assert draws.calls == 0


# -- the window ----------------------------------------------------------------------------------------


def test_requests_leave_the_window_after_window_seconds(clock: FakeClock) -> None:
    """Counts of one second stay for window_seconds (one-second buckets) and not a second more."""
    throttle = Throttle(BARE.evolve(window_seconds=120.0), clock=clock, random=Draws())
    fill(throttle, 50, 10)
    clock.advance(119.999)
    assert throttle.stats()[:3] == (50, 10, 0)
    clock.advance(0.001)
    assert throttle.stats() == ThrottleStats(0, 0, 0, 0.0)


def test_the_window_slides_bucket_by_bucket(clock: FakeClock) -> None:
    """Of two batches 60 s apart, the older leaves the window first; the newer stays its full window."""
    throttle = Throttle(BARE.evolve(window_seconds=120.0), clock=clock, random=Draws())
    fill(throttle, 30, 0)
    clock.advance(60.0)
    fill(throttle, 20, 20)
    assert throttle.rejection_probability() == sre(50, 20, 2.0)
    clock.advance(60.0)
    assert throttle.stats() == ThrottleStats(20, 20, 0, 0.0)
    clock.advance(59.5)
    assert throttle.stats().requests == 20
    clock.advance(0.5)
    assert throttle.stats().requests == 0


def test_a_long_silence_empties_the_window_at_once(clock: FakeClock) -> None:
    """After a year without requests the window is empty (and clearing it costs one pass over the ring)."""
    throttle = Throttle(BARE, clock=clock, random=Draws())
    fill(throttle, 40, 0)
    clock.advance(365 * 86400.0)
    assert throttle.stats() == ThrottleStats(0, 0, 0, 0.0)


@pytest.mark.parametrize(
    ("window", "buckets", "width"),
    [
        (120.0, 120, 1.0),
        (0.5, 1, 0.5),
        (1.5, 2, 0.75),
        (3600.0, MAX_BUCKETS, 6.0),
        (86400.0, MAX_BUCKETS, 144.0),
    ],
)
def test_the_ring_is_fixed_and_spans_exactly_the_window(window: float, buckets: int, width: float) -> None:
    """One bucket a second, at most MAX_BUCKETS (longer windows have wider buckets): memory is fixed."""
    throttle = Throttle(ThrottlePolicy(window_seconds=window))
    assert throttle.policy.buckets == buckets
    assert len(throttle._ring_requests) == len(throttle._ring_accepts) == buckets
    assert throttle._width == width
    assert buckets * width == window


# -- k, min_requests, max_rejection --------------------------------------------------------------------


def offer(throttle: Throttle, clock: FakeClock, offered: int, capacity: int, seconds: int) -> list[int]:
    """Each second, ``offered`` requests; the dependency accepts the first ``capacity`` sent. The
    requests sent each second.
    """
    sent_each: list[int] = []
    for _ in range(seconds):
        sent = 0
        for _ in range(offered):
            if throttle.admit():
                sent += 1
                throttle.record(sent <= capacity)
        sent_each.append(sent)
        clock.advance(1.0)
    return sent_each


@pytest.mark.parametrize("k", [1.1, 1.5, 2.0, 4.0])
def test_the_dependency_receives_about_k_times_what_it_accepts(clock: FakeClock, k: float) -> None:
    """Offered 10x what it can accept, the dependency receives k times its capacity (k=2: twice)."""
    throttle = Throttle(
        ThrottlePolicy(k=k, window_seconds=10.0, max_rejection=1.0),
        clock=clock,
        random=random.Random(15).random,
    )
    sent = offer(throttle, clock, offered=1000, capacity=100, seconds=60)
    assert statistics.fmean(sent[30:]) == pytest.approx(k * 100, rel=0.1)


def test_k_2_never_throttles_a_dependency_that_accepts_half(clock: FakeClock) -> None:
    """k=2 lets twice the accepts through: offered 2x what it accepts, nothing is rejected."""
    throttle = Throttle(ThrottlePolicy(window_seconds=10.0), clock=clock, random=random.Random(2).random)
    sent = offer(throttle, clock, offered=200, capacity=100, seconds=30)
    assert sent == [200] * 30
    assert throttle.stats().rejected == 0


def test_no_rejection_before_min_requests(clock: FakeClock) -> None:
    """Below min_requests in the window the probability is 0, however few were accepted."""
    throttle = Throttle(ThrottlePolicy(min_requests=20), clock=clock, random=Draws(0.0))
    fill(throttle, 19, 0)
    assert throttle.rejection_probability() == 0.0
    assert throttle.admit()  # the 20th is judged on 19
    throttle.record(False)
    assert throttle.rejection_probability() == pytest.approx(min(0.9, sre(20, 0, 2.0)))
    assert not throttle.admit()


def test_min_requests_counts_the_window_only(clock: FakeClock) -> None:
    """Requests that left the window no longer count towards min_requests."""
    throttle = Throttle(ThrottlePolicy(min_requests=20, window_seconds=10.0), clock=clock, random=Draws(0.0))
    fill(throttle, 15, 0)
    clock.advance(10.0)
    fill(throttle, 15, 0)
    assert throttle.rejection_probability() == 0.0


def test_max_rejection_caps_the_probability(clock: FakeClock) -> None:
    """With nothing accepted the probability stops at max_rejection: one request in ten still goes out."""
    draws = Draws()
    throttle = Throttle(ThrottlePolicy(min_requests=0), clock=clock, random=draws)
    fill(throttle, 1000, 0)
    assert throttle.rejection_probability() == 0.9
    draws.value = math.nextafter(0.9, 0.0)
    assert not throttle.admit()
    draws.value = 0.9
    assert throttle.admit()
    uncapped = Throttle(BARE, clock=clock, random=Draws())
    fill(uncapped, 1000, 0)
    assert uncapped.rejection_probability() == 1000 / 1001


def test_some_traffic_always_probes_a_dead_dependency(clock: FakeClock) -> None:
    """A dependency that accepts nothing still receives about 1 - max_rejection of the requests."""
    throttle = Throttle(ThrottlePolicy(max_rejection=0.8), clock=clock, random=random.Random(3).random)
    sent = offer(throttle, clock, offered=100, capacity=0, seconds=120)
    assert statistics.fmean(sent[10:]) == pytest.approx(20, rel=0.15)


def test_throttling_recedes_when_accepts_return(clock: FakeClock) -> None:
    """After an outage at the cap, a dependency that accepts everything again is soon throttled no more."""
    throttle = Throttle(ThrottlePolicy(window_seconds=10.0), clock=clock, random=random.Random(5).random)
    offer(throttle, clock, offered=100, capacity=0, seconds=10)
    assert throttle.rejection_probability() == 0.9
    probabilities = []
    for _ in range(30):
        offer(throttle, clock, offered=100, capacity=100, seconds=1)
        probabilities.append(throttle.rejection_probability())
    assert probabilities[9] < 0.8  # recedes within a window
    assert probabilities[5:] == sorted(probabilities[5:], reverse=True)  # and keeps receding
    assert probabilities[19:] == [0.0] * 11  # gone within two windows
    assert offer(throttle, clock, offered=100, capacity=100, seconds=1) == [100]


# -- threads and fork ----------------------------------------------------------------------------------


@pytest.fixture
def switch_often() -> Iterator[None]:
    """Switch threads every few bytecodes, so that they interleave inside admit() and record()."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(interval)


def test_counts_add_up_exactly_under_many_threads(clock: FakeClock, switch_often: None) -> None:
    """8 threads admit and record at once: requests, rejections and accepts are each counted exactly once."""
    threads, each = 8, 2000
    # k=1 with a third accepted would reject 2/3: the draw of 0.5 rejects some and admits others.
    throttle = Throttle(ThrottlePolicy(k=1.0, min_requests=0), clock=clock, random=Draws(0.5))
    tallies = [[0, 0, 0] for _ in range(threads)]  # admitted, rejected, accepted
    barrier = threading.Barrier(threads)

    def work(tally: list[int]) -> None:
        barrier.wait(TIMEOUT)
        for j in range(each):
            if throttle.admit():
                tally[0] += 1
                accepted = j % 3 == 0
                throttle.record(accepted)
                tally[2] += accepted
            else:
                tally[1] += 1

    pool = [threading.Thread(target=work, args=(tally,)) for tally in tallies]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(TIMEOUT)
    assert not any(thread.is_alive() for thread in pool)
    admitted, rejected, accepted = (sum(column) for column in zip(*tallies, strict=True))
    assert admitted + rejected == threads * each
    assert rejected > 0
    assert admitted > 0
    assert throttle.stats()[:3] == (threads * each, accepted, rejected)


def fork_child(work: Callable[[], str]) -> str:
    """Fork; the child runs ``work`` and writes what it returns; the parent gets that line."""
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns that fork() in a process with threads may deadlock the child: a thread
        # holding a lock at the fork is what this test makes on purpose.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child; it leaves by os._exit, so no pytest code runs there
        code = 1
        try:
            os.close(read_end)
            os.write(write_end, work().encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    chunks = []
    try:
        while select.select([read_end], [], [], TIMEOUT)[0]:
            chunk = os.read(read_end, 4096)
            if not chunk:
                break
            chunks.append(chunk)
        else:
            os.kill(pid, signal.SIGKILL)
            return "deadlock"
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    return b"".join(chunks).decode()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX only")
def test_a_forked_child_starts_with_an_empty_window_and_a_free_lock(clock: FakeClock) -> None:
    """Forked while another thread holds the throttle's lock, the child's throttle is empty and works."""
    throttle = Throttle(ThrottlePolicy(min_requests=0), clock=clock, random=Draws(0.0))
    fill(throttle, 1, 0)
    for _ in range(49):
        assert not throttle.admit()
    parent = throttle.stats()
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with throttle._lock:
            held.set()
            release.wait(TIMEOUT)

    def child() -> str:
        before = tuple(throttle.stats())
        admitted = throttle.admit()
        throttle.record(False)
        return repr((before, admitted, tuple(throttle.stats())))

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(TIMEOUT)
        answer = fork_child(child)
    finally:
        release.set()
        holder.join(TIMEOUT)
    assert answer == repr(((0, 0, 0, 0.0), True, (1, 0, 0, 0.5)))  # one request, none accepted: 1/2
    assert throttle.stats() == parent  # the parent keeps its window


# -- properties ------------------------------------------------------------------------------------------

STEPS = st.lists(
    st.one_of(
        st.sampled_from(["admit", "accept", "fail"]),
        st.integers(min_value=1, max_value=600).map(lambda quarters: quarters / 4),  # exact in binary
    ),
    max_size=120,
)


@settings(max_examples=200, deadline=None)
@given(
    window=st.sampled_from([0.5, 1.0, 2.0, 7.0, 120.0]),
    k=st.sampled_from([1.0, 1.1, 2.0, 5.0]),
    min_requests=st.integers(min_value=0, max_value=30),
    max_rejection=st.sampled_from([0.1, 0.5, 0.9, 1.0]),
    rng=st.randoms(use_true_random=False),
    steps=STEPS,
)
def test_probability_and_counts_stay_in_bounds(
    window: float, k: float, min_requests: int, max_rejection: float, rng: random.Random, steps: list[object]
) -> None:
    """Whatever happens, the probability is in [0, max_rejection], no count is negative (nor accepts
    above requests), and the window counts every request younger than window_seconds minus a bucket
    and none older than window_seconds.
    """
    clock = FakeClock()
    policy = ThrottlePolicy(
        k=k, window_seconds=window, min_requests=min_requests, max_rejection=max_rejection
    )
    throttle = Throttle(policy, clock=clock, random=rng.random)
    width = throttle._width
    assert len(throttle._ring_requests) * width == window
    requested: list[float] = []
    accepted: list[float] = []
    for step in steps:
        if step == "admit":
            if not throttle.admit():
                requested.append(clock.monotonic())
        elif step in ("accept", "fail"):
            requested.append(clock.monotonic())
            if step == "accept":
                accepted.append(clock.monotonic())
            throttle.record(step == "accept")
        else:
            assert isinstance(step, float)
            clock.advance(step)
        stats = throttle.stats()
        assert 0.0 <= stats.probability <= max_rejection
        assert stats.requests >= 0
        assert 0 <= stats.accepts <= stats.requests
        assert 0 <= stats.rejected <= stats.requests
        if stats.requests < min_requests:
            assert stats.probability == 0.0
        now = clock.monotonic()
        for counted, times in ((stats.requests, requested), (stats.accepts, accepted)):
            assert (
                sum(now - t < window - width for t in times)
                <= counted
                <= sum(now - t < window for t in times)
            )


# -- configuration -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("k", math.nan),
        ("k", math.inf),
        ("k", -2.0),
        ("k", 0.0),
        ("k", 0.99),
        ("k", 1001.0),
        ("k", True),
        ("k", "2"),
        ("window_seconds", 0.0),
        ("window_seconds", -120.0),
        ("window_seconds", math.nan),
        ("window_seconds", math.inf),
        ("window_seconds", 86401.0),
        ("window_seconds", None),
        ("min_requests", -1),
        ("min_requests", 2.5),
        ("min_requests", math.nan),
        ("min_requests", False),
        ("min_requests", 1_000_001),
        ("max_rejection", 0.0),
        ("max_rejection", -0.5),
        ("max_rejection", 1.01),
        ("max_rejection", math.nan),
        ("max_rejection", -math.inf),
        ("max_rejection", "0.9"),
    ],
)
def test_a_bad_policy_value_is_a_config_error_naming_it(key: str, value: object) -> None:
    """NaN, infinities, negatives, k < 1, a window <= 0, max_rejection outside (0, 1], and the wrong
    types raise ConfigError with the key, the value and what is allowed.
    """
    with pytest.raises(ConfigError) as info:
        ThrottlePolicy(**{key: value})  # type: ignore[arg-type]
    assert info.value.key == f"throttle.{key}"
    assert info.value.value is value
    assert info.value.allowed
    assert str(info.value).startswith(f"invalid value for throttle.{key}: {value!r} (allowed: ")


def test_the_limits_themselves_are_allowed() -> None:
    """k = 1, a day-long window, no minimum and a cap of 1 are valid."""
    policy = ThrottlePolicy(k=1.0, window_seconds=86400.0, min_requests=0, max_rejection=1.0)
    assert dataclasses.astuple(policy)[:4] == (1.0, 86400.0, 0, 1.0)


def test_the_defaults_are_the_sre_books_with_failsafe_gos_cap() -> None:
    """k=2 over two minutes, from 20 requests on, never more than 90 % rejected."""
    assert ThrottlePolicy() == ThrottlePolicy(k=2.0, window_seconds=120.0, min_requests=20, max_rejection=0.9)
    assert Throttle().policy == ThrottlePolicy()


def test_a_policy_is_a_frozen_value_changed_by_evolve() -> None:
    """Policies cannot be changed in place; evolve() copies, validates, and names an unknown field."""
    policy = ThrottlePolicy()
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.k = 1.5  # type: ignore[misc]
    assert policy.evolve(k=1.5).k == 1.5
    assert policy.k == 2.0
    with pytest.raises(ConfigError, match=r"throttle\.k"):
        policy.evolve(k=0.5)
    with pytest.raises(ConfigError, match="did you mean 'max_rejection'"):
        policy.evolve(max_rejections=0.5)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"policy": {"k": 2.0}}, "throttle"),
        ({"clock": object()}, "throttle.clock"),
        ({"random": 0.5}, "throttle.random"),
    ],
)
def test_a_bad_throttle_argument_is_a_config_error(kwargs: dict[str, object], key: str) -> None:
    """A policy that is not a ThrottlePolicy, a clock that is not a Clock or a random that is not callable."""
    with pytest.raises(ConfigError) as info:
        Throttle(**kwargs)  # type: ignore[arg-type]
    assert info.value.key == key


def test_repr_shows_the_policy_and_the_counts(clock: FakeClock) -> None:
    """repr() names k, the window and the counts."""
    throttle = Throttle(clock=clock)
    fill(throttle, 3, 1)
    assert repr(throttle) == "Throttle(k=2, window_seconds=120, requests=3, accepts=1, rejected=0)"
