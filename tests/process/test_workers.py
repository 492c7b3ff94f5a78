"""Every worker counted exactly once: real ``gunicorn -w 2`` (with and without ``--preload``) and
``uvicorn --workers 2`` serve tests/process/multiproc_app.py, whose requests each make one
guarded call to a loopback upstream.

- Pull: ``OTEL_METRICS_EXPORTER=prometheus``. Every process serves its own port of the range and
  a real Prometheus scraping the range (with the shipped alert rules) stores each worker's calls
  once: after K requests the counters sum to K, one instance per worker, each with its own
  ``service.instance.id``; the dashboard's open-circuit count and the OtelresCircuitOpen rule
  see a circuit forced open in one worker, then in both, as one open circuit.
- Push: OTLP to a receiver in the test, which sees a distinct ``service.instance.id`` per
  worker, whose counts sum to K.

Requests are sent in pairs and the upstream holds each until its pair arrives: gunicorn's sync
workers take one request at a time, so each pair reaches both workers. Every wait polls with a
deadline; nothing sleeps to arrange timing.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import re
import sys
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import pytest
from process_support import HERE, WAIT, Upstream, free_port_range, live_stack, otlp_receiver

from otelres.telemetry import names

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.service("prometheus")

WORKERS = 2
#: Ports the processes may take: the workers, gunicorn's master under --preload, one spare.
PORTS = WORKERS + 2
#: Requests sent in each test (in pairs).
PAIRS = 10
K = 2 * PAIRS
CALLS = names.PROMETHEUS[names.CALLS]
CIRCUIT_STATE = names.PROMETHEUS[names.CIRCUIT_STATE]
SERVES = re.compile(r"otelres: process (\d+) serves Prometheus metrics at http://127\.0\.0\.1:(\d+)/metrics")
#: What each server logs once per worker that is up.
WORKER_UP = {"gunicorn": "Booting worker with pid", "uvicorn": "Application startup complete."}
#: (server, --preload) for every test of both kinds.
SERVERS = [("gunicorn", False), ("gunicorn", True), ("uvicorn", False)]
SERVER_IDS = ["gunicorn", "gunicorn --preload", "uvicorn"]


def gunicorn_control_socket_off() -> list[str]:
    """gunicorn 25+ opens a control socket under $HOME unless told not to (older ones have none)."""
    from gunicorn.config import KNOWN_SETTINGS  # noqa: PLC0415 - only where gunicorn runs

    return ["--no-control-socket"] if any(s.name == "control_socket" for s in KNOWN_SETTINGS) else []


def server_argv(kind: str, preload: bool, port: int) -> list[str]:
    if kind == "gunicorn":
        return [
            sys.executable,
            "-m",
            "gunicorn",
            "-w",
            str(WORKERS),
            "-b",
            f"127.0.0.1:{port}",
            "--chdir",
            str(HERE),
            "--graceful-timeout",
            "5",
            *(["--preload"] if preload else []),
            *gunicorn_control_socket_off(),
            "multiproc_app:app",
        ]
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "--workers",
        str(WORKERS),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--app-dir",
        str(HERE),
        "multiproc_app:asgi",
    ]


@dataclasses.dataclass
class Service:
    """The running server: its process, its address, and the upstream it calls."""

    process: Any
    url: str
    upstream: Upstream
    pids: set[int] = dataclasses.field(default_factory=set)

    def get(self, path: str) -> str:
        status, body = live_stack.http_get(self.url + path, timeout=WAIT)
        assert status == 200, (path, status, self.process.log())
        return body.decode()

    def pairs(self, path: str, count: int) -> None:
        """Send ``count`` pairs of concurrent requests (each pair meets at the upstream); record
        the pids that answered.
        """
        self.upstream.pairs = True
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            for _ in range(count):
                answers = list(pool.map(self.get, [path, path]))
                for answer in answers:
                    pid, status = answer.split()
                    assert status == "200", answer
                    self.pids.add(int(pid))
        self.upstream.pairs = False


@contextlib.contextmanager
def running(kind: str, preload: bool, folder: Path, env: dict[str, str]) -> Iterator[Service]:
    """Start the server with the app and an upstream; yield once every worker is up."""
    with Upstream() as upstream:
        port = live_stack.free_port()
        process = live_stack.Process(
            kind,
            server_argv(kind, preload, port),
            folder,
            env={**live_stack.clean_environ(), "UPSTREAM_URL": upstream.url, **env},
        )
        try:

            def up() -> bool:
                process.check_running()
                return process.log().count(WORKER_UP[kind]) >= WORKERS

            live_stack.poll(up, WAIT, lambda: f"{WORKERS} {kind} workers up:\n{process.log()}")
            process.wait_ready(f"http://127.0.0.1:{port}/ping")
            yield Service(process, f"http://127.0.0.1:{port}", upstream)
        finally:
            code = process.stop()
        assert code == 0, f"{kind} exited with {code}:\n{process.log()}"


# -- pull ---------------------------------------------------------------------------------------


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = live_stack.prometheus_api(prometheus, "query", query=expr)["result"]
    return result


def scalar(prometheus: str, expr: str) -> float | None:
    """The value of a query that gives one sample (None when it gives none)."""
    result = query(prometheus, expr)
    assert len(result) <= 1, (expr, result)
    return float(result[0]["value"][1]) if result else None


def dashboard_expr(exported: Path, title: str) -> str:
    """The query of the exported dashboard's panel ``title``, its variables substituted."""
    board = json.loads((exported / live_stack.DASHBOARD).read_text(encoding="utf-8"))
    found = [expr for panel, _, expr in live_stack.dashboard_queries(board) if panel == title]
    assert len(found) == 1, (title, found)
    return str(live_stack.substitute(found[0]))


