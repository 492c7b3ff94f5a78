"""Backoff with jitter: the bounds of every mode, the cap, huge retry numbers, and the distribution."""

from __future__ import annotations

import math
import random
import statistics

import pytest

import otelres
from otelres import backoff_delay

# (base, cap): the default, a short cap, a long one, a cap equal to the base, and a zero base.
SCALES = [(0.1, 5.0), (0.05, 1.0), (1.0, 30.0), (2.0, 2.0), (0.0, 5.0)]
RETRIES = range(1, 21)
#: The largest float random.random() can return.
ALMOST_ONE = math.nextafter(1.0, 0.0)
#: (retry, base, cap) whose distribution is sampled: below, at and past the cap.
SCALES_FOR_DISTRIBUTION = [(1, 0.1, 5.0), (4, 0.1, 5.0), (12, 0.1, 5.0), (3, 1.0, 30.0)]
#: How many seeded samples the distribution tests draw.
SAMPLES = 20_000


def ceiling(retry: int, base: float, cap: float) -> float:
    """The documented ceiling: min(cap, base * 2^(n-1))."""
    return min(cap, base * 2.0 ** (retry - 1))


def zero() -> float:
    return 0.0


def almost_one() -> float:
    return ALMOST_ONE


@pytest.mark.parametrize(("base", "cap"), SCALES)
@pytest.mark.parametrize("retry", RETRIES)
def test_none_is_exactly_the_ceiling(retry: int, base: float, cap: float) -> None:
    """jitter="none" gives min(cap, base * 2^(n-1)) exactly, without touching the random source."""

    def forbidden() -> float:
        raise AssertionError("jitter='none' must not draw a random number")

    assert backoff_delay("none", retry, base, cap, forbidden) == pytest.approx(ceiling(retry, base, cap))


@pytest.mark.parametrize(("base", "cap"), SCALES)
@pytest.mark.parametrize("retry", RETRIES)
def test_full_spans_zero_to_the_ceiling(retry: int, base: float, cap: float) -> None:
    """Full jitter is random() * ceiling: 0 at random()=0, just under the ceiling at its top."""
    top = ceiling(retry, base, cap)
    assert backoff_delay("full", retry, base, cap, zero) == 0.0
    high = backoff_delay("full", retry, base, cap, almost_one)
    assert high <= top
    assert high == pytest.approx(top)
    rng = random.Random(retry).random
    for _ in range(200):
        assert 0.0 <= backoff_delay("full", retry, base, cap, rng) <= top


@pytest.mark.parametrize(("base", "cap"), SCALES)
@pytest.mark.parametrize("retry", RETRIES)
def test_equal_spans_half_the_ceiling_to_the_ceiling(retry: int, base: float, cap: float) -> None:
    """Equal jitter lies in [ceiling/2, ceiling]: half fixed, half random."""
    top = ceiling(retry, base, cap)
    assert backoff_delay("equal", retry, base, cap, zero) == pytest.approx(top / 2)
    assert backoff_delay("equal", retry, base, cap, almost_one) == pytest.approx(top)
    rng = random.Random(retry).random
    for _ in range(200):
        delay = backoff_delay("equal", retry, base, cap, rng)
        assert top / 2 <= delay <= top


@pytest.mark.parametrize(("base", "cap"), [s for s in SCALES if s[0] > 0])
@pytest.mark.parametrize("retry", RETRIES)
def test_decorrelated_stays_within_base_and_three_previous(retry: int, base: float, cap: float) -> None:
    """Decorrelated jitter is min(cap, U(base, 3 * previous)), chained over the previous delay."""
    rng = random.Random(retry).random
    previous = 0.0
    for _ in range(50):
        high = min(cap, max(base, 3.0 * (previous if previous > 0 else base)))
        delay = backoff_delay("decorrelated", retry, base, cap, rng, previous)
        assert min(base, cap) <= delay <= high
        previous = delay


def test_decorrelated_first_retry_draws_from_base_to_three_base() -> None:
    """With no previous delay, decorrelated jitter draws from U(base, 3 * base)."""
    assert backoff_delay("decorrelated", 1, 0.1, 5.0, zero) == pytest.approx(0.1)
    assert backoff_delay("decorrelated", 1, 0.1, 5.0, almost_one) == pytest.approx(0.3)
    assert backoff_delay("decorrelated", 1, 0.1, 5.0, lambda: 0.5) == pytest.approx(0.2)


def test_decorrelated_grows_from_the_previous_delay_not_the_retry_number() -> None:
    """Decorrelated jitter depends on the previous delay, whatever the retry number."""
    for retry in (1, 5, 20):
        assert backoff_delay("decorrelated", retry, 0.1, 5.0, lambda: 0.5, 1.0) == pytest.approx(1.55)
    assert backoff_delay("decorrelated", 1, 0.1, 5.0, almost_one, 4.0) == 5.0


def test_none_doubles_until_the_cap_and_then_stays() -> None:
    """The default scale (0.1 s doubling, 5 s cap) reaches the cap at retry 7 and stays there."""
    delays = [backoff_delay("none", n, 0.1, 5.0, zero) for n in range(1, 11)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0, 5.0])


