"""The overview dashboard: generated from code, checked in (otelres/assets, with tokens for the job
and the Jaeger URL), and, as ``otelres export`` writes it, querying only otelres's series.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

# Imported, not importorskip'd: without grafana-foundation-sdk these tests fail, never skip.
import grafana_foundation_sdk  # noqa: F401
import pytest

from otelres.telemetry import names

ROOT = Path(__file__).resolve().parents[2]
GENERATOR = ROOT / "dashboards" / "generate.py"
CHECKED_IN = ROOT / "otelres" / "assets" / "dashboards" / "otelres-overview.json"
EXPORTED = Path("dashboards", "otelres-overview.json")

HISTOGRAMS = (names.CALL_DURATION, names.RETRY_DELAY)
SERIES = set(names.PROMETHEUS.values()) | {
    names.PROMETHEUS[h] + suffix for h in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")
}
BREAKER = names.ATTR_BREAKER.replace(".", "_")
#: The series a process reports about itself: no breaker label, so the only ones not filtered by it.
PROCESS_SERIES = {
    names.PROMETHEUS[names.SHARED_STATE_CONNECTED],
    names.PROMETHEUS[names.SHARED_STATE_PROCESSES],
    names.PROMETHEUS[names.SERVER_LIMIT],
    names.PROMETHEUS[names.SERVER_IN_FLIGHT],
    names.PROMETHEUS[names.SERVER_SHED],
}

EXPECTED_PANELS = {
    "Open circuits": "stat",
    "Circuit state": "state-timeline",
    "Calls by outcome": "timeseries",
    "Failure rate by breaker": "timeseries",
    "Retries per second by reason": "timeseries",
    "Suppressed retries by reason": "timeseries",
    "Call latency p50/p95/p99": "timeseries",
    "Transitions": "timeseries",
    "Rejected calls": "timeseries",
    "Requests shed": "stat",
    "Concurrency limit and requests in flight": "timeseries",
    "Shed requests by reason": "timeseries",
    "Processes connected": "stat",
    "Processes deciding alone": "stat",
    "Fleet size": "stat",
    "Processes disagreeing with the fleet": "timeseries",
}
#: The row of the server's concurrency limit (above the shared state's; tests/observability/
#: test_limit_dashboard.py checks what it holds).
LIMIT_ROW = "Server concurrency limit"
#: The row of the shared breaker state panels, and what it holds (below it, expanded).
SHARED_STATE_ROW = "Shared breaker state"
SHARED_STATE_PANELS = (
    "Processes connected",
    "Processes deciding alone",
    "Fleet size",
    "Processes disagreeing with the fleet",
)

# A vector selector: a metric name followed by its {matchers}.
SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
# Label lists of by/without/on/ignoring/group_left/group_right, which name labels, not series.
LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
IDENTIFIER = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def load_generator():
    spec = importlib.util.spec_from_file_location("otelres_dashboard_generate", GENERATOR)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def board(exported) -> dict:
    """The dashboard as exported (see conftest.py: defaults, and every option set)."""
    return json.loads((exported.directory / EXPORTED).read_text(encoding="utf-8"))


def panels(board: dict) -> list[dict]:
    return [panel for panel in board["panels"] if panel["type"] != "row"]


def exprs(board: dict) -> list[tuple[str, str]]:
    return [(panel["title"], target["expr"]) for panel in panels(board) for target in panel["targets"]]


def test_regenerating_gives_the_checked_in_file_byte_for_byte():
    """generate.render() is exactly the checked-in JSON, with sorted keys and a trailing newline."""
    text = load_generator().render()
    assert text == CHECKED_IN.read_text(encoding="utf-8")
    assert text.endswith("}\n")
    assert text == json.dumps(json.loads(text), sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def test_generate_check_exits_0_when_current_and_1_when_stale(tmp_path):
    """`generate.py --check` accepts the checked-in file and rejects a changed one without rewriting it."""
    ok = subprocess.run([sys.executable, GENERATOR, "--check"], capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    module = load_generator()
    stale = tmp_path / "otelres-overview.json"
    stale.write_text(CHECKED_IN.read_text(encoding="utf-8").replace("Open circuits", "Closed circuits"))
    module.OUTPUT = stale
    assert module.main(["--check"]) == 1
    assert "Closed circuits" in stale.read_text(encoding="utf-8")
    assert module.main([]) == 0
    assert module.main(["--check"]) == 0
    assert stale.read_bytes() == CHECKED_IN.read_bytes()


def test_dashboard_has_the_uid_and_a_grafana_11_6_schema(board):
    """uid otelres-overview, schemaVersion 41 (Grafana 11.6), built-in annotations kept."""
    assert board["uid"] == "otelres-overview"
    assert board["schemaVersion"] == 41
    assert board["title"]
    assert any(a.get("builtIn") == 1 for a in board["annotations"]["list"])


def test_template_variables_are_datasource_job_breaker_and_jaeger_url(board, exported):
    """datasource (prometheus); job, breaker: label_values on an otelres series; breaker multi with All;
    the exported job selected first, the exported Jaeger URL the default.
    """
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert list(variables) == ["datasource", "job", "breaker", "jaeger_url"]
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name, label in (("job", "job"), ("breaker", BREAKER)):
        variable = variables[name]
        assert variable["type"] == "query"
        assert variable["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        match = re.fullmatch(r"label_values\((\w+)(\{[^}]*\})?, (\w+)\)", variable["query"])
        assert match, variable["query"]
        assert match.group(1) in SERIES
        assert match.group(3) == label
        assert variable["includeAll"] is True
    assert variables["breaker"]["multi"] is True
    assert 'job=~"$job"' in variables["breaker"]["query"]
    assert variables["job"]["current"]["value"] == [exported.job]
    assert variables["breaker"]["current"]["value"] == "$__all"
    jaeger = variables["jaeger_url"]
    assert jaeger["type"] in {"textbox", "constant"}
    assert jaeger["query"] == exported.jaeger_url
    assert jaeger["current"]["value"] == exported.jaeger_url
    assert not exported.jaeger_url.endswith("/")  # the links append /search


def test_expected_panels_exist_with_their_types(board):
    """Every panel of the overview is there, once, with the right visualization and a query."""
    titles = [panel["title"] for panel in panels(board)]
    assert sorted(titles) == sorted(EXPECTED_PANELS)
    for panel in panels(board):
        assert panel["type"] == EXPECTED_PANELS[panel["title"]]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])


def test_panels_do_not_overlap_on_the_grid(board):
    """Each panel has its own cells of the 24-column grid."""
    taken: set[tuple[int, int]] = set()
    for panel in panels(board):
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24
        columns = range(pos["x"], pos["x"] + pos["w"])
        cells = {(x, y) for x in columns for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & taken, panel["title"]
        taken |= cells


def test_every_query_selects_only_otelres_series_filtered_by_job_and_breaker(board):
    """Each selector names a series of names.PROMETHEUS and matches job=~"$job" and the breaker variable;
    only the two process series (no breaker label) match job alone.
    """
    assert exprs(board)
    for title, expr in exprs(board):
        selectors = SELECTOR.findall(expr)
        assert selectors, (title, expr)
        for metric, matchers in selectors:
            assert metric in SERIES, (title, metric)
            assert 'job=~"$job"' in matchers, (title, expr)
            if metric in PROCESS_SERIES:
                # A breaker filter on a series without the label would match nothing once one is picked.
                assert BREAKER not in matchers, (title, expr)
            else:
                assert f'{BREAKER}=~"$breaker"' in matchers, (title, expr)
        # No bare metric name outside a selector (it would escape the job/breaker filter).
        rest = LABEL_LIST.sub("", SELECTOR.sub("", re.sub(r"\[[^\]]*\]", "", expr)))
        stray = [word for word in IDENTIFIER.findall(rest) if word.startswith("otelres")]
        assert not stray, (title, stray)
        # Only the macros the live test substitutes.
        assert set(re.findall(r"\$\{?(\w+)", expr)) <= {"job", "breaker", "__rate_interval", "__interval"}


def test_queries_use_only_label_names_and_values_otelres_emits(board):
    """Label names in matchers and groupings come from names (dots → underscores); values from closed sets."""
    attrs = [getattr(names, a) for a in names.__all__ if a.startswith("ATTR_")]
    labels = {a.replace(".", "_") for a in attrs} | {"job", "le"}
    values = {
        "otelres_outcome": set(names.OUTCOMES),
        "otelres_state": set(names.STATES),
    }
    for title, expr in exprs(board):
        for _, matchers in SELECTOR.findall(expr):
            for name, value in re.findall(r'(\w+)\s*(?:=~|!~|!=|=)\s*"([^"]*)"', matchers):
                assert name in labels, (title, name)
                if name in values:
                    assert set(value.split("|")) <= values[name], (title, name, value)
        for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
            assert {g.strip() for g in group.split(",")} <= labels, (title, group)


def test_shared_state_panels_sit_in_their_row(board):
    """An expanded "Shared breaker state" row, below every other panel, with the fleet's panels under it."""
    rows = [panel for panel in board["panels"] if panel["type"] == "row"]
    assert [row["title"] for row in rows] == [LIMIT_ROW, SHARED_STATE_ROW]
    row = rows[-1]
    assert row["collapsed"] is False
    assert row["panels"] == []
    assert row["gridPos"]["w"] == 24
    below = [p["title"] for p in panels(board) if p["gridPos"]["y"] > row["gridPos"]["y"]]
    above = [p for p in panels(board) if p["title"] not in below]
    assert sorted(below) == sorted(SHARED_STATE_PANELS)
    assert all(p["gridPos"]["y"] + p["gridPos"]["h"] <= row["gridPos"]["y"] for p in above)
    ids = [panel["id"] for panel in board["panels"]]
    assert sorted(ids) == list(range(1, len(ids) + 1))


