"""Metrics of the server middleware's concurrency limit: the limit, the requests in flight under
it, and the requests shed by reason.

Each is read from the process's live limiters at collection time (nothing on the request
path but the limiter's own counts). The gauges sum the process's limiters (a service has one
limited middleware, or a few whose sum is the process's capacity); nothing is reported while
no middleware has a limit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from opentelemetry import metrics

from otelres._limit import LIVE, SHED_REASONS, shed_total

from . import names

if TYPE_CHECKING:
    from collections.abc import Iterable

    from opentelemetry.metrics import CallbackOptions, Meter, Observation

    from otelres._limit import Limiter

__all__ = ["register_limit_instruments"]

#: The attribute set of each shed reason, built once.
_REASONS = {reason: {names.ATTR_SHED_REASON: reason} for reason in SHED_REASONS}


def _limiters() -> list[Limiter]:
    # Another thread may add a limiter while the set is copied: try again.
    for _ in range(10):
        try:
            return list(LIVE)
        except RuntimeError:
            continue
    return []


def _observe_limit(options: CallbackOptions) -> Iterable[Observation]:
    limiters = _limiters()
    return [metrics.Observation(sum(limiter.limit for limiter in limiters))] if limiters else []


def _observe_in_flight(options: CallbackOptions) -> Iterable[Observation]:
    limiters = _limiters()
    return [metrics.Observation(sum(limiter.in_flight for limiter in limiters))] if limiters else []


def _observe_shed(options: CallbackOptions) -> Iterable[Observation]:
    # The process's running totals, not a sum over the live limiters: a limiter collected after
    # shedding would take its sheds with it, and a counter must not go down.
    # Reported while the process has a limited middleware, as the gauges are.
    if not _limiters():
        return []
    totals = shed_total()
    return [metrics.Observation(count, _REASONS[reason]) for reason, count in totals.items()]


def register_limit_instruments(meter: Meter) -> None:
    """Create the limit's instruments on ``meter`` (once per meter provider: the call
    instruments' set, made once per provider, creates them with its own).
    """
    meter.create_observable_gauge(
        names.SERVER_LIMIT,
        [_observe_limit],
        unit="{request}",
        description="Requests the server middleware's concurrency limit lets in flight now.",
    )
    meter.create_observable_gauge(
        names.SERVER_IN_FLIGHT,
        [_observe_in_flight],
        unit="{request}",
        description="Requests in flight under the server middleware's concurrency limit.",
    )
    meter.create_observable_counter(
        names.SERVER_SHED,
        [_observe_shed],
        unit="{request}",
        description="Requests the server middleware shed with 503, by reason.",
    )