@pytest.mark.parametrize("mode", otelres._backoff.JITTER_MODES)
@pytest.mark.parametrize("retry", [64, 1000, 1023, 1024, 1025, 10**6, 10**18])
@pytest.mark.parametrize(("base", "cap"), [(0.1, 5.0), (3600.0, 3600.0), (1e300, 7.0)])
def test_huge_retry_numbers_never_overflow(mode: str, retry: int, base: float, cap: float) -> None:
    """Retry 1,000 or 10**6 raises no OverflowError and gives a finite delay <= cap."""
    for source in (zero, almost_one, random.Random(7).random):
        delay = backoff_delay(mode, retry, base, cap, source, cap)  # type: ignore[arg-type]
        assert math.isfinite(delay)
        assert 0.0 <= delay <= cap


@pytest.mark.parametrize("retry", [1000, 10**6])
def test_huge_retry_numbers_sit_at_the_cap(retry: int) -> None:
    """Past the cap the ceiling is the cap: "none" gives it and "full" scales it."""
    assert backoff_delay("none", retry, 0.1, 5.0, zero) == 5.0
    assert backoff_delay("full", retry, 0.1, 5.0, lambda: 0.5) == 2.5
    assert backoff_delay("equal", retry, 0.1, 5.0, zero) == 2.5


def test_zero_cap_means_no_delay() -> None:
    """A cap of 0 gives a delay of 0 in every mode."""
    for mode in otelres._backoff.JITTER_MODES:
        assert backoff_delay(mode, 3, 0.0, 0.0, almost_one) == 0.0  # type: ignore[arg-type]


def _tolerance(spread: float) -> float:
    """Five standard errors of the mean of SAMPLES uniform draws over ``spread``."""
    return 5 * spread / math.sqrt(12) / math.sqrt(SAMPLES)


@pytest.mark.parametrize(("retry", "base", "cap"), SCALES_FOR_DISTRIBUTION)
def test_full_jitter_is_uniform_over_the_ceiling(retry: int, base: float, cap: float) -> None:
    """Over seeded samples, full jitter has mean c/2, sd c/sqrt(12), and half its mass below c/2."""
    top = ceiling(retry, base, cap)
    rng = random.Random(42).random
    samples = [backoff_delay("full", retry, base, cap, rng) for _ in range(SAMPLES)]
    assert all(0.0 <= s <= top for s in samples)
    assert statistics.fmean(samples) == pytest.approx(top / 2, abs=_tolerance(top))
    assert statistics.pstdev(samples) == pytest.approx(top / math.sqrt(12), rel=0.05)
    below_middle = sum(s < top / 2 for s in samples) / SAMPLES
    assert below_middle == pytest.approx(0.5, abs=5 * 0.5 / math.sqrt(SAMPLES))
    # Both ends are reached: it is jitter over the whole range, not a narrow band.
    assert min(samples) < 0.01 * top
    assert max(samples) > 0.99 * top


@pytest.mark.parametrize(("retry", "base", "cap"), [(1, 0.1, 5.0), (4, 0.1, 5.0), (12, 0.1, 5.0)])
def test_equal_jitter_is_uniform_over_the_upper_half(retry: int, base: float, cap: float) -> None:
    """Over many seeded samples, equal jitter lies in [c/2, c] with mean 3c/4."""
    top = ceiling(retry, base, cap)
    rng = random.Random(42).random
    samples = [backoff_delay("equal", retry, base, cap, rng) for _ in range(SAMPLES)]
    assert all(top / 2 <= s <= top for s in samples)
    assert statistics.fmean(samples) == pytest.approx(0.75 * top, abs=_tolerance(top / 2))
    assert min(samples) < top / 2 + 0.01 * top
    assert max(samples) > 0.99 * top


def test_decorrelated_jitter_distribution_from_a_fixed_previous_delay() -> None:
    """From a fixed previous delay p, decorrelated jitter is uniform on [base, 3p] (mean (base+3p)/2)."""
    base, cap, previous = 0.1, 5.0, 0.5
    rng = random.Random(42).random
    samples = [backoff_delay("decorrelated", 2, base, cap, rng, previous) for _ in range(SAMPLES)]
    assert all(base <= s <= 3 * previous for s in samples)
    high = 3 * previous
    assert statistics.fmean(samples) == pytest.approx((base + high) / 2, abs=_tolerance(high - base))


def test_decorrelated_jitter_chain_is_bounded_by_the_cap() -> None:
    """A long chain of decorrelated delays climbs to the cap and never passes it."""
    rng = random.Random(42).random
    previous = 0.0
    chain = []
    for retry in range(1, 2001):
        previous = backoff_delay("decorrelated", retry, 0.1, 5.0, rng, previous)
        chain.append(previous)
    assert all(0.1 <= d <= 5.0 for d in chain)
    assert max(chain) == 5.0  # the cap is reached (3 * previous passes 5 s quickly)
    assert statistics.fmean(chain[100:]) > 2.0  # and the chain stays high, as decorrelated jitter does


def test_the_same_seed_gives_the_same_delays() -> None:
    """backoff_delay keeps no state: the same random source gives the same sequence."""
    first = [backoff_delay("full", n, 0.1, 5.0, random.Random(3).random) for n in range(1, 10)]
    again = [backoff_delay("full", n, 0.1, 5.0, random.Random(3).random) for n in range(1, 10)]
    assert first == again
