"""The live observability stack, on loopback: an instrumented workload, a real Alertmanager with a
webhook receiver in the test process, and a real Prometheus scraping the workload and evaluating
the shipped alert rules.

Everything here is plain helpers (no fixtures): tests/observability/test_live_prometheus.py builds
its module fixture from them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

import pytest
import yaml

import otelres
from otelres import _export
from otelres.telemetry import names

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

T = TypeVar("T")

#: The checkout under test: the workload imports otelres from here.
SOURCE_ROOT = Path(otelres.__file__).resolve().parent.parent
#: The dashboard and the alert rules in a tree ``otelres export`` wrote (see export_shipped()).
DASHBOARD = Path("dashboards", "otelres-overview.json")
ALERT_RULES = Path("prometheus", "otelres-alerts.yml")

#: The scrape job of the workload, which the dashboard's ``$job`` stands for.
JOB = "otelres-live"
#: The breakers of the workload: one healthy (always closed), one flapping, one down (stays open).
HEALTHY = "https://api.example.com:443"
FLAKY = "https://flaky.example.com:443"
DOWN = "https://down.example.com:443"
#: A healthy dependency on the registry's breaker (no private policy): the kind shared on Redis.
SHARED = "https://fleet.example.com:443"
#: The Prometheus label of the breaker attribute.
BREAKER_LABEL = names.ATTR_BREAKER.replace(".", "_")
CIRCUIT_OPEN = "OtelresCircuitOpen"
#: The ``for:`` the test-only copy of the rules gives OtelresCircuitOpen (shipped: 1m and 5m).
SHORT_FOR = "2s"

#: What the dashboard's template variables stand for in the queries sent to Prometheus.
VARIABLES = {
    "job": JOB,
    "breaker": ".*",
    "__rate_interval": "15s",
    "__interval": "5s",
    "__interval_ms": "5000",
    "__range": "1m",
    "__range_s": "60",
    "__range_ms": "60000",
}
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)(?::\w+)?\]\]|\$(\w+)")

#: The longest a process may take to start, or to exit once asked to.
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0

#: Seconds between the workload's syncs of shared breaker state (default 1 s): its gauges and the
#: fleet's view of each breaker follow within a scrape.
SHARED_STATE_INTERVAL = "0.2"

# The instrumented workload: calls through otelres in a loop, with injected failures, until its
# stdin closes. Every series of names.PROMETHEUS appears: successes, failures, rejections and
# fallbacks; retries for several reasons; retries suppressed by the budget, a deadline and an
# open circuit; transitions (the flapping breaker keeps moving); DOWN's breaker, open for an
# hour, stays open; and, with breaker state shared on Redis (start_workload), the shared-state
# gauges: connected, the fleet's size and, per breaker the fleet knows (SHARED's: the other three
# are private breakers, which stay out of the fleet), the processes disagreeing; and a server
# middleware limited to one request in flight sheds the request made while one is in flight.
WORKLOAD = f"""
import sys
import threading
import time

import otelres
from otelres.wsgi import ResilienceMiddleware

HEALTHY, FLAKY, DOWN, SHARED = {HEALTHY!r}, {FLAKY!r}, {DOWN!r}, {SHARED!r}

otelres.instrument(retry_base_delay=0.001, retry_max_delay=0.001, retry_jitter="none")
fast = otelres.RetryPolicy(
    attempts=3, base_delay=0.001, max_delay=0.001, jitter="none", retry_on_result=lambda r: r == "busy"
)
api = otelres.Resilience(
    HEALTHY, retry=fast, breaker=otelres.BreakerPolicy(failure_rate=0.95, minimum_calls=50)
)
# The same breaker, with a budget that allows no retry at all: every retry is suppressed (budget).
no_budget = otelres.Resilience(
    HEALTHY, retry=fast, breaker=api.breaker, budget=otelres.BudgetPolicy(min_retries=0, ratio=0.0)
)
# The same breaker, with a 1 s backoff that a short deadline cannot wait for (deadline).
slow = otelres.Resilience(HEALTHY, retry=fast.evolve(base_delay=1.0, max_delay=1.0), breaker=api.breaker)
flaky = otelres.Resilience(
    FLAKY,
    retry=fast,
    breaker=otelres.BreakerPolicy(consecutive_failures=2, open_seconds=0.1, max_open_seconds=0.1),
)
down = otelres.Resilience(
    DOWN,
    retry=fast,
    breaker=otelres.BreakerPolicy(consecutive_failures=2, open_seconds=3600, max_open_seconds=3600),
)
down_cached = otelres.Resilience(
    DOWN, retry=fast, breaker=down.breaker, fallback=otelres.Fallback.value("cached")
)
# The registry's breaker for SHARED, configured from the settings: shared with the fleet on Redis.
shared = otelres.Resilience(SHARED, retry=fast)


