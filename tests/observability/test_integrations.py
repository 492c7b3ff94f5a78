"""The alerting and stack files otelres ships (otelres/assets/), as ``otelres export`` writes them
for a user (with the default options and with every option set: the ``exported`` fixture):
Prometheus rules and their promtool tests, the example Prometheus and Alertmanager configs, Grafana
provisioning, compose and Kubernetes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from otelres.telemetry import names

if TYPE_CHECKING:
    from otelres._export import Exported

# Where each file is in the exported tree.
RULES = Path("prometheus", "otelres-alerts.yml")
RULES_TESTS = Path("prometheus", "otelres-alerts.test.yml")
PROMETHEUS_CONFIG = Path("prometheus", "prometheus.yml")
ALERTMANAGER_CONFIG = Path("alertmanager", "alertmanager.yml")
GRAFANA = Path("grafana", "provisioning")
GRAFANA_DATASOURCES = GRAFANA / "datasources" / "otelres.yml"
GRAFANA_DASHBOARDS = GRAFANA / "dashboards" / "otelres.yml"
GRAFANA_ALERTS = GRAFANA / "alerting" / "otelres-alerts.yml"
COMPOSE = Path("compose.yaml")
PROMETHEUS_RULE = Path("kubernetes", "prometheusrule.yaml")
DEPLOYMENT = Path("kubernetes", "deployment.yaml")
RUNBOOKS = Path("runbooks")

ALERTS = {
    "OtelresCircuitOpen",
    "OtelresCircuitFlapping",
    "OtelresRetryStorm",
    "OtelresRetryBudgetExhausted",
    "OtelresLoadShedding",
}
#: The alerts about a whole job (its server middleware), not about a breaker: they name the job.
JOB_ALERTS = {"OtelresLoadShedding"}
HISTOGRAMS = {names.PROMETHEUS[names.CALL_DURATION], names.PROMETHEUS[names.RETRY_DELAY]}
SERIES = set(names.PROMETHEUS.values()) | {f"{h}_{s}" for h in HISTOGRAMS for s in ("bucket", "sum", "count")}
LABELS = {getattr(names, attr).replace(".", "_") for attr in names.__all__ if attr.startswith("ATTR_")}
GRAFANA_EXPR_UID = "__expr__"
GRAFANA_EXPR_TYPES = {"math", "reduce", "resample", "classic_conditions", "threshold", "sql"}


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _rules(root: Path) -> list[dict[str, Any]]:
    return [rule for group in _load(root / RULES)["groups"] for rule in group["rules"]]


def _grafana_rules(root: Path) -> list[dict[str, Any]]:
    return [rule for group in _load(root / GRAFANA_ALERTS)["groups"] for rule in group["rules"]]


def _tool(name: str) -> str:
    """The path of a command-line tool the test needs: missing fails in CI, skips locally."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} not found (Debian: apt-get install prometheus prometheus-alertmanager)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def _run(*command: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def _metrics_in(expr: str) -> set[str]:
    """The otelres series an expression reads (labels and functions left out)."""
    tokens = set(re.findall(r"\botelres_[A-Za-z0-9_]*", expr))
    return tokens - LABELS


def _normalized(expr: str) -> str:
    return " ".join(expr.split())


