"""Generate the otelres overview dashboard (Grafana 11.6 schema) with grafana-foundation-sdk.

Every metric and label name in a query comes from ``otelres.telemetry.names``, so the dashboard
cannot drift from the code. ``python dashboards/generate.py`` rewrites the shipped
``otelres/assets/dashboards/otelres-overview.json``; ``--check`` exits 1 if the checked-in file
differs from what would be written. The job and the Jaeger URL are tokens that
``python -m otelres export`` fills in.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from grafana_foundation_sdk.builders import common as common_builder
from grafana_foundation_sdk.builders import dashboard as dashboard_builder
from grafana_foundation_sdk.builders import prometheus, stat, statetimeline, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model

from otelres import _export
from otelres.telemetry import names

if TYPE_CHECKING:
    from grafana_foundation_sdk.cog.builder import Builder

#: The shipped copy, package data of otelres (``python -m otelres export`` writes it out).
OUTPUT = Path(__file__).resolve().parents[1] / "otelres" / "assets" / "dashboards" / "otelres-overview.json"
UID = "otelres-overview"
TITLE = "otelres overview"
#: Filled in by ``otelres export --jaeger-url`` (default http://localhost:16686).
JAEGER_URL_DEFAULT = _export.JAEGER_URL
#: The job selected when the dashboard opens: ``otelres export --job``.
JOB_DEFAULT = _export.JOB


def label(attribute: str) -> str:
    """The Prometheus label the OpenTelemetry exporter makes of an attribute name."""
    return attribute.replace(".", "_")


BREAKER = label(names.ATTR_BREAKER)
OUTCOME = label(names.ATTR_OUTCOME)
REASON = label(names.ATTR_RETRY_REASON)
STATE = label(names.ATTR_STATE)
FROM_STATE = label(names.ATTR_FROM_STATE)
TO_STATE = label(names.ATTR_TO_STATE)

CALLS = names.PROMETHEUS[names.CALLS]
DURATION_BUCKET = names.PROMETHEUS[names.CALL_DURATION] + "_bucket"
RETRIES = names.PROMETHEUS[names.RETRIES]
RETRIES_SUPPRESSED = names.PROMETHEUS[names.RETRIES_SUPPRESSED]
CIRCUIT_STATE = names.PROMETHEUS[names.CIRCUIT_STATE]
TRANSITIONS = names.PROMETHEUS[names.CIRCUIT_TRANSITIONS]
CONNECTED = names.PROMETHEUS[names.SHARED_STATE_CONNECTED]
FLEET_SIZE = names.PROMETHEUS[names.SHARED_STATE_PROCESSES]
DISAGREEING = names.PROMETHEUS[names.SHARED_STATE_DISAGREEING]
SERVER_LIMIT = names.PROMETHEUS[names.SERVER_LIMIT]
SERVER_IN_FLIGHT = names.PROMETHEUS[names.SERVER_IN_FLIGHT]
SERVER_SHED = names.PROMETHEUS[names.SERVER_SHED]
SHED_REASON = label(names.ATTR_SHED_REASON)
#: The series a process reports about itself, not about a breaker: they carry no breaker label.
PROCESS_SERIES = (CONNECTED, FLEET_SIZE, SERVER_LIMIT, SERVER_IN_FLIGHT, SERVER_SHED)

RATE = "[$__rate_interval]"

#: How each circuit state looks in the timeline, least to most severe: the timeline's value is the
#: state's position here, so that ``max`` over a breaker's replicas shows the worst of them.
STATE_COLORS = {
    "closed": "green",
    "disabled": "text",
    "half_open": "yellow",
    "open": "red",
    "forced_open": "purple",
}


def one_of(allowed: tuple[str, ...], *values: str) -> str:
    """A regex matching ``values``, each checked against the closed set it must come from."""
    unknown = [value for value in values if value not in allowed]
    if unknown:
        raise ValueError(f"{unknown} not in {allowed}")
    return "|".join(values)


def selector(metric: str, *matchers: str) -> str:
    """``metric{job=~"$job", otelres_breaker=~"$breaker", ...}``: every breaker's series is filtered
    by both.
    """
    if metric in PROCESS_SERIES:
        raise ValueError(f"{metric} has no breaker label: use job_selector()")
    return metric + "{" + ", ".join(['job=~"$job"', f'{BREAKER}=~"$breaker"', *matchers]) + "}"


def job_selector(metric: str, *matchers: str) -> str:
    """``metric{job=~"$job", ...}``: for the series a process reports about itself (PROCESS_SERIES).

    They carry no breaker label, so a breaker filter would match nothing once a breaker is picked.
    """
    if metric not in PROCESS_SERIES:
        raise ValueError(f"{metric} is a breaker's series: use selector()")
    return metric + "{" + ", ".join(['job=~"$job"', *matchers]) + "}"


def query(expr: str, legend: str, ref_id: str) -> prometheus.Dataquery:
    """A range query on the dashboard's datasource variable."""
    return (
        prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref_id).range().datasource(DATASOURCE)
    )


DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")


def jaeger_link() -> dashboard_builder.DashboardLink:
    """A data link from a breaker's series to its calls' spans in Jaeger, over the panel's time range."""
    # Jaeger's tags parameter is URL-encoded JSON: {"otelres.breaker":"<the series' breaker>"}.
    tags = "%7B%22" + names.ATTR_BREAKER + "%22%3A%22${__field.labels." + BREAKER + ":percentencode}%22%7D"
    url = (
        "${jaeger_url}/search?service=${__field.labels.job:percentencode}"
        f"&tags={tags}"
        "&lookback=custom&start=${__from}000&end=${__to}000&limit=20"
    )
    return (
        dashboard_builder.DashboardLink("Traces of ${__field.labels." + BREAKER + "} in Jaeger")
        .url(url)
        .target_blank(target_blank=True)
    )


def _label_variable(
    name: str, label: str, query: str, current: str | None = None
) -> dashboard_builder.QueryVariable:
    """A multi-select query variable over label values, with All meaning ``.*``; ``current`` (else
    All) is selected when the dashboard opens.
    """
    selected = (
        model.VariableOption(selected=True, text="All", value="$__all")
        if current is None
        else model.VariableOption(selected=True, text=[current], value=[current])
    )
    return (
        dashboard_builder.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(query)
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
        .multi(multi=True)
        .include_all(include_all=True)
        .all_value(".*")
        .current(selected)
    )


def variables() -> list[Builder[model.VariableModel]]:
    """Datasource, job, breaker (multi-select with All) and the Jaeger address."""
    datasource = dashboard_builder.DatasourceVariable("datasource").label("Data source").type("prometheus")
    job = _label_variable("job", "Job", f"label_values({CIRCUIT_STATE}, job)", JOB_DEFAULT)
    breaker = _label_variable(
        "breaker", "Breaker", f'label_values({CIRCUIT_STATE}{{job=~"$job"}}, {BREAKER})'
    )
    jaeger_url = (
        dashboard_builder.TextBoxVariable("jaeger_url")
        .label("Jaeger URL")
        .description("Where the breakers' data links open Jaeger's trace search.")
        .default_value(JAEGER_URL_DEFAULT)
        .current(model.VariableOption(selected=True, text=JAEGER_URL_DEFAULT, value=JAEGER_URL_DEFAULT))
    )
    return [datasource, job, breaker, jaeger_url]


def thresholds(*steps: tuple[float | None, str]) -> dashboard_builder.ThresholdsConfig:
    """Absolute thresholds, the first step's value being None (the base)."""
    return (
        dashboard_builder.ThresholdsConfig()
        .mode(model.ThresholdsMode.ABSOLUTE)
        .steps([model.Threshold(value=value, color=color) for value, color in steps])
    )


def legend() -> common_builder.VizLegendOptions:
    """A table legend below the graph with the last and the largest value."""
    return (
        common_builder.VizLegendOptions()
        .display_mode(common.LegendDisplayMode.TABLE)
        .placement(common.LegendPlacement.BOTTOM)
        .show_legend(show_legend=True)
        .calcs(["lastNotNull", "max"])
    )


def graph(title: str, description: str, unit: str) -> timeseries.Panel:
    """A time series panel with the defaults every graph here shares."""
    return (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .min(0)
        .fill_opacity(10)
        .show_points(common.VisibilityMode.NEVER)
        .legend(legend())
        .tooltip(common_builder.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI))
        .height(8)
        .span(12)
    )


def figure(title: str, description: str, *steps: tuple[float | None, str]) -> stat.Panel:
    """A stat panel: the last value, whole numbers, coloured by ``steps`` (see thresholds())."""
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .reduce_options(common_builder.ReduceDataOptions().calcs(["lastNotNull"]).values(values=False))
        .graph_mode(common.BigValueGraphMode.AREA)
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .thresholds(thresholds(*steps))
        .decimals(0)
        .height(6)
    )


