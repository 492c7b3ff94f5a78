"""The README's first command: `otelres demo` runs, tells its story and exits cleanly."""

from __future__ import annotations

import io
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import requests
import structlog

import otelres
from otelres.__main__ import main
from otelres.demo import Phase, run_demo

#: One line of the live view: "    2s  healthy (2% fail)     closed    |   39      0 ..."
VIEW_LINE = re.compile(r"^\s+\d+(\.\d+)?s  \w+ \(\d+% fail\)\s+(closed|open|half_open)\s+\|(\s+\d+){3} \|")


def _environ() -> dict[str, str]:
    """This environment without OTEL_*/OTELRES_* (no exporter set up by surprise), importing
    this checkout.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OTELRES_"))}
    root = str(Path(otelres.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_demo_command_runs_and_shows_the_live_view() -> None:
    """`python -m otelres demo` serves a real upstream, calls it with plain requests and httpx
    under otelres.instrument(), prints a view line each second and the totals.
    """
    done = subprocess.run(
        [sys.executable, "-m", "otelres", "demo", "--duration", "3", "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=_environ(),
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("otelres demo: a flaky upstream at http://127.0.0.1:")
    assert "requests.get() from 2 threads" in done.stdout
    assert "httpx.AsyncClient().get() from an asyncio task" in done.stdout
    assert "\n  traces: off; set OTEL_EXPORTER_OTLP_ENDPOINT" in done.stdout
    view = [line for line in lines if VIEW_LINE.match(line)]
    assert [line.split()[0] for line in view] == ["1s", "2s", "3s"], done.stdout
    assert any(line.startswith("the upstream saw ") for line in lines)
    assert any(line.startswith("the application saw: requests.get() ") for line in lines)
    assert lines[-1].startswith("total: ")
    assert re.search(r"total: \d+ ok, \d+ failed, \d+ rejected", lines[-1])
    assert done.stderr == ""


def test_demo_serves_prometheus_metrics_while_it_runs() -> None:
    """With --prometheus-port, the demo prints where /metrics is and serves otelres's series there."""
    port = _free_port()
    argv = ["demo", "--duration", "2", "--workers", "1", "--prometheus-port", str(port)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "otelres", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_environ(),
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()

    def wait_for(pattern: str) -> str:
        deadline = time.monotonic() + 15
        while (line := lines.get(timeout=max(deadline - time.monotonic(), 0.01))) is not None:
            if re.search(pattern, line):
                return line
        pytest.fail(f"the demo ended before printing {pattern!r}")

    try:
        url = f"http://127.0.0.1:{port}/metrics"
        assert wait_for("metrics at ").strip() == f"metrics at {url} (Prometheus)"
        wait_for(r"^\s+1s  ")  # a second of calls made
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode("utf-8")
        assert "otelres_calls_total{" in text
        assert 'otelres_outcome="success"' in text
        assert "otelres_circuit_state{" in text
        assert proc.wait(timeout=15) == 0
    finally:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        assert proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()


def test_the_demo_story_the_breaker_opens_rejects_and_closes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A short script (healthy, down, healthy): the breaker opens when the upstream goes down,
    rejects calls without touching it, probes once it may, and closes after recovery; and the
    demo leaves the process as it found it (requests unpatched, structlog unconfigured).
    """
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    structlog.reset_defaults()
    original = requests.sessions.Session.request
    # The breaker (demo settings) opens for 2 s: its first probe comes after the outage.
    phases = (Phase("healthy", 0.25, 0.0), Phase("down", 1.75, 1.0, resets=1.0), Phase("healthy", 3.0, 0.0))
    out = io.StringIO()
    started = time.monotonic()
    totals = run_demo(phases=phases, workers=4, out=out)
    assert time.monotonic() - started < 9
    text = out.getvalue()
    assert totals.get("to:open", 0) >= 1, text
    assert totals["to:closed"] >= 1, text
    assert totals["transitions"] >= 2, text
    assert totals["rejected"] > 0, text
    assert totals["success"] > 0, text
    assert totals["retries"] > 0, text
    # Rejected calls never reached the upstream.
    assert (
        totals["upstream_requests"]
        < totals["success"] + totals["failure"] + totals["rejected"] + (totals["retries"])
    )
    assert "circuit closed -> open" in text
    assert "circuit half_open -> closed (the probe succeeded)" in text
    assert text.splitlines()[-1].startswith("total: ")
    assert requests.sessions.Session.request is original
    assert not structlog.is_configured()


def test_run_demo_rejects_bad_values() -> None:
    """run_demo checks its own arguments too, before starting anything."""
    with pytest.raises(ValueError, match="duration"):
        run_demo(duration=0)
    with pytest.raises(ValueError, match="workers"):
        run_demo(workers=0)
    with pytest.raises(ValueError, match="rate"):
        run_demo(rate=float("nan"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--duration", "-1"], "--duration must be > 0"),
        (["demo", "--duration", "nan"], "--duration must be > 0"),
        (["demo", "--duration", "inf"], "--duration must be a finite number"),
        (["demo", "--workers", "0"], "--workers must be >= 1"),
        (["demo", "--duration", "soon"], "invalid float value"),
        (["demo", "--prometheus-port", "0"], "--prometheus-port must be between 1 and 65535"),
        (["demo", "--prometheus-port", "65536"], "--prometheus-port must be between 1 and 65535"),
        (["demo", "--prometheus-port", "http"], "invalid int value"),
        ([], "required"),
    ],
)
def test_cli_rejects_bad_arguments_with_a_clear_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad command-line values end with exit status 2 and a message naming the problem."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_reports_a_busy_prometheus_port(capsys: pytest.CaptureFixture[str]) -> None:
    """A port already taken ends the demo with status 1 and says so, before any view line."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "otelres", "demo", "--duration", "1", "--prometheus-port", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env=_environ(),
        )
    assert done.returncode == 1
    assert f"otelres demo: cannot serve /metrics on 127.0.0.1:{port}: Address already in use" in done.stderr
    assert not any(VIEW_LINE.match(line) for line in done.stdout.splitlines())
