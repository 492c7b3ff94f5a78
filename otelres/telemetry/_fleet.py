"""Gauges of shared breaker state: is this process connected, how big is the fleet,
and where do its processes disagree.

Each process reports what its last sync saw (read at collection time, nothing on
the call path). Every process of a fleet reports the same fleet-wide figures, so
a query takes their ``max`` (``sum`` of ``connected`` counts the processes that
reach Redis). Nothing is reported while shared state is off.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from opentelemetry import metrics

from . import names

if TYPE_CHECKING:
    from collections.abc import Iterable

    from opentelemetry.metrics import CallbackOptions, Meter, Observation

    from otelres._fleet import Fleet

__all__ = ["register_fleet_gauges"]


def _observe_connected(options: CallbackOptions) -> Iterable[Observation]:
    fleet = _fleet_or_none()
    return [] if fleet is None else [metrics.Observation(1 if fleet.connected else 0)]


def _observe_processes(options: CallbackOptions) -> Iterable[Observation]:
    fleet = _fleet_or_none()
    if fleet is None or not fleet.connected:
        return []
    return [metrics.Observation(fleet.processes)]


def _observe_disagreeing(options: CallbackOptions) -> Iterable[Observation]:
    fleet = _fleet_or_none()
    if fleet is None or not fleet.connected:
        return []
    return [
        metrics.Observation(view.disagreeing, {names.ATTR_BREAKER: name})
        for name, view in list(fleet.views.items())
    ]


def _fleet_or_none() -> Fleet | None:
    # Not imported here: otelres._fleet loads only when shared state is turned on.
    module = sys.modules.get("otelres._fleet")
    return None if module is None else module.current()


def register_fleet_gauges(meter: Meter) -> None:
    """Create the shared-state gauges on ``meter`` (once per meter provider)."""
    meter.create_observable_gauge(
        names.SHARED_STATE_CONNECTED,
        [_observe_connected],
        unit="1",
        description="1 while this process's shared breaker state reaches Redis, 0 while it decides alone.",
    )
    meter.create_observable_gauge(
        names.SHARED_STATE_PROCESSES,
        [_observe_processes],
        unit="{process}",
        description="Live processes sharing breaker state, as this process's last sync saw them.",
    )
    meter.create_observable_gauge(
        names.SHARED_STATE_DISAGREEING,
        [_observe_disagreeing],
        unit="{process}",
        description="Live processes whose breaker is in another state than the fleet's.",
    )
