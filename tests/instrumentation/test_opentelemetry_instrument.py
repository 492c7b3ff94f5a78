"""Zero-code: ``opentelemetry-instrument python app.py`` enables otelres through its
``opentelemetry_instrumentor`` entry points, and OTEL_PYTHON_DISABLED_INSTRUMENTATIONS turns it off."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import otelres

if TYPE_CHECKING:
    from flaky_server import FlakyServer

#: The checkout under test: the child imports otelres from here.
SOURCE_ROOT = Path(otelres.__file__).resolve().parent.parent
CHILD_TIMEOUT = 30.0

APP = """\
import sys

import requests

wrapper = type(requests.Session.__dict__["request"]).__name__
with requests.Session() as session:
    response = session.get(sys.argv[1], timeout=5)
    print(wrapper, response.status_code)
"""


def run_instrumented(tmp_path: Path, url: str, **env: str) -> str:
    """Run the app under opentelemetry-instrument; returns the app's result line (the last one
    on stdout, whatever else a library prints there). Fails on a non-zero exit.
    """
    launcher = Path(sys.executable).parent / "opentelemetry-instrument"
    assert launcher.exists(), f"no {launcher}: opentelemetry-instrumentation is not installed here"
    app = tmp_path / "app.py"
    app.write_text(textwrap.dedent(APP), encoding="utf-8")
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OTELRES_"))}
    child_env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(SOURCE_ROOT), os.environ.get("PYTHONPATH")])),
        OTEL_TRACES_EXPORTER="none",
        OTEL_METRICS_EXPORTER="none",
        OTELRES_RETRY_BASE_DELAY="0.001",
        OTELRES_RETRY_MAX_DELAY="0.002",
        **env,
    )
    done = subprocess.run(
        [str(launcher), sys.executable, str(app), url],
        env=child_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines, done.stderr
    return lines[-1]


@pytest.mark.parametrize("name", ["otelres_requests", "otelres_httpx"])
def test_entry_points_registered(name: str) -> None:
    """The opentelemetry_instrumentor group names otelres's instrumentors, and they load."""
    found = {ep.name: ep for ep in importlib.metadata.entry_points(group="opentelemetry_instrumentor")}
    assert name in found, sorted(found)
    assert found[name].value.startswith("otelres.instrumentation.")
    assert found[name].load().__module__.startswith("otelres.instrumentation.")


def test_opentelemetry_instrument_enables_retries(server: FlakyServer, tmp_path: Path) -> None:
    """Under opentelemetry-instrument, Session.request is wrapped and a 503 is retried to the 200."""
    server.script(503, 200)
    assert run_instrumented(tmp_path, server.url) == "FunctionWrapper 200"
    assert server.count("GET") == 2


def test_disabled_instrumentation_leaves_requests_alone(server: FlakyServer, tmp_path: Path) -> None:
    """With OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=otelres_requests nothing patches Session.request."""
    server.script(503, 200)
    stdout = run_instrumented(tmp_path, server.url, OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="otelres_requests")
    assert stdout == "function 503"
    assert server.count("GET") == 1
