"""The dashboard's row and the alert for the server middleware's concurrency limit, as
``otelres export`` writes them: what each panel queries, where the row sits, and what
OtelresLoadShedding watches. (tests/observability/test_live_prometheus.py runs the queries
against a real Prometheus scraping a workload that sheds.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from otelres.telemetry import names

if TYPE_CHECKING:
    from otelres._export import Exported

ROW = "Server concurrency limit"
PANELS = ("Requests shed", "Concurrency limit and requests in flight", "Shed requests by reason")
LIMIT = names.PROMETHEUS[names.SERVER_LIMIT]
IN_FLIGHT = names.PROMETHEUS[names.SERVER_IN_FLIGHT]
SHED = names.PROMETHEUS[names.SERVER_SHED]
REASON = names.ATTR_SHED_REASON.replace(".", "_")


def board(exported: Exported) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (exported.directory / "dashboards" / "otelres-overview.json").read_text(encoding="utf-8")
    )
    return data


def test_the_limit_row_holds_its_three_panels_above_the_shared_state_row(exported: Exported) -> None:
    """An expanded row, its panels below it and above the next row, side by side on the grid."""
    items = board(exported)["panels"]
    rows = [(index, item) for index, item in enumerate(items) if item["type"] == "row"]
    (start, row), (end, following) = rows
    assert (row["title"], row["collapsed"], row["panels"]) == (ROW, False, [])
    held = items[start + 1 : end]
    assert [panel["title"] for panel in held] == list(PANELS)
    assert {panel["gridPos"]["y"] for panel in held} == {row["gridPos"]["y"] + 1}
    assert sum(panel["gridPos"]["w"] for panel in held) == 24
    assert following["gridPos"]["y"] >= max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in held)


def test_the_limit_panels_query_the_limit_series_by_job(exported: Exported) -> None:
    """Sheds now (0 when none), the limit and in flight summed per job, sheds by reason."""
    queries = {
        panel["title"]: [target["expr"] for target in panel["targets"]]
        for panel in board(exported)["panels"]
        if panel["title"] in PANELS
    }
    job = '{job=~"$job"}'
    assert queries == {
        "Requests shed": [f"sum(rate({SHED}{job}[$__rate_interval])) or vector(0)"],
        "Concurrency limit and requests in flight": [
            f"sum by (job) ({LIMIT}{job})",
            f"sum by (job) ({IN_FLIGHT}{job})",
        ],
        "Shed requests by reason": [f"sum by ({REASON}) (rate({SHED}{job}[$__rate_interval]))"],
    }


def test_the_load_shedding_alert_watches_a_job_for_15_minutes(exported: Exported) -> None:
    """OtelresLoadShedding: any shedding per job, sustained for 15 minutes, a warning."""
    rules = yaml.safe_load((exported.directory / Path("prometheus", "otelres-alerts.yml")).read_text())
    (rule,) = [r for g in rules["groups"] for r in g["rules"] if r["alert"] == "OtelresLoadShedding"]
    assert rule["expr"] == f"sum by (job) (rate({SHED}[5m])) > 0"
    assert (rule["for"], rule["labels"]) == ("15m", {"severity": "warning"})