def open_circuits() -> stat.Panel:
    """How many breakers are open (or forced open) now; 0, not "No data", when none is.

    Each process (a gunicorn or uvicorn worker, a pod) reports its own breaker: ``max by`` makes
    one breaker of a job open in any number of them one open circuit, counted once.
    """
    open_states = one_of(names.STATES, "open", "forced_open")
    is_open = selector(CIRCUIT_STATE, f'{STATE}=~"{open_states}"')
    expr = f"count(max by (job, {BREAKER}) ({is_open}) == 1) or vector(0)"
    return (
        figure(
            "Open circuits",
            "Breakers whose circuit is open or forced open now, in any process of the job.",
            (None, "green"),
            (1, "red"),
        )
        .with_target(query(expr, "open circuits", "A"))
        .span(6)
    )


def circuit_state() -> statetimeline.Panel:
    """Each breaker's state over time: a number per state (its severity), mapped back to the name."""
    if sorted(STATE_COLORS) != sorted(names.STATES):
        raise ValueError(f"STATE_COLORS {sorted(STATE_COLORS)} must cover names.STATES {names.STATES}")
    parts = [
        "(" + selector(CIRCUIT_STATE, f'{STATE}="{state}"') + f" == 1) * {code}"
        for code, state in enumerate(STATE_COLORS)
    ]
    expr = f"max by (job, {BREAKER}) (\n  " + "\n  or ".join(parts) + "\n)"
    mappings: list[model.ValueMapping] = [
        model.ValueMap(
            options={
                str(code): model.ValueMappingResult(text=state, color=STATE_COLORS[state], index=code)
                for code, state in enumerate(STATE_COLORS)
            }
        )
    ]
    return (
        statetimeline.Panel()
        .title("Circuit state")
        .description("Each breaker's circuit state over time. Click a breaker for its traces in Jaeger.")
        .datasource(DATASOURCE)
        .with_target(query(expr, "{{" + BREAKER + "}}", "A"))
        .mappings(mappings)
        .color_scheme(dashboard_builder.FieldColor().mode(model.FieldColorModeId.THRESHOLDS))
        .thresholds(thresholds((None, "green")))
        .show_value(common.VisibilityMode.NEVER)
        .merge_values(merge_values=True)
        .row_height(0.9)
        .fill_opacity(80)
        .line_width(0)
        .data_links([jaeger_link()])
        .height(6)
        .span(18)
    )


def calls_by_outcome() -> timeseries.Panel:
    """Calls per second by outcome (success, failure, rejected, fallback)."""
    expr = f"sum by ({OUTCOME}) (rate({selector(CALLS)}{RATE}))"
    return graph("Calls by outcome", "Logical calls per second, by outcome.", "ops").with_target(
        query(expr, "{{" + OUTCOME + "}}", "A")
    )


def failure_rate() -> timeseries.Panel:
    """The share of each breaker's calls that failed or were rejected."""
    bad = one_of(names.OUTCOMES, "failure", "rejected")
    by = f"sum by (job, {BREAKER})"
    failed = selector(CALLS, f'{OUTCOME}=~"{bad}"')
    expr = f"{by} (rate({failed}{RATE}))\n/\n{by} (rate({selector(CALLS)}{RATE}))"
    return (
        graph(
            "Failure rate by breaker",
            "Failed and rejected calls as a share of all calls, per breaker. Click a breaker for its traces.",
            "percentunit",
        )
        .max(1)
        .data_links([jaeger_link()])
        .with_target(query(expr, "{{" + BREAKER + "}}", "A"))
    )


def retries() -> timeseries.Panel:
    """Retries per second by reason."""
    expr = f"sum by ({REASON}) (rate({selector(RETRIES)}{RATE}))"
    return graph(
        "Retries per second by reason", "Retries scheduled per second, by reason.", "ops"
    ).with_target(query(expr, "{{" + REASON + "}}", "A"))


def suppressed_retries() -> timeseries.Panel:
    """Suppressed retries per second by reason (budget, deadline, ...)."""
    expr = f"sum by ({REASON}) (rate({selector(RETRIES_SUPPRESSED)}{RATE}))"
    return graph(
        "Suppressed retries by reason",
        "Retries that were due but not made (retry budget, deadline, not idempotent, ...), per second.",
        "ops",
    ).with_target(query(expr, "{{" + REASON + "}}", "A"))


