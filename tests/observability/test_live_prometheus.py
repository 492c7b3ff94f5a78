"""The live observability test: a real Prometheus (1 s scrapes, the shipped alert rules with only
OtelresCircuitOpen's ``for:`` shortened) scrapes a real instrumented workload with injected
failures, its breaker state shared on a real redis-server; every query of every panel of the
shipped dashboard must return data,
OtelresCircuitOpen must go pending then firing for the open breaker (never for the healthy one),
and a real Alertmanager must deliver it to a webhook receiver in the test.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from live_stack import (
    ALERT_RULES,
    BREAKER_LABEL,
    CIRCUIT_OPEN,
    DASHBOARD,
    DOWN,
    FLAKY,
    HEALTHY,
    JOB,
    SHARED,
    SHORT_FOR,
    WebhookReceiver,
    binary,
    circuit_open_rules,
    dashboard_queries,
    export_shipped,
    free_port,
    override_rules,
    poll,
    prometheus_api,
    shipped_rules,
    start_alertmanager,
    start_prometheus,
    start_workload,
    stopping,
    substitute,
)

from otelres.telemetry import names

if TYPE_CHECKING:
    from collections.abc import Iterator

# The store tests' real redis-server (tests/ is not a package): fails in CI when it is missing.
_STORE_HELPERS = str(Path(__file__).resolve().parent.parent / "store")
if _STORE_HELPERS not in sys.path:
    sys.path.append(_STORE_HELPERS)
store_servers: Any = importlib.import_module("store_servers")

P = names.PROMETHEUS
OUTCOME, REASON, STATE, TO = (
    attribute.replace(".", "_")
    for attribute in (names.ATTR_OUTCOME, names.ATTR_RETRY_REASON, names.ATTR_STATE, names.ATTR_TO_STATE)
)
#: How long the workload may take to make each piece of evidence appear.
DEADLINE = 45.0


@dataclasses.dataclass
class Stack:
    """The running stack: Prometheus's base URL, the webhook receiver and the rules loaded."""

    prometheus: str
    webhook: WebhookReceiver
    shipped: dict[str, Any]
    loaded: dict[str, Any]
    dashboard: dict[str, Any]

    def query(self, expr: str) -> dict[str, Any]:
        """An instant query's data (resultType and result)."""
        data: dict[str, Any] = prometheus_api(self.prometheus, "query", query=expr)
        return data

    def alerts(self) -> list[dict[str, Any]]:
        """Prometheus's active (pending or firing) alerts."""
        alerts: list[dict[str, Any]] = prometheus_api(self.prometheus, "alerts")["alerts"]
        return alerts


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Start the workload, Alertmanager with the webhook receiver, and Prometheus; stop them all after."""
    for candidates in (("prometheus",), ("promtool",), ("prometheus-alertmanager", "alertmanager")):
        binary(*candidates)
    folder = tmp_path_factory.mktemp("live")
    exported = export_shipped(folder / "exported")
    assert (exported / DASHBOARD).is_file(), f"{DASHBOARD} is missing"
    assert (exported / ALERT_RULES).is_file(), f"{ALERT_RULES} is missing"
    dashboard = json.loads((exported / DASHBOARD).read_text(encoding="utf-8"))
    shipped = shipped_rules(exported)
    loaded = override_rules(shipped)
    (folder / "redis").mkdir()
    port = free_port()
    with contextlib.ExitStack() as running:
        redis = running.enter_context(store_servers.RedisServer(folder / "redis"))
        shared_state = f"redis://127.0.0.1:{redis.port}/0"
        running.enter_context(
            stopping(start_workload(folder, port, shared_state=shared_state), terminate=False)
        )
        webhook = running.enter_context(WebhookReceiver())
        alertmanager, am_address = start_alertmanager(folder, webhook.url)
        running.enter_context(stopping(alertmanager))
        prometheus, base = start_prometheus(folder, loaded, f"127.0.0.1:{port}", am_address)
        running.enter_context(stopping(prometheus))
        yield Stack(base, webhook, shipped, loaded, dashboard)


def _breaker_alerts(alerts: list[dict[str, Any]], breaker: str) -> list[dict[str, Any]]:
    return [
        alert
        for alert in alerts
        if alert["labels"].get("alertname") == CIRCUIT_OPEN and alert["labels"].get(BREAKER_LABEL) == breaker
    ]


def test_the_rules_loaded_are_the_shipped_ones_with_a_shorter_for(stack: Stack) -> None:
    """Prometheus runs the shipped rules; only OtelresCircuitOpen's 1m/5m ``for:`` are shortened."""
    shipped, loaded = circuit_open_rules(stack.shipped), circuit_open_rules(stack.loaded)
    assert sorted(rule["for"] for rule in shipped) == ["1m", "5m"]
    assert [rule["for"] for rule in loaded] == [SHORT_FOR] * len(shipped)
    for before, after in zip(shipped, loaded, strict=True):
        assert after["expr"] == before["expr"]
        assert {k: v for k, v in after.items() if k != "for"} == {
            k: v for k, v in before.items() if k != "for"
        }
    others = [group for group in stack.shipped["groups"] if group.get("name") != "otelres"]
    assert [g for g in stack.loaded["groups"] if g.get("name") != "otelres"] == others
    # And Prometheus loaded them: group otelres, with the shortened duration.
    groups = prometheus_api(stack.prometheus, "rules")["groups"]
    active = {rule["name"]: rule for group in groups if group["name"] == "otelres" for rule in group["rules"]}
    assert CIRCUIT_OPEN in active, sorted(active)
    assert active[CIRCUIT_OPEN]["duration"] == 2