@pytest.mark.parametrize(("kind", "preload"), SERVERS, ids=SERVER_IDS)
def test_pull_every_worker_serves_its_port_and_prometheus_counts_each_call_once(
    tmp_path: Path, kind: str, preload: bool
) -> None:
    """K requests through 2 workers, a real Prometheus scraping the port range: the counters sum to
    K, one instance per worker with its own service.instance.id, and a circuit open in one
    worker, then in both, is one open circuit to the dashboard and the alert rule.
    """
    for tool in ("prometheus", "promtool"):
        live_stack.binary(tool)
    first = free_port_range(PORTS)
    job = f'job="{live_stack.JOB}"'
    targets = [f"127.0.0.1:{port}" for port in range(first, first + PORTS)]
    exported = live_stack.export_shipped(tmp_path / "exported")
    rules = live_stack.shipped_rules(exported)
    prometheus_process, prometheus = live_stack.start_prometheus(tmp_path, rules, targets, None)
    env = {
        "OTEL_METRICS_EXPORTER": "prometheus",
        "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
        "OTEL_EXPORTER_PROMETHEUS_PORT": str(first),
        "OTELRES_PROMETHEUS_PORTS": str(PORTS),
        "OTEL_SERVICE_NAME": "otelres-workers",
    }
    processes = WORKERS + (1 if preload else 0)  # gunicorn's master serves too under --preload
    with live_stack.stopping(prometheus_process), running(kind, preload, tmp_path, env) as service:
        # Each process says which port it serves: one each, all different, within the range.
        def serving() -> list[tuple[str, str]] | None:
            found = SERVES.findall(service.process.log())
            return found if len(found) >= processes else None

        served = live_stack.poll(
            serving, WAIT, lambda: f"{processes} processes serving metrics:\n{service.process.log()}"
        )
        ports = sorted(int(port) for _, port in served)
        assert len(set(ports)) == len(ports) == processes, served
        assert ports == list(range(first, first + processes)), served
        live_stack.poll(
            lambda: scalar(prometheus, f"count(up{{{job}}} == 1)") == processes,
            WAIT,
            lambda: f"Prometheus scraping {processes} targets: {query(prometheus, 'up')}",
        )

        service.pairs("/", PAIRS)
        if kind == "gunicorn":  # sync workers: each pair reached both
            assert len(service.pids) == WORKERS, service.pids
        live_stack.poll(
            lambda: scalar(prometheus, f"sum({CALLS}{{{job}}})") == K,
            WAIT,
            lambda: f"sum of calls == {K}: {query(prometheus, f'{CALLS}{{{job}}}')}",
        )
        by_instance = query(prometheus, f"sum by (instance) ({CALLS}{{{job}}})")
        assert len(by_instance) == len(service.pids), by_instance
        assert sum(float(row["value"][1]) for row in by_instance) == K

        # Each process its own identity: as many distinct service.instance.id as target_info series.
        identities = query(prometheus, f"target_info{{{job}}}")
        instance_ids = {row["metric"]["service_instance_id"] for row in identities}
        assert len(instance_ids) == len(identities) >= len(service.pids), identities

        # A circuit open in one worker shows as one open circuit; open in both, still one.
        open_circuits = dashboard_expr(exported, "Open circuits")
        rule = live_stack.circuit_open_rules(rules)[0]["expr"]
        breaker = service.upstream.url.rstrip("/")
        forced = (
            f'{CIRCUIT_STATE}{{{job}, {live_stack.BREAKER_LABEL}="{breaker}", otelres_state="forced_open"}}'
        )
        assert scalar(prometheus, open_circuits) == 0
        service.get("/force-open")  # one worker
        steps = [1]
        if kind == "gunicorn":  # a pair reaches both workers
            steps.append(WORKERS)
        for workers_open in steps:
            if workers_open == WORKERS:
                service.pairs("/force-open", 1)
            live_stack.poll(
                lambda n=workers_open: scalar(prometheus, f"count({forced} == 1)") == n,
                WAIT,
                f"the circuit forced open in {workers_open} worker(s)",
            )
            assert scalar(prometheus, open_circuits) == 1
            alerting = query(prometheus, rule)
            assert [row["metric"][live_stack.BREAKER_LABEL] for row in alerting] == [breaker], alerting


