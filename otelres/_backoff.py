"""Pure delay arithmetic: backoff with jitter, and ``Retry-After`` parsing.

Nothing here sleeps, reads a clock or keeps state: every function takes what it
needs (the retry number, the random source, "now") so that the bounds and the
distribution can be tested directly.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["JITTER_MODES", "Jitter", "backoff_delay", "parse_retry_after"]

Jitter = Literal["full", "equal", "decorrelated", "none"]
JITTER_MODES: tuple[str, ...] = ("full", "equal", "decorrelated", "none")

# RFC 9110 section 5.6.7: asctime-date = day-name SP month SP ( 2DIGIT / ( SP DIGIT ) ) SP time SP year
_ASCTIME = re.compile(r"[A-Z][a-z]{2} [A-Z][a-z]{2} [ 0-9][0-9] [0-9]{2}:[0-9]{2}:[0-9]{2} [0-9]{4}")

# 2.0 ** 1023 is the largest power of two a float holds; past it the ceiling
# is the cap anyway, so the exponent is clamped well before an OverflowError.
_MAX_EXPONENT = 1000


def _ceiling(retry: int, base: float, cap: float) -> float:
    """``min(cap, base * 2 ** (retry - 1))`` without overflowing for huge ``retry``."""
    exponent = min(max(retry - 1, 0), _MAX_EXPONENT)
    return min(cap, base * math.ldexp(1.0, exponent))


def backoff_delay(
    mode: Jitter,
    retry: int,
    base: float,
    cap: float,
    random: Callable[[], float],
    previous: float = 0.0,
) -> float:
    """The delay before retry number ``retry`` (1 for the first retry).

    - ``full``: U(0, min(cap, base * 2^(n-1))) — the AWS "full jitter".
    - ``equal``: half the ceiling plus U(0, half the ceiling).
    - ``decorrelated``: min(cap, U(base, 3 * previous)), ``previous`` being the
      last delay (``base`` before the first retry).
    - ``none``: the ceiling itself, for tests and fixed schedules.

    ``random`` returns a float in [0, 1); the result is always in [0, cap].
    """
    if mode == "full":
        return random() * _ceiling(retry, base, cap)
    if mode == "equal":
        half = _ceiling(retry, base, cap) / 2.0
        return half + random() * half
    if mode == "decorrelated":
        high = max(base, 3.0 * (previous if previous > 0 else base))
        return min(cap, base + random() * (high - base))
    return _ceiling(retry, base, cap)


def parse_retry_after(value: str | bytes | None, *, now: float) -> float | None:
    """Seconds to wait according to a ``Retry-After`` header value, or ``None``.

    Accepts delta-seconds (``"120"``) and an HTTP-date in any of the three forms
    RFC 9110 requires a recipient to accept (IMF-fixdate
    ``"Wed, 21 Oct 2015 07:28:00 GMT"``, RFC 850, asctime; all GMT by
    definition), ``now`` being the wall clock in seconds since the epoch. A date
    in the past gives 0.0, and a number of seconds too large to matter gives
    ``math.inf`` (which any cap refuses). Anything else — negative or fractional
    numbers, garbage — gives ``None``: a malformed header is ignored, never
    raised. Capping is the caller's business (the policy knows the cap).
    """
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("latin-1")
        except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
            return None
    text = value.strip()
    if not text:
        return None
    if text.isascii() and text.isdigit():
        # RFC 9110: delta-seconds = 1*DIGIT. A 400-digit number is still an int;
        # float() of it would overflow, so compare before converting.
        seconds = int(text)
        return float(seconds) if seconds < 10**15 else math.inf
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        # Only asctime() is GMT without saying so; another date without a zone
        # (or with RFC 5322's "-0000", local time unknown) is not an HTTP-date.
        if not _ASCTIME.fullmatch(text):
            return None
        when = when.replace(tzinfo=dt.timezone.utc)
    try:
        return max(0.0, when.timestamp() - now)
    except (OverflowError, OSError, ValueError):  # pragma: no cover - platform limits
        return None