def handler(environ, start_response):
    if environ["PATH_INFO"] == "/outer":
        # While this request holds the limit's only place, a second one comes in: it is shed.
        seen = []
        inner = limited(dict(REQUEST_METHOD="GET", PATH_INFO="/inner"), lambda s, h, e=None: seen.append(s))
        getattr(inner, "close", lambda: None)()
        assert seen[0].startswith("503"), seen
    start_response("200 OK", [])
    return [b"ok"]


# A server middleware with a concurrency limit (its gauges and its shed counter).
limited = ResilienceMiddleware(handler, limit=1)


def serve_and_shed():
    body = limited(dict(REQUEST_METHOD="GET", PATH_INFO="/outer"), lambda s, h, e=None: None)
    b"".join(body)
    body.close()


def endpoint(*first):
    # Its attempts give `first` in turn (an exception is raised), then "ok".
    pending = list(first)

    def attempt():
        if pending:
            item = pending.pop(0)
            if isinstance(item, BaseException):
                raise item
            return item
        return "ok"

    return attempt


def flaky_attempt():
    # Fails 0.4 s out of every 2 s: the breaker trips, stays open 0.1 s, probes, closes.
    if time.monotonic() % 2.0 < 0.4:
        raise ConnectionError("flaky: connection refused")
    return "ok"


def always_down():
    raise ConnectionError("down: connection refused")


def quietly(res, fn):
    try:
        return res.call(fn)
    except Exception as exc:
        return exc


def one_round(n):
    for _ in range(6):
        api.call(endpoint())  # success
    api.call(endpoint(ConnectionError("refused")))  # retried: connect
    api.call(endpoint(TimeoutError("timed out")))  # retried: timeout
    api.call(endpoint(OSError("500")))  # retried: error (a dependency error neither connect nor timeout)
    api.call(endpoint("busy"))  # retried: result
    if n % 10 == 0:
        quietly(api, endpoint(*[ConnectionError("refused")] * 3))  # failure: retries exhausted
    with otelres.deadline(0.05):
        quietly(slow, endpoint(ConnectionError("refused")))  # failure: retry suppressed (deadline)
    quietly(no_budget, endpoint(ConnectionError("refused")))  # failure: retry suppressed (budget)
    quietly(flaky, flaky_attempt)
    quietly(down, always_down)  # trips once (retry suppressed: circuit_open), then rejected
    down_cached.call(always_down)  # fallback
    shared.call(endpoint())  # success, on the breaker the fleet shares
    serve_and_shed()  # one request served, one shed by the server middleware's limit


stop = threading.Event()


def run():
    n = 0
    while not stop.is_set():
        one_round(n)
        if n == 0:
            assert down.breaker.state.value == "open", down.breaker.state
            print("ready", flush=True)
        n += 1
        stop.wait(0.05)


worker = threading.Thread(target=run)
worker.start()
sys.stdin.read()
stop.set()
worker.join()
"""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_environ() -> dict[str, str]:
    """``os.environ`` without any ``OTEL_*`` or ``OTELRES_*`` variable, importing this checkout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OTELRES_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SOURCE_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def binary(*candidates: str) -> str:
    """The first of ``candidates`` on PATH; a missing one fails the test in CI and skips it elsewhere."""
    for name in candidates:
        path = shutil.which(name)
        if path:
            return path
    message = f"{' or '.join(candidates)} not found (apt-get install prometheus prometheus-alertmanager)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)
    raise AssertionError  # unreachable: skip raises  # pragma: no cover


def poll(
    check: Callable[[], T | None], timeout: float, what: str | Callable[[], str], interval: float = 0.2
) -> T:
    """Call ``check`` until it returns something truthy (returned); fails after ``timeout`` s
    saying ``what`` (a callable: what it returns then).
    """
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            pytest.fail(f"{what if isinstance(what, str) else what()}: not within {timeout:g} s")
        time.sleep(interval)


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET ``url``: (status, body); a connection error is status 0."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback http
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()
    except OSError:
        return 0, b""