# -- push ---------------------------------------------------------------------------------------


def calls_by_instance(receiver: Any) -> dict[str, float]:
    """The latest cumulative ``otelres.calls`` of each process (service.instance.id), summed over
    its attribute sets.
    """
    latest: dict[tuple[str, frozenset[tuple[str, Any]]], Any] = {}
    for point in receiver.points:
        if point.name != names.CALLS:
            continue
        key = (point.resource.get("service.instance.id", ""), frozenset(point.attributes.items()))
        if key not in latest or point.export > latest[key].export:
            latest[key] = point
    totals: dict[str, float] = defaultdict(float)
    for (instance, _), point in latest.items():
        totals[instance] += point.value
    return dict(totals)


@pytest.mark.parametrize(("kind", "preload"), SERVERS, ids=SERVER_IDS)
def test_push_every_worker_exports_under_its_own_instance_id(
    tmp_path: Path, kind: str, preload: bool
) -> None:
    """K requests through 2 workers pushing OTLP: each worker's metrics carry a service.instance.id
    of its own, and their counts sum to K.
    """
    with otlp_receiver.OtlpReceiver() as receiver:
        env = {
            "OTEL_METRICS_EXPORTER": "otlp",
            "OTEL_TRACES_EXPORTER": "none",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_METRIC_EXPORT_INTERVAL": "300",
            "OTEL_SERVICE_NAME": "otelres-workers",
        }
        with running(kind, preload, tmp_path, env) as service:
            service.pairs("/", PAIRS)
            if kind == "gunicorn":
                assert len(service.pids) == WORKERS, service.pids
            counted = receiver.wait_for(lambda r: sum(calls_by_instance(r).values()) == K, timeout=WAIT)
            totals = calls_by_instance(receiver)
            assert counted, totals
        assert not receiver.errors, receiver.errors
    assert "" not in totals, totals  # every process names itself
    assert len(totals) == len(service.pids), totals  # one id per worker that made calls
    assert sum(totals.values()) == K
