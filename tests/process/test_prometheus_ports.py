"""``OTEL_METRICS_EXPORTER=prometheus`` with several processes: each serves its metrics on the
first free port from ``OTEL_EXPORTER_PROMETHEUS_PORT`` upwards (``OTELRES_PROMETHEUS_PORTS``
of them), says which in one log line, never dies for want of one, and a forked child (gunicorn
``--preload``) serves on a port of its own with its own identity and counts.

Each case runs a small app in its own interpreter: OpenTelemetry's global providers are set once
per process.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING

import pytest
from process_support import WAIT, free_port_range, live_stack

if TYPE_CHECKING:
    from pathlib import Path

SERVES = re.compile(r"otelres: process (\d+) serves Prometheus metrics at http://127\.0\.0\.1:(\d+)/metrics")

PRELUDE = """
import json
import logging
import os
import re
import sys
import urllib.request

import otelres
from otelres import _prometheus

logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
logging.getLogger("otelres").setLevel(logging.INFO)
otelres.instrument()


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def calls(text):
    return sum(float(v) for v in re.findall(r'^otelres_calls_total\\{[^}]*\\} (\\S+)$', text, re.M))


def instance(text):
    return re.search(r'^target_info\\{.*service_instance_id="([^"]+)"', text, re.M).group(1)


res = otelres.Resilience("https://ports.example.com:443")
"""


def run(tmp_path: Path, source: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run PRELUDE + ``source`` in a fresh interpreter with the clean environment plus ``env``."""
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent(PRELUDE) + textwrap.dedent(source), encoding="utf-8")
    try:
        return subprocess.run(
            [sys.executable, str(script)],
            env={**live_stack.clean_environ(), **env},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=WAIT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the app did not finish within {WAIT} s; stderr: {exc.stderr!r}")


def prometheus_env(first: int, ports: int | None = None) -> dict[str, str]:
    env = {
        "OTEL_METRICS_EXPORTER": "prometheus",
        "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
        "OTEL_EXPORTER_PROMETHEUS_PORT": str(first),
    }
    if ports is not None:
        env["OTELRES_PROMETHEUS_PORTS"] = str(ports)
    return env


def holding(*ports: int) -> list[socket.socket]:
    """Listening sockets on 127.0.0.1 holding ``ports`` (close them after)."""
    held = []
    for port in ports:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", port))
        sock.listen()
        held.append(sock)
    return held


def test_a_process_serves_on_the_first_free_port_and_says_which(tmp_path: Path) -> None:
    """With the first port taken, the process serves on the next one and logs one line naming it."""
    first = free_port_range(3)
    held = holding(first)
    try:
        done = run(
            tmp_path,
            """
            res.call(lambda: "ok")
            host, port, error = _prometheus.serving()
            print(json.dumps({"port": port, "calls": calls(scrape(port))}))
            """,
            prometheus_env(first),
        )
    finally:
        for sock in held:
            sock.close()
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"port": first + 1, "calls": 1.0}
    assert [int(port) for _, port in SERVES.findall(done.stderr)] == [first + 1], done.stderr


def test_every_port_taken_warns_and_serves_none(tmp_path: Path) -> None:
    """With all OTELRES_PROMETHEUS_PORTS ports taken the process runs on, serving no metrics, and
    says so once.
    """
    first = free_port_range(2)
    held = holding(first, first + 1)
    try:
        done = run(
            tmp_path,
            """
            _, port, error = _prometheus.serving()
            print(json.dumps({"result": res.call(lambda: "ok"), "port": port, "error": error.strerror}))
            """,
            prometheus_env(first, ports=2),
        )
    finally:
        for sock in held:
            sock.close()
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"result": "ok", "port": None, "error": "Address already in use"}
    warnings = [line for line in done.stderr.splitlines() if "serves no Prometheus metrics" in line]
    assert len(warnings) == 1, done.stderr
    assert f"127.0.0.1:{first}-{first + 1}" in warnings[0]
    assert "OTELRES_PROMETHEUS_PORTS=2" in warnings[0]


@pytest.mark.parametrize(
    ("variable", "value"),
    [("OTELRES_PROMETHEUS_PORTS", "0"), ("OTEL_EXPORTER_PROMETHEUS_PORT", "http")],
)
def test_a_bad_port_setting_is_a_config_error_naming_it(tmp_path: Path, variable: str, value: str) -> None:
    """A bad port or port count is a ConfigError naming the variable, as every other setting."""
    done = run(tmp_path, "", {**prometheus_env(free_port_range(1)), variable: value})
    assert done.returncode == 1
    assert "otelres.ConfigError" in done.stderr or "ConfigError" in done.stderr
    assert variable in done.stderr


def test_a_forked_child_serves_its_own_port_identity_and_counts(tmp_path: Path) -> None:
    """A parent that served and was scraped forks (gunicorn --preload): the child serves on a port
    of its own, with a service.instance.id of its own, counting only its own calls; the parent
    goes on serving its own.
    """
    first = free_port_range(4)
    done = run(
        tmp_path,
        """
        for _ in range(3):
            res.call(lambda: "ok")
        _, parent_port, _ = _prometheus.serving()
        before = scrape(parent_port)  # the exporter keeps target_info from this first scrape
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                res.call(lambda: "ok")
                _, port, _ = _prometheus.serving()
                text = scrape(port)
                line = json.dumps({"port": port, "calls": calls(text), "instance": instance(text)})
            except BaseException as exc:
                line = json.dumps({"error": repr(exc)})
            os.write(write_end, line.encode())
            os._exit(0)
        os.close(write_end)
        child = json.loads(os.fdopen(read_end).read())
        os.waitpid(pid, 0)
        after = scrape(parent_port)
        print(json.dumps({
            "parent": {"port": parent_port, "calls": calls(after), "instance": instance(before)},
            "parent_instance_after": instance(after),
            "child": child,
        }))
        """,
        prometheus_env(first),
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    parent, child = seen["parent"], seen["child"]
    assert "error" not in child, child
    assert parent["port"] == first
    assert child["port"] == first + 1
    assert (parent["calls"], child["calls"]) == (3.0, 1.0)
    assert child["instance"] != parent["instance"]
    assert seen["parent_instance_after"] == parent["instance"]
    ports = [int(port) for _, port in SERVES.findall(done.stderr)]
    assert ports == [first, first + 1], done.stderr