def latency() -> timeseries.Panel:
    """p50, p95 and p99 of the calls that ran (rejections take no time and are left out)."""
    rejected = one_of(names.OUTCOMES, "rejected")
    ran = selector(DURATION_BUCKET, f'{OUTCOME}!="{rejected}"')
    buckets = f"sum by (le) (rate({ran}{RATE}))"
    panel = graph(
        "Call latency p50/p95/p99",
        "Duration of logical calls (all attempts and delays), without calls rejected by an open circuit.",
        "s",
    )
    for ref_id, quantile in (("A", "0.5"), ("B", "0.95"), ("C", "0.99")):
        percentile = "p" + quantile.removeprefix("0.").ljust(2, "0")
        panel = panel.with_target(query(f"histogram_quantile({quantile}, {buckets})", percentile, ref_id))
    return panel


def transitions() -> timeseries.Panel:
    """Circuit transitions per interval, by breaker and from/to state."""
    expr = f"sum by ({BREAKER}, {FROM_STATE}, {TO_STATE}) (increase({selector(TRANSITIONS)}{RATE}))"
    legend_format = "{{" + BREAKER + "}}: {{" + FROM_STATE + "}} → {{" + TO_STATE + "}}"
    return (
        graph("Transitions", "Circuit state transitions, by breaker and from/to state.", "short")
        .draw_style(common.GraphDrawStyle.BARS)
        .fill_opacity(60)
        .with_target(query(expr, legend_format, "A"))
    )


def rejected_calls() -> timeseries.Panel:
    """Calls per second rejected by an open circuit, by breaker."""
    rejected = one_of(names.OUTCOMES, "rejected")
    rejections = selector(CALLS, f'{OUTCOME}="{rejected}"')
    expr = f"sum by (job, {BREAKER}) (rate({rejections}{RATE}))"
    return (
        graph(
            "Rejected calls",
            "Calls per second rejected by an open circuit (no network attempt made), per breaker.",
            "ops",
        )
        .data_links([jaeger_link()])
        .with_target(query(expr, "{{" + BREAKER + "}}", "A"))
        .span(24)
    )


def limit_row() -> dashboard_builder.Row:
    """The row of the server middleware's concurrency limit (``ResilienceMiddleware(..., limit=...)``)."""
    return dashboard_builder.Row("Server concurrency limit")


def shedding_now() -> stat.Panel:
    """Requests shed per second now, by every process of the job; 0, not "No data", when none is."""
    expr = f"sum(rate({job_selector(SERVER_SHED)}{RATE})) or vector(0)"
    return (
        figure(
            "Requests shed",
            "Requests per second the server middleware answers with 503 because its concurrency limit "
            "is taken (0 when none). A burst is the limit keeping the admitted requests fast; shedding "
            "that lasts means the service or a dependency behind it lacks capacity.",
            (None, "green"),
            (0.001, "orange"),
        )
        .unit("reqps")
        .decimals(1)
        .with_target(query(expr, "shed", "A"))
        .span(6)
    )


def limit_and_in_flight() -> timeseries.Panel:
    """Per job, the concurrency limits of its processes (summed) and the requests in flight under them."""
    limit = f"sum by (job) ({job_selector(SERVER_LIMIT)})"
    in_flight = f"sum by (job) ({job_selector(SERVER_IN_FLIGHT)})"
    return (
        graph(
            "Concurrency limit and requests in flight",
            "Per job, the requests its processes' concurrency limits let in flight (summed: each process "
            "has its own) and the requests in flight under them. An adaptive limit falls when the latency "
            "it measures rises and grows back when it falls; in flight at the limit means requests are shed.",
            "short",
        )
        .decimals(0)
        .with_target(query(limit, "{{job}} limit", "A"))
        .with_target(query(in_flight, "{{job}} in flight", "B"))
        .span(9)
    )


def shed_by_reason() -> timeseries.Panel:
    """Requests shed per second, by reason (limit, critical)."""
    expr = f"sum by ({SHED_REASON}) (rate({job_selector(SERVER_SHED)}{RATE}))"
    return (
        graph(
            "Shed requests by reason",
            "Requests shed per second: limit, an ordinary request over the limit; critical, a request the "
            "application marks critical that found the limit and the headroom above it taken.",
            "reqps",
        )
        .with_target(query(expr, "{{" + SHED_REASON + "}}", "A"))
        .span(9)
    )


def shared_state_row() -> dashboard_builder.Row:
    """The row of the shared breaker state panels (``OTELRES_SHARED_STATE``), expanded."""
    return dashboard_builder.Row("Shared breaker state")


