"""Retry-After parsing: delta-seconds and HTTP-dates (RFC 9110 §10.2.3, §5.6.7); malformed values are
ignored (None), never raised.
"""

from __future__ import annotations

import email.utils
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otelres import parse_retry_after

#: Wed, 21 Oct 2015 07:28:00 GMT, the example date of RFC 9110, as "now" on the wall clock.
NOW = 1445412480.0


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        ("0", 0.0),
        ("1", 1.0),
        ("007", 7.0),
        ("86400", 86400.0),
        (" 120 ", 120.0),  # optional whitespace around a field value is not part of it
        ("\t5\t", 5.0),
        ("999999999999999", 999999999999999.0),
    ],
)
def test_delta_seconds(value: str, seconds: float) -> None:
    """delta-seconds (1*DIGIT) gives that many seconds, as a float."""
    result = parse_retry_after(value, now=NOW)
    assert result == seconds
    assert type(result) is float


def test_delta_seconds_ignores_now() -> None:
    """delta-seconds is relative: the wall clock does not change it."""
    assert parse_retry_after("30", now=0.0) == parse_retry_after("30", now=NOW) == 30.0


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("Wed, 21 Oct 2015 07:30:00 GMT", 120.0),  # IMF-fixdate, the preferred format
        ("Wed, 21 Oct 2015 08:28:00 GMT", 3600.0),
        ("Thu, 22 Oct 2015 07:28:00 GMT", 86400.0),
        ("Wed, 21 Oct 2015 07:28:01 GMT", 1.0),
    ],
)
def test_http_date_in_the_future(value: str, seconds: float) -> None:
    """An IMF-fixdate HTTP-date gives the seconds from ``now`` until it."""
    assert parse_retry_after(value, now=NOW) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    [
        "Wed, 21 Oct 2015 07:28:00 GMT",  # exactly now
        "Wed, 21 Oct 2015 07:27:59 GMT",
        "Sun, 06 Nov 1994 08:49:37 GMT",
        "Mon, 01 Jan 0001 00:00:00 GMT",
    ],
)
def test_http_date_in_the_past_is_zero(value: str) -> None:
    """An HTTP-date at or before ``now`` means "retry now": 0.0, never a negative delay."""
    assert parse_retry_after(value, now=NOW) == 0.0


def test_http_date_from_bytes() -> None:
    """A header value given as bytes (latin-1, as HTTP/1.1 libraries hand them) is parsed too."""
    assert parse_retry_after(b"120", now=NOW) == 120.0
    assert parse_retry_after(b"Wed, 21 Oct 2015 07:30:00 GMT", now=NOW) == pytest.approx(120.0)
    assert parse_retry_after(b" 7 ", now=NOW) == 7.0


@pytest.mark.parametrize(
    "value",
    [
        "1" + "0" * 399,  # a 400-digit delta-seconds
        "9" * 4000,
        "1000000000000000000000",
    ],
)
def test_huge_delta_seconds_is_infinite(value: str) -> None:
    """A delta-seconds too large for any wait is still valid syntax: inf (above every cap), no error."""
    # parse_retry_after's docstring says None for "a value too large for a float"; the code returns inf,
    # the useful answer: the policy's cap check then ends the retries instead of retrying early.
    result = parse_retry_after(value, now=NOW)
    assert result == math.inf


@pytest.mark.parametrize(
    "value",
    [
        "-5",  # negative
        "-0",
        "+5",  # a sign is not a DIGIT
        "1.5",  # fractional
        "0.0",
        ".5",
        "1e3",  # exponent
        "inf",
        "nan",
        "Infinity",
        "0x10",
        "1_000",  # Python's digit separator
        "12 34",
        "1,000",
        "\u0661\u0662\u0663",  # Arabic-Indic digits: str.isdigit() but not DIGIT
        "\u00b2",  # superscript two: str.isdigit() too
        "\uff11\uff12",  # fullwidth digits
    ],
)
def test_malformed_numbers_are_ignored(value: str) -> None:
    """Negative, signed, fractional, exponent and non-ASCII numbers are not delta-seconds: None."""
    assert parse_retry_after(value, now=NOW) is None


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "\t\r\n",
        "soon",
        "abc",
        "Retry later",
        "GMT",
        "Wed, 21 Oct 2015",  # no time
        "Wed, 32 Oct 2015 07:28:00 GMT",  # no such day
        "Wed, 21 Foo 2015 07:28:00 GMT",  # no such month
        "Wed, 21 Oct 2015 25:28:00 GMT",  # no such hour
        "Wed, 21 Oct 2015 07:28:60 GMT",
        "Wed, 21 Oct 99999 07:28:00 GMT",  # a year datetime cannot hold
        "\x00",
        "120\x00",
    ],
)
def test_garbage_is_ignored(value: str) -> None:
    """Empty, blank and unparseable values give None."""
    assert parse_retry_after(value, now=NOW) is None


@pytest.mark.parametrize("value", [None, b"", b"   ", b"\xff\xfe\xfd", b"soon"])
def test_none_and_bad_bytes_are_ignored(value: bytes | None) -> None:
    """A missing header (None) and bytes that are no Retry-After give None."""
    assert parse_retry_after(value, now=NOW) is None