def test_prometheus_scrapes_every_series_with_the_injected_failures(stack: Stack) -> None:
    """Prometheus holds every otelres series, with each outcome, retry and suppression reason injected."""
    selector = f'job="{JOB}"'
    wanted = {
        (P[names.CALLS], OUTCOME): set(names.OUTCOMES),
        (P[names.RETRIES], REASON): {"connect", "timeout", "error", "result"},
        (P[names.RETRIES_SUPPRESSED], REASON): {"budget", "deadline", "circuit_open"},
        (P[names.CIRCUIT_STATE], BREAKER_LABEL): {HEALTHY, FLAKY, DOWN},
        (P[names.CIRCUIT_TRANSITIONS], TO): {"open", "half_open", "closed"},
        (f"{P[names.CALL_DURATION]}_bucket", BREAKER_LABEL): {HEALTHY, FLAKY, DOWN},
        (f"{P[names.RETRY_DELAY]}_bucket", BREAKER_LABEL): {HEALTHY, FLAKY},
    }
    missing: dict[str, set[str]] = {}

    def complete() -> bool:
        missing.clear()
        for (series, label), values in wanted.items():
            result = stack.query(f"group by ({label}) ({series}{{{selector}}})")["result"]
            lacking = values - {sample["metric"].get(label) for sample in result}
            if lacking:
                missing[f"{series} by {label}"] = lacking
        return not missing

    poll(complete, DEADLINE, lambda: f"every series with its labels (missing: {missing})")
    open_now = stack.query(f'{P[names.CIRCUIT_STATE]}{{{selector}, {STATE}="open"}} == 1')["result"]
    assert {sample["metric"][BREAKER_LABEL] for sample in open_now} >= {DOWN}
    closed = stack.query(f'{P[names.CIRCUIT_STATE]}{{{selector}, {STATE}="closed"}} == 1')["result"]
    assert HEALTHY in {sample["metric"][BREAKER_LABEL] for sample in closed}