def processes_connected() -> stat.Panel:
    """Per job, the processes whose shared state reaches Redis: the sum of each one's 1 or 0."""
    expr = f"sum by (job) ({job_selector(CONNECTED)})"
    return (
        figure(
            "Processes connected",
            "Per job, processes whose shared breaker state reaches Redis now: they trip, probe and "
            "follow operators' commands as one fleet. No data: no process has shared state on.",
            (None, "red"),
            (1, "green"),
        )
        .with_target(query(expr, "{{job}}", "A"))
        .span(8)
    )


def processes_alone() -> stat.Panel:
    """Processes with shared state on that cannot reach Redis; 0, not "No data", when none."""
    alone = job_selector(CONNECTED) + " == 0"
    expr = f"count({alone}) or vector(0)"
    return (
        figure(
            "Processes deciding alone",
            "Processes with shared state on that cannot reach Redis: each trips and probes on its own "
            "calls only, and misses operators' force-open, disable and reset, until Redis is back.",
            (None, "green"),
            (1, "red"),
        )
        .with_target(query(expr, "deciding alone", "A"))
        .span(8)
    )


def fleet_size() -> stat.Panel:
    """Per job, the live processes sharing breaker state, as Redis counts them."""
    expr = f"max by (job) ({job_selector(FLEET_SIZE)})"
    return (
        figure(
            "Fleet size",
            "Per job, live processes sharing breaker state, as Redis counts them. Every process reports "
            "the same fleet-wide figure, so this is their max, not their sum. More than processes "
            "connected: some processes of the fleet are not scraped.",
            (None, "blue"),
        )
        .with_target(query(expr, "{{job}}", "A"))
        .span(8)
    )


def disagreeing() -> timeseries.Panel:
    """Per breaker, the live processes whose circuit is in another state than the fleet's."""
    expr = f"max by (job, {BREAKER}) ({selector(DISAGREEING)})"
    return (
        graph(
            "Processes disagreeing with the fleet",
            "Per breaker, live processes whose circuit is in another state than the fleet's (a half-open "
            "process probing for an open fleet agrees). Above 0 for an interval while a transition "
            "spreads; longer: a process does not follow the fleet (a reset or force-open in code acts "
            "on one process only). Every process reports the fleet-wide count, so this is their max, "
            "not their sum. Click a breaker for its traces.",
            "short",
        )
        .decimals(0)
        .line_interpolation(common.LineInterpolation.STEP_AFTER)
        .data_links([jaeger_link()])
        .with_target(query(expr, "{{" + BREAKER + "}}", "A"))
        .span(24)
    )


def build() -> model.Dashboard:
    """The overview dashboard."""
    board = (
        dashboard_builder.Dashboard(TITLE)
        .uid(UID)
        .description("Circuit breakers and retries of services instrumented with otelres.")
        .tags(["otelres", "resilience"])
        .editable()
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .time("now-1h", "now")
        .refresh("30s")
        .timezone("browser")
        .variables(variables())
        .annotation(
            dashboard_builder.AnnotationQuery()
            .name("Annotations & Alerts")
            .datasource(model.DataSourceRef(type_val="grafana", uid="-- Grafana --"))
            .enable(enable=True)
            .hide(hide=True)
            .icon_color("rgba(0, 211, 255, 1)")
            .type("dashboard")
            .built_in(1)
        )
        .link(
            dashboard_builder.DashboardLink("Jaeger")
            .url("${jaeger_url}")
            .icon("external link")
            .target_blank(target_blank=True)
        )
    )
    panels = (
        open_circuits(),
        circuit_state(),
        calls_by_outcome(),
        failure_rate(),
        retries(),
        suppressed_retries(),
        latency(),
        transitions(),
        rejected_calls(),
        limit_row(),
        shedding_now(),
        limit_and_in_flight(),
        shed_by_reason(),
        shared_state_row(),
        processes_connected(),
        processes_alone(),
        fleet_size(),
        disagreeing(),
    )
    for panel_id, panel in enumerate(panels, start=1):
        if isinstance(panel, dashboard_builder.Row):
            board = board.with_row(panel.id(panel_id))
        else:
            board = board.with_panel(panel.id(panel_id))
    return board.build()


def render() -> str:
    """The dashboard as JSON: sorted keys, two-space indent, trailing newline."""
    return json.dumps(build(), cls=JSONEncoder, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the JSON, or with --check report whether the checked-in file is stale."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the checked-in JSON differs")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else None
        if current != text:
            print(f"{OUTPUT.name} is stale: run python dashboards/generate.py", file=sys.stderr)
            return 1
        print(f"{OUTPUT.name} is up to date")
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