def test_promtool_check_rules(root: Path) -> None:
    """`promtool check rules` accepts the shipped alert rules."""
    result = _run(_tool("promtool"), "check", "rules", str(root / RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 6 rules found" in result.stdout


def test_promtool_test_rules(root: Path) -> None:
    """`promtool test rules` passes the unit tests of every rule."""
    result = _run(_tool("promtool"), "test", "rules", str(root / RULES_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_check_config(root: Path, tmp_path: Path) -> None:
    """The example Prometheus config, with its rule file beside it, passes `promtool check config`."""
    shutil.copy(root / PROMETHEUS_CONFIG, tmp_path / "prometheus.yml")
    shutil.copy(root / RULES, tmp_path / RULES.name)
    config = _load(root / PROMETHEUS_CONFIG)
    assert config["rule_files"] == [RULES.name]
    result = _run(_tool("promtool"), "check", "config", "prometheus.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout + result.stderr


def test_prometheus_config_scrapes_the_demo_and_alerts_to_alertmanager(root: Path) -> None:
    """The example Prometheus config scrapes the compose demo and sends alerts to alertmanager:9093."""
    config = _load(root / PROMETHEUS_CONFIG)
    targets = [t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert any(t.startswith("demo:") for t in targets)
    managers = [
        t for am in config["alerting"]["alertmanagers"] for sc in am["static_configs"] for t in sc["targets"]
    ]
    assert managers == ["alertmanager:9093"]


def test_amtool_check_config(root: Path) -> None:
    """The example Alertmanager config passes `amtool check-config` and has a webhook receiver."""
    result = _run(_tool("amtool"), "check-config", str(root / ALERTMANAGER_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    receivers = _load(root / ALERTMANAGER_CONFIG)["receivers"]
    assert any(r.get("webhook_configs") for r in receivers)


def test_rules_are_the_four_alerts_in_group_otelres(root: Path) -> None:
    """Group `otelres` holds the five alerts; OtelresCircuitOpen is warning at 1m, critical at 5m."""
    groups = _load(root / RULES)["groups"]
    assert [g["name"] for g in groups] == ["otelres"]
    rules = _rules(root)
    assert {r["alert"] for r in rules} == ALERTS
    open_rules = {r["labels"]["severity"]: r["for"] for r in rules if r["alert"] == "OtelresCircuitOpen"}
    assert open_rules == {"warning": "1m", "critical": "5m"}
    for rule in rules:
        if rule["alert"] == "OtelresCircuitOpen":
            assert 'otelres_state=~"open|forced_open"' in rule["expr"]


def test_every_alert_has_severity_annotations_and_an_existing_runbook(exported: Exported) -> None:
    """Every rule has a severity, a summary, a description naming the breaker (the job, for the
    alerts about a job) and a runbook that exists among the exported ones, linked by an absolute
    URL under the runbook base.
    """
    root = exported.directory
    for rule in _rules(root):
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        annotations = rule["annotations"]
        assert annotations["summary"].strip(), name
        named = "{{ $labels.job }}" if name in JOB_ALERTS else "{{ $labels.otelres_breaker }}"
        assert named in annotations["description"], name
        runbook = annotations["runbook_url"]
        assert runbook == f"{exported.runbook_base}{name}.md", name
        assert urllib.parse.urlsplit(runbook).scheme in {"file", "http", "https"}, runbook
        page = root / RUNBOOKS / f"{name}.md"
        assert page.is_file(), f"{name}: {page} does not exist"
        if runbook.startswith("file:"):  # the default: the exported page itself
            assert Path(urllib.request.url2pathname(urllib.parse.urlsplit(runbook).path)) == page.resolve()
        text = page.read_text()
        assert text.startswith(f"# {name}\n"), runbook
        for section in ("## What it means", "## How to check", "## What to do"):
            assert section in text, f"{runbook} lacks {section}"


def test_rules_read_only_otelres_series(root: Path) -> None:
    """The rule expressions read only series of names.PROMETHEUS."""
    for rule in _rules(root):
        used = _metrics_in(rule["expr"])
        assert used, rule["alert"]
        assert used <= SERIES, f"{rule['alert']}: unknown series {used - SERIES}"


def test_rule_tests_cover_every_alert_firing_and_not_firing(root: Path) -> None:
    """The promtool tests check every alert both firing and not firing, on exact otelres series."""
    tests = _load(root / RULES_TESTS)
    assert tests["rule_files"] == [RULES.name]
    firing: set[str] = set()
    silent: set[str] = set()
    for case in tests["tests"]:
        for series in case["input_series"]:
            metric = series["series"].split("{", 1)[0]
            assert metric in SERIES, metric
            labels = set(re.findall(r"(\w+)=", series["series"]))
            assert labels <= LABELS | {"job", "instance"}, labels  # Prometheus adds job and instance
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    assert firing == ALERTS
    assert silent == ALERTS
    severities = {
        alert["exp_labels"]["severity"]
        for case in tests["tests"]
        for check in case.get("alert_rule_test", [])
        if check["alertname"] == "OtelresCircuitOpen"
        for alert in check.get("exp_alerts") or []
    }
    assert severities == {"warning", "critical"}


def test_prometheusrule_groups_equal_the_rules_file(root: Path) -> None:
    """The Kubernetes PrometheusRule carries exactly the groups of otelres-alerts.yml."""
    resource = _load(root / PROMETHEUS_RULE)
    assert resource["apiVersion"] == "monitoring.coreos.com/v1"
    assert resource["kind"] == "PrometheusRule"
    assert resource["metadata"]["name"]
    assert resource["spec"]["groups"] == _load(root / RULES)["groups"]


def test_kubernetes_deployment_probes(root: Path) -> None:
    """The Deployment example probes liveness on /livez and readiness on /readyz."""
    documents = [d for d in yaml.safe_load_all((root / DEPLOYMENT).read_text()) if d]
    deployments = [d for d in documents if d["kind"] == "Deployment"]
    assert len(deployments) == 1
    deployment = deployments[0]
    assert deployment["apiVersion"] == "apps/v1"
    spec = deployment["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    (container,) = spec["template"]["spec"]["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    ports = {p["name"] for p in container["ports"]}
    assert container["livenessProbe"]["httpGet"]["port"] in ports
    assert container["readinessProbe"]["httpGet"]["port"] in ports
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["OTEL_EXPORTER_PROMETHEUS_HOST"] == "0.0.0.0"  # noqa: S104 - a pod must be scraped
    # The PodMonitor scrapes every metrics port, under the job the pod's service name is (jobLabel).
    (monitor,) = [d for d in documents if d["kind"] == "PodMonitor"]
    pod_labels = spec["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pod_labels[monitor["spec"]["jobLabel"]] == env["OTEL_SERVICE_NAME"]
    scraped = {endpoint["port"] for endpoint in monitor["spec"]["podMetricsEndpoints"]}
    assert scraped == {name for name in ports if name.startswith("metrics-")}
    assert len(scraped) == int(env["OTELRES_PROMETHEUS_PORTS"])
    for document in documents:
        name = document["metadata"]["name"]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", name), name  # an RFC 1123 label


def test_grafana_datasources(root: Path) -> None:
    """The datasources file provisions Prometheus (uid prometheus) and Jaeger (uid jaeger)."""
    provisioning = _load(root / GRAFANA_DATASOURCES)
    assert provisioning["apiVersion"] == 1
    by_uid = {d["uid"]: d for d in provisioning["datasources"]}
    assert by_uid.keys() == {"prometheus", "jaeger"}
    assert (by_uid["prometheus"]["type"], by_uid["prometheus"]["url"]) == (
        "prometheus",
        "http://prometheus:9090",
    )
    assert (by_uid["jaeger"]["type"], by_uid["jaeger"]["url"]) == ("jaeger", "http://jaeger:16686")
    for source in provisioning["datasources"]:
        assert source["name"]
        assert source["access"] == "proxy"


def test_grafana_dashboard_provider_reads_the_compose_mount(root: Path) -> None:
    """The dashboard provider is a file provider on the directory compose mounts ./dashboards at."""
    provisioning = _load(root / GRAFANA_DASHBOARDS)
    assert provisioning["apiVersion"] == 1
    (provider,) = provisioning["providers"]
    assert provider["type"] == "file"
    assert provider["name"]
    path = provider["options"]["path"]
    mounts = _load(root / COMPOSE)["services"]["grafana"]["volumes"]
    assert f"./dashboards:{path}:ro" in mounts


def test_grafana_alert_rules_follow_the_provisioning_format(root: Path) -> None:
    """Each Grafana alert rule has the keys provisioning requires; its condition is a refId of its data."""
    provisioning = _load(root / GRAFANA_ALERTS)
    assert provisioning["apiVersion"] == 1
    uids: list[str] = []
    titles: list[str] = []
    for group in provisioning["groups"]:
        assert {"orgId", "name", "folder", "interval", "rules"} <= group.keys()
        assert re.fullmatch(r"\d+[smh]", group["interval"])
        for rule in group["rules"]:
            assert {"uid", "title", "condition", "data", "for", "labels", "annotations"} <= rule.keys()
            assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", rule["uid"]), rule["uid"]
            assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["title"]
            uids.append(rule["uid"])
            titles.append(rule["title"])
            refs = [query["refId"] for query in rule["data"]]
            assert len(refs) == len(set(refs)), rule["title"]
            assert rule["condition"] in refs, rule["title"]
            for query in rule["data"]:
                assert {"refId", "datasourceUid", "model"} <= query.keys()
                assert query["model"]["refId"] == query["refId"]
                if query["datasourceUid"] == GRAFANA_EXPR_UID:
                    assert query["model"]["type"] in GRAFANA_EXPR_TYPES
                    assert query["model"]["expression"].lstrip("$") in refs
                else:
                    assert {"from", "to"} <= query["relativeTimeRange"].keys()
                    assert query["relativeTimeRange"]["from"] > query["relativeTimeRange"]["to"]
                    assert query["model"]["expr"]
            condition = next(q for q in rule["data"] if q["refId"] == rule["condition"])
            assert condition["datasourceUid"] == GRAFANA_EXPR_UID
            assert condition["model"]["type"] in {"math", "threshold"}
    assert len(uids) == len(set(uids))
    assert len(titles) == len(set(titles))


def test_grafana_alert_rules_use_provisioned_datasources(root: Path) -> None:
    """Every datasource uid the Grafana alert rules query is provisioned (or is Grafana's expressions)."""
    provisioned = {d["uid"] for d in _load(root / GRAFANA_DATASOURCES)["datasources"]}
    used = {query["datasourceUid"] for rule in _grafana_rules(root) for query in rule["data"]}
    assert "prometheus" in used
    assert used <= provisioned | {GRAFANA_EXPR_UID}, used - provisioned


def test_grafana_alert_queries_read_only_otelres_series(root: Path) -> None:
    """The Grafana alert rules' Prometheus queries read only series of names.PROMETHEUS."""
    for rule in _grafana_rules(root):
        for query in rule["data"]:
            if query["datasourceUid"] == GRAFANA_EXPR_UID:
                continue
            used = _metrics_in(query["model"]["expr"])
            assert used, rule["title"]
            assert used <= SERIES, f"{rule['title']}: unknown series {used - SERIES}"


def test_grafana_alert_rules_match_the_prometheus_rules(root: Path) -> None:
    """Each Prometheus rule has a Grafana rule with its query, threshold, `for`, severity and runbook."""
    grafana = _grafana_rules(root)
    for rule in _rules(root):
        expr = _normalized(rule["expr"])
        matches = [
            g
            for g in grafana
            if g["annotations"]["runbook_url"] == rule["annotations"]["runbook_url"]
            and g["for"] == rule["for"]
            and g["labels"]["severity"] == rule["labels"]["severity"]
        ]
        assert len(matches) == 1, (
            f"{rule['alert']} {rule['labels']['severity']}: {len(matches)} Grafana rules"
        )
        (match,) = matches
        assert match["title"].startswith(rule["alert"])
        (query,) = [q for q in match["data"] if q["datasourceUid"] == "prometheus"]
        promql = _normalized(query["model"]["expr"])
        assert expr.startswith(promql), (expr, promql)
        comparison = re.fullmatch(r"\s*(>|==)\s*([0-9.]+)", expr[len(promql) :])
        assert comparison, expr
        (threshold,) = [q for q in match["data"] if q["model"].get("type") == "threshold"]
        (condition,) = threshold["model"]["conditions"]
        evaluator = condition["evaluator"]
        operator, value = comparison.group(1), float(comparison.group(2))
        if operator == ">":
            assert evaluator == {"type": "gt", "params": [value]}
        else:  # `== 1` on a 0/1 gauge
            assert evaluator["type"] == "gt"
            assert 0 < evaluator["params"][0] < value
    assert len(grafana) == len(_rules(root))


def test_compose_defines_the_stack(root: Path) -> None:
    """compose.yaml defines jaeger, prometheus, alertmanager, grafana and demo with their ports."""
    services = _load(root / COMPOSE)["services"]
    assert services.keys() == {"jaeger", "prometheus", "alertmanager", "grafana", "demo"}

    def published(service: str) -> set[str]:
        return {str(p).split(":")[-1] for p in services[service].get("ports", [])}

    assert published("jaeger") == {"4317", "4318", "16686"}
    assert services["jaeger"]["image"].startswith("jaegertracing/all-in-one")
    assert services["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    assert published("prometheus") == {"9090"}
    assert published("alertmanager") == {"9093"}
    assert published("grafana") == {"3000"}
    grafana_env = services["grafana"]["environment"]
    assert grafana_env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert grafana_env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Admin"
    demo = services["demo"]
    assert demo["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"
    dockerfile = ((root / COMPOSE).parent / demo["build"]["context"] / demo["build"]["dockerfile"]).resolve()
    assert dockerfile.is_file()
    command = dockerfile.read_text()
    assert "otelres demo --prometheus-port 9464 --duration 3600" in command
    # Prometheus scrapes the port the demo container exposes
    scraped = {
        t.split(":")[1]
        for job in _load(root / PROMETHEUS_CONFIG)["scrape_configs"]
        for sc in job["static_configs"]
        for t in sc["targets"]
        if t.startswith("demo:")
    }
    assert scraped == {str(p) for p in demo["expose"]}
    assert f"TCP-LISTEN:{scraped.pop()}," in command
    # The demo's service name is its scrape job, as the dashboard's links to Jaeger expect.
    (demo_job,) = [
        job["job_name"]
        for job in _load(root / PROMETHEUS_CONFIG)["scrape_configs"]
        if any(t.startswith("demo:") for sc in job["static_configs"] for t in sc["targets"])
    ]
    assert demo["environment"]["OTEL_SERVICE_NAME"] == demo_job
    assert f'ENV OTEL_SERVICE_NAME="{demo_job}"' in command


def test_compose_mounts_exist_in_the_export(root: Path) -> None:
    """Every bind mount of compose.yaml exists in the exported tree and lands where the configs expect."""
    services = _load(root / COMPOSE)["services"]
    targets: dict[str, str] = {}
    for service in services.values():
        for volume in service.get("volumes", []):
            source, target, *_ = volume.split(":")
            assert source.startswith("./"), volume  # inside the exported tree
            assert ((root / COMPOSE).parent / source).exists(), f"{source} does not exist"
            targets[target] = source
    assert targets["/etc/prometheus/prometheus.yml"] == "./prometheus/prometheus.yml"
    # prometheus.yml's relative rule_files resolve next to it
    assert targets["/etc/prometheus/otelres-alerts.yml"] == "./prometheus/otelres-alerts.yml"
    assert targets["/etc/alertmanager/alertmanager.yml"] == "./alertmanager/alertmanager.yml"
    assert targets["/etc/grafana/provisioning"] == "./grafana/provisioning"
    assert targets["/var/lib/grafana/dashboards/otelres"] == "./dashboards"
    assert list((root / "dashboards").glob("*.json")), "no dashboard to provision"


def _compose_command() -> list[str]:
    docker = shutil.which("docker")
    if docker and _run(docker, "compose", "version").returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy:
        return [legacy]
    message = "neither `docker compose` nor docker-compose found (Debian: apt-get install docker-compose)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def test_compose_config_validates(root: Path) -> None:
    """`docker compose config -q` (or Debian's docker-compose) accepts compose.yaml."""
    result = _run(*_compose_command(), "-f", str(root / COMPOSE), "config", "-q", cwd=root)
    assert result.returncode == 0, result.stdout + result.stderr