class Process:
    """A child process whose output goes to a log file; ``stop()`` ends it and checks that it did."""

    def __init__(
        self, name: str, argv: list[str], folder: Path, *, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.log_path = folder / f"{name}.log"
        self._log: IO[str] = self.log_path.open("w", encoding="utf-8")
        self.proc = subprocess.Popen(
            argv,
            cwd=folder,
            env=env,
            stdin=subprocess.PIPE,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def log(self) -> str:
        """What the process wrote so far (its last 4000 characters)."""
        self._log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-4000:]

    def check_running(self) -> None:
        """Fail if the process ended."""
        if self.proc.poll() is not None:
            pytest.fail(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")

    def wait_ready(self, url: str) -> None:
        """Poll ``url`` until it answers 200 (the process must stay up meanwhile)."""

        def ready() -> bool:
            self.check_running()
            return http_get(url, timeout=1.0)[0] == 200

        poll(ready, START_TIMEOUT, f"{self.name} ready at {url}")

    def stop(self, *, terminate: bool = True) -> int:
        """End the process (SIGTERM, or closing its stdin) and return its exit code; kills it on a
        timeout and fails.
        """
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            if terminate and self.proc.poll() is None:
                self.proc.terminate()
            try:
                return self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
                pytest.fail(f"{self.name} did not exit within {STOP_TIMEOUT:g} s:\n{self.log()}")
        finally:
            self._log.close()


def start_workload(folder: Path, port: int, *, shared_state: str) -> Process:
    """Start the instrumented workload serving /metrics on 127.0.0.1:``port``, sharing its breaker
    state on the Redis at ``shared_state`` (a ``redis://`` URL); returns once its first round of
    calls ran (DOWN's breaker is open).
    """
    script = folder / "workload.py"
    script.write_text(textwrap.dedent(WORKLOAD), encoding="utf-8")
    env = {
        **clean_environ(),
        "OTEL_METRICS_EXPORTER": "prometheus",
        "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
        "OTEL_EXPORTER_PROMETHEUS_PORT": str(port),
        "OTEL_SERVICE_NAME": "otelres-live-workload",
        "OTELRES_SHARED_STATE": shared_state,
        "OTELRES_SHARED_STATE_INTERVAL": SHARED_STATE_INTERVAL,
    }
    workload = Process("workload", [sys.executable, str(script)], folder, env=env)

    def ready() -> bool:
        workload.check_running()
        return "ready" in workload.log().splitlines()

    try:
        poll(ready, START_TIMEOUT, "the workload's first round of calls")
        workload.wait_ready(f"http://127.0.0.1:{port}/metrics")
    except BaseException:
        workload.stop()
        raise
    return workload


def _ready_or_stop(process: Process, url: str) -> None:
    """Wait for ``process`` to answer 200 at ``url``; stop it if it does not."""
    try:
        process.wait_ready(url)
    except BaseException:
        process.stop()
        raise


class WebhookReceiver:
    """An HTTP server in the test process recording the alerts Alertmanager POSTs to it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._alerts: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                payload = json.loads(body)
                with receiver._lock:
                    receiver._alerts.extend(payload.get("alerts", []))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's signature
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/alerts"

    def __enter__(self) -> WebhookReceiver:  # noqa: PYI034 - Self needs 3.11
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def alerts(self) -> list[dict[str, Any]]:
        """Every alert received so far (each with ``status``, ``labels``, ``annotations``)."""
        with self._lock:
            return list(self._alerts)


def start_alertmanager(folder: Path, webhook_url: str) -> tuple[Process, str]:
    """Start Alertmanager (clustering off) routing every alert to ``webhook_url`` within about a
    second; returns the process and its address.
    """
    exe = binary("prometheus-alertmanager", "alertmanager")
    config = {
        "route": {
            "receiver": "webhook",
            "group_by": ["alertname", BREAKER_LABEL],
            "group_wait": "1s",
            "group_interval": "1s",
            "repeat_interval": "1h",
        },
        "receivers": [{"name": "webhook", "webhook_configs": [{"url": webhook_url, "send_resolved": False}]}],
    }
    config_path = folder / "alertmanager.yml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    storage = folder / "alertmanager-data"
    storage.mkdir()
    address = f"127.0.0.1:{free_port()}"
    process = Process(
        "alertmanager",
        [
            exe,
            f"--config.file={config_path}",
            f"--storage.path={storage}",
            f"--web.listen-address={address}",
            "--cluster.listen-address=",
        ],
        folder,
    )
    _ready_or_stop(process, f"http://{address}/-/ready")
    return process, address


def export_shipped(folder: Path) -> Path:
    """What ``otelres export`` writes, for the workload's job, into ``folder``: the files a user runs."""
    _export.export(folder, job=JOB)
    return folder


def shipped_rules(exported: Path) -> dict[str, Any]:
    """The exported alert rules file, parsed."""
    rules: dict[str, Any] = yaml.safe_load((exported / ALERT_RULES).read_text(encoding="utf-8"))
    return rules


def circuit_open_rules(rules: dict[str, Any]) -> list[dict[str, Any]]:
    """The OtelresCircuitOpen rules (warning and critical) of a rules file."""
    return [rule for group in rules["groups"] for rule in group["rules"] if rule.get("alert") == CIRCUIT_OPEN]


def override_rules(shipped: dict[str, Any]) -> dict[str, Any]:
    """A copy of the shipped rules in which only OtelresCircuitOpen's ``for:`` is shortened."""
    copy: dict[str, Any] = json.loads(json.dumps(shipped))
    for rule in circuit_open_rules(copy):
        rule["for"] = SHORT_FOR
    return copy


def start_prometheus(
    folder: Path,
    rules: dict[str, Any],
    workload: str | Sequence[str],
    alertmanager: str | None,
    *,
    job: str = JOB,
) -> tuple[Process, str]:
    """Start Prometheus scraping ``workload`` (an address, or several: one per process) every
    second as ``job``, evaluating ``rules`` every second and alerting to ``alertmanager`` (if
    any); returns the process and its base URL.
    """
    exe = binary("prometheus")
    promtool = binary("promtool")
    rules_path = folder / "otelres-alerts.yml"
    rules_path.write_text(yaml.safe_dump(rules, sort_keys=False), encoding="utf-8")
    check = subprocess.run(
        [promtool, "check", "rules", str(rules_path)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    targets = [workload] if isinstance(workload, str) else list(workload)
    config: dict[str, Any] = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules_path)],
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": targets}]}],
    }
    if alertmanager is not None:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    config_path = folder / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    storage = folder / "prometheus-data"
    storage.mkdir()
    address = f"127.0.0.1:{free_port()}"
    process = Process(
        "prometheus",
        [
            exe,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={storage}",
            f"--web.listen-address={address}",
            "--rules.alert.resend-delay=1s",
        ],
        folder,
    )
    _ready_or_stop(process, f"http://{address}/-/ready")
    return process, f"http://{address}"


def prometheus_api(base: str, path: str, **params: str) -> Any:
    """Call Prometheus's HTTP API (POST with ``params``, else GET); returns ``data`` (fails on an
    error status).
    """
    body = urllib.parse.urlencode(params).encode() if params else None
    request = urllib.request.Request(f"{base}/api/v1/{path}", data=body)  # noqa: S310 - loopback http
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            payload = json.load(response)
    except urllib.error.HTTPError as exc:
        with exc:
            pytest.fail(f"Prometheus /api/v1/{path} {params}: {exc.code} {exc.read().decode()}")
    assert payload["status"] == "success", payload
    return payload["data"]


def dashboard_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(panel title, target refId, expr) for every query of every panel, rows' panels included."""

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    for panel in panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                yield panel.get("title", "?"), target.get("refId", "?"), target["expr"]


def substitute(expr: str) -> str:
    """``expr`` with the dashboard's variables replaced (VARIABLES); an unknown one fails."""

    def value(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        if name not in VARIABLES:
            pytest.fail(f"unknown dashboard variable ${name} in {expr!r}")
        return VARIABLES[name]

    return _VARIABLE.sub(value, expr)


@contextlib.contextmanager
def stopping(process: Process, *, terminate: bool = True) -> Iterator[Process]:
    """Yield ``process``; afterwards end it and check that it exited cleanly."""
    try:
        yield process
    finally:
        code = process.stop(terminate=terminate)
        assert code == 0, f"{process.name} exited with {code}:\n{process.log()}"