def test_the_workload_shares_its_breaker_state_on_redis(stack: Stack) -> None:
    """The workload's process reaches Redis (connected 1), is a fleet of one, and the fleet knows
    SHARED's breaker, on which no process disagrees.
    """
    selector = f'job="{JOB}"'
    gauges = {
        P[names.SHARED_STATE_CONNECTED]: selector,
        P[names.SHARED_STATE_PROCESSES]: selector,
        P[names.SHARED_STATE_DISAGREEING]: f'{selector}, {BREAKER_LABEL}="{SHARED}"',
    }
    seen: dict[str, list[str]] = {}

    def reported() -> bool:
        for series, matchers in gauges.items():
            seen[series] = [sample["value"][1] for sample in stack.query(f"{series}{{{matchers}}}")["result"]]
        return seen == {
            P[names.SHARED_STATE_CONNECTED]: ["1"],
            P[names.SHARED_STATE_PROCESSES]: ["1"],
            P[names.SHARED_STATE_DISAGREEING]: ["0"],
        }

    poll(reported, DEADLINE, lambda: f"the shared-state gauges of a connected fleet of one (seen: {seen})")


def test_every_dashboard_query_returns_data(stack: Stack) -> None:
    """Every query of every panel of the dashboard returns a non-empty result from the live Prometheus."""
    queries = [(title, ref, substitute(expr)) for title, ref, expr in dashboard_queries(stack.dashboard)]
    assert queries, "the dashboard has no queries"
    empty = dict.fromkeys([(title, ref) for title, ref, _ in queries], "")

    def all_have_data() -> bool:
        for title, ref, expr in queries:
            if (title, ref) in empty:
                data = stack.query(expr)
                if data["resultType"] in ("scalar", "string") or data["result"]:
                    del empty[title, ref]
                else:
                    empty[title, ref] = expr
        return not empty

    try:
        poll(all_have_data, DEADLINE, "every dashboard query returning data", interval=0.5)
    except pytest.fail.Exception:
        lines = [f"- {title} [{ref}]: {expr}" for (title, ref), expr in empty.items()]
        pytest.fail("dashboard queries without data:\n" + "\n".join(lines))


def test_circuit_open_alert_goes_pending_then_firing(stack: Stack) -> None:
    """OtelresCircuitOpen goes pending, then firing, for the open breaker; never for the healthy one."""

    def firing() -> list[dict[str, Any]]:
        return [a for a in _breaker_alerts(stack.alerts(), DOWN) if a["state"] == "firing"]

    poll(firing, DEADLINE, f"{CIRCUIT_OPEN} firing for {DOWN}")
    # The rule's own history (Prometheus's ALERTS series): pending samples, then firing ones.
    history = stack.query(f'ALERTS{{alertname="{CIRCUIT_OPEN}", {BREAKER_LABEL}="{DOWN}"}}[5m]')["result"]
    first: dict[str, float] = {}
    for series in history:
        state, start = series["metric"]["alertstate"], min(float(t) for t, _ in series["values"])
        first[state] = min(first.get(state, start), start)
    assert set(first) == {"pending", "firing"}, history
    assert first["pending"] < first["firing"], first
    # The healthy breaker is closed throughout: no alert, pending or firing, ever.
    assert not _breaker_alerts(stack.alerts(), HEALTHY)
    healthy = stack.query(f'ALERTS{{alertname="{CIRCUIT_OPEN}", {BREAKER_LABEL}="{HEALTHY}"}}[5m]')
    assert healthy["result"] == []


def test_alertmanager_delivers_the_alert_to_the_webhook(stack: Stack) -> None:
    """Alertmanager delivers OtelresCircuitOpen for the open breaker to the test's webhook receiver."""

    def delivered() -> list[dict[str, Any]]:
        return [a for a in _breaker_alerts(stack.webhook.alerts(), DOWN) if a["status"] == "firing"]

    alerts = poll(delivered, DEADLINE, f"{CIRCUIT_OPEN} for {DOWN} delivered to the webhook")
    assert all(alert["annotations"].get("summary") for alert in alerts), alerts
    assert not _breaker_alerts(stack.webhook.alerts(), HEALTHY)
