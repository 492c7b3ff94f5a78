"""Hostile and mistaken values at the trust boundaries: only ConfigError or the documented
result ever comes out (hypothesis explores the values)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

import otelres
from otelres._deadline import MAX_DEADLINE, time_left


@given(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(), st.booleans()))
def test_a_deadline_is_finite_or_refused(seconds: float) -> None:
    """otelres.deadline(x) holds a finite deadline of at most a day, or raises ConfigError."""
    ok = not isinstance(seconds, bool) and math.isfinite(seconds) and 0 <= seconds <= MAX_DEADLINE
    if not ok:
        with pytest.raises(otelres.ConfigError, match="for deadline"), otelres.deadline(seconds):
            pass
        return
    with otelres.deadline(seconds):
        left = time_left()
        assert left is not None
        assert left <= MAX_DEADLINE