@pytest.mark.parametrize(
    "value",
    [
        "Wed, 21 Oct 2015 07:30:00",  # IMF-fixdate without its GMT
        "Wed, 21 Oct 2015 07:30:00 -0000",  # RFC 5322: -0000 means "local time unknown"
    ],
)
def test_dates_without_a_time_zone_are_ignored(value: str) -> None:
    """A date-time with no (or an unknown) zone is not an HTTP-date: None rather than a guess."""
    assert parse_retry_after(value, now=NOW) is None


def test_obsolete_rfc850_date_is_accepted() -> None:
    """RFC 9110 §5.6.7: a recipient MUST accept the obsolete RFC 850 format (two-digit year, GMT)."""
    assert parse_retry_after("Wednesday, 21-Oct-15 07:30:00 GMT", now=NOW) == pytest.approx(120.0)


def test_obsolete_asctime_date_is_accepted() -> None:
    """RFC 9110 §5.6.7: a recipient MUST accept the asctime() format, which is in GMT by definition."""
    assert parse_retry_after("Wed Oct 21 07:30:00 2015", now=NOW) == pytest.approx(120.0)


def test_obsolete_asctime_date_never_raises() -> None:
    """Whatever becomes of asctime() support, such a value never raises and never goes negative."""
    for value in ("Wed Oct 21 07:30:00 2015", "Sun Nov  6 08:49:37 1994"):
        result = parse_retry_after(value, now=NOW)
        assert result is None or result >= 0.0


def test_other_explicit_zones_are_converted() -> None:
    """A numeric or UTC zone (lenient, beyond HTTP's GMT) is converted, not misread as GMT."""
    assert parse_retry_after("Wed, 21 Oct 2015 07:30:00 +0000", now=NOW) == pytest.approx(120.0)
    assert parse_retry_after("Wed, 21 Oct 2015 09:30:00 +0200", now=NOW) == pytest.approx(120.0)
    assert parse_retry_after("Wed, 21 Oct 2015 07:30:00 UTC", now=NOW) == pytest.approx(120.0)


def test_now_is_keyword_only() -> None:
    """``now`` must be named, so a wall-clock time cannot be passed for something else by position."""
    with pytest.raises(TypeError):
        parse_retry_after("5", NOW)  # type: ignore[misc]


# -- properties -------------------------------------------------------------------------------


@settings(max_examples=1000, deadline=None)
@given(value=st.text(), now=st.floats(min_value=0, max_value=4e9))
def test_any_text_never_raises(value: str, now: float) -> None:
    """Any text at all gives None or a non-negative number; it never raises."""
    result = parse_retry_after(value, now=now)
    assert result is None or (isinstance(result, float) and result >= 0.0)


@settings(max_examples=500, deadline=None)
@given(value=st.binary())
def test_any_bytes_never_raise(value: bytes) -> None:
    """Any bytes at all give None or a non-negative number; they never raise."""
    result = parse_retry_after(value, now=NOW)
    assert result is None or result >= 0.0


_DAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun", "Monday", "Xyz", ""]
_MONTHS = ["Jan", "Feb", "Oct", "Dec", "Foo", ""]
_ZONES = ["GMT", "UTC", "+0000", "-0000", "+2400", "-9999", "EST", "Z", "", "gmt"]


@settings(max_examples=1000, deadline=None)
@given(
    day=st.sampled_from(_DAYS),
    sep=st.sampled_from([", ", " ", ","]),
    date=st.integers(-5, 99),
    month=st.sampled_from(_MONTHS),
    year=st.integers(-1, 10**6),
    hour=st.integers(-1, 99),
    minute=st.integers(-1, 99),
    second=st.integers(-1, 99),
    zone=st.sampled_from(_ZONES),
)
def test_date_like_text_never_raises(
    day: str, sep: str, date: int, month: str, year: int, hour: int, minute: int, second: int, zone: str
) -> None:
    """Near-miss dates (bad days, months, years, times and zones) never raise."""
    value = f"{day}{sep}{date:02d} {month} {year} {hour:02d}:{minute:02d}:{second:02d} {zone}"
    result = parse_retry_after(value, now=NOW)
    assert result is None or result >= 0.0


@settings(max_examples=300, deadline=None)
@given(seconds=st.integers(0, 10**12))
def test_delta_seconds_round_trip(seconds: int) -> None:
    """Every delta-seconds below 10**12 comes back as exactly that many seconds."""
    assert parse_retry_after(str(seconds), now=NOW) == float(seconds)


@settings(max_examples=300, deadline=None)
@given(offset=st.integers(-(10**9), 10**9))
def test_imf_fixdate_round_trip(offset: int) -> None:
    """An IMF-fixdate ``offset`` seconds from now gives max(0, offset)."""
    value = email.utils.formatdate(NOW + offset, usegmt=True)
    assert parse_retry_after(value, now=NOW) == pytest.approx(max(0.0, float(offset)))