def test_shared_state_panels_count_processes_once(board):
    """connected is summed (each process reports 1 or 0); fleet-wide figures, which every process
    reports alike, are maxed; deciding alone shows 0, not "No data", when none is.
    """
    connected = names.PROMETHEUS[names.SHARED_STATE_CONNECTED]
    fleet = names.PROMETHEUS[names.SHARED_STATE_PROCESSES]
    disagreeing = names.PROMETHEUS[names.SHARED_STATE_DISAGREEING]
    queries = {title: expr for title, expr in exprs(board) if title in SHARED_STATE_PANELS}
    assert queries == {
        "Processes connected": f'sum by (job) ({connected}{{job=~"$job"}})',
        "Processes deciding alone": f'count({connected}{{job=~"$job"}} == 0) or vector(0)',
        "Fleet size": f'max by (job) ({fleet}{{job=~"$job"}})',
        "Processes disagreeing with the fleet": (
            f'max by (job, {BREAKER}) ({disagreeing}{{job=~"$job", {BREAKER}=~"$breaker"}})'
        ),
    }


def test_generator_refuses_a_breaker_filter_on_a_process_series_and_none_on_a_breakers():
    """selector() is for breakers' series, job_selector() for the process series only."""
    module = load_generator()
    for metric in PROCESS_SERIES:
        with pytest.raises(ValueError, match="no breaker label"):
            module.selector(metric)
        assert module.job_selector(metric) == metric + '{job=~"$job"}'
    for metric in SERIES - PROCESS_SERIES:
        with pytest.raises(ValueError, match="breaker's series"):
            module.job_selector(metric)


def test_circuit_state_maps_every_state_to_its_name(board):
    """The timeline's value mappings name every state of names.STATES, each matching the query's code."""
    panel = next(p for p in panels(board) if p["title"] == "Circuit state")
    (mapping,) = panel["fieldConfig"]["defaults"]["mappings"]
    texts = {code: result["text"] for code, result in mapping["options"].items()}
    assert sorted(texts.values()) == sorted(names.STATES)
    expr = panel["targets"][0]["expr"]
    for code, state in texts.items():
        assert f'otelres_state="{state}"}} == 1) * {code}' in expr


def test_latency_panel_has_p50_p95_p99_from_the_duration_histogram(board):
    """Three histogram_quantile queries over the call-duration buckets, by le."""
    panel = next(p for p in panels(board) if p["title"] == "Call latency p50/p95/p99")
    quantiles = [re.match(r"histogram_quantile\(([\d.]+),", t["expr"]).group(1) for t in panel["targets"]]
    assert quantiles == ["0.5", "0.95", "0.99"]
    bucket = names.PROMETHEUS[names.CALL_DURATION] + "_bucket"
    assert all("sum by (le) (rate(" + bucket + "{" in t["expr"] for t in panel["targets"])


def test_breaker_panels_link_to_the_breakers_traces_in_jaeger(board):
    """Per-breaker panels carry a data link to Jaeger's search for the breaker's spans."""
    linked = {
        p["title"]: link["url"]
        for p in panels(board)
        for link in p["fieldConfig"]["defaults"].get("links", [])
    }
    assert {"Circuit state", "Failure rate by breaker", "Rejected calls"} <= set(linked)
    for url in linked.values():
        assert url.startswith("${jaeger_url}/search?")
        assert "service=${__field.labels.job" in url
        assert "%22otelres.breaker%22%3A%22${__field.labels.otelres_breaker:percentencode}%22" in url
