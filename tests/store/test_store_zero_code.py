"""Zero-code: ``opentelemetry-instrument python app.py`` enables the sqlite3 and redis
integrations through their entry points; OTEL_PYTHON_DISABLED_INSTRUMENTATIONS turns them off."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import otelres

if TYPE_CHECKING:
    from store_servers import FlakyProxy

#: The checkout under test: the child imports otelres from here.
SOURCE_ROOT = Path(otelres.__file__).resolve().parent.parent
CHILD_TIMEOUT = 30.0
#: otelres's other integrations, kept out of the child.
OTHERS = "otelres_requests,otelres_httpx,otelres_psycopg,otelres_psycopg2,otelres_asyncpg"

APP = """\
import json
import sqlite3
import sys

import redis

import otelres

try:
    sqlite3.connect(sys.argv[1])
except sqlite3.OperationalError:
    pass
client = redis.Redis(host="127.0.0.1", port=int(sys.argv[2]))
client.get("k")
client.close()
print(json.dumps({b.name: b.stats().failures for b in otelres.default_registry().breakers()}))
"""


def run_instrumented(tmp_path: Path, *args: str, disabled: str = OTHERS) -> dict[str, int]:
    """Run the app under opentelemetry-instrument; returns its breakers and their failures."""
    launcher = Path(sys.executable).parent / "opentelemetry-instrument"
    assert launcher.exists(), f"no {launcher}: opentelemetry-instrumentation is not installed here"
    app = tmp_path / "app.py"
    app.write_text(APP, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OTELRES_"))}
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(SOURCE_ROOT), os.environ.get("PYTHONPATH")])),
        OTEL_TRACES_EXPORTER="none",
        OTEL_METRICS_EXPORTER="none",
        OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=disabled,
        OTELRES_RETRY_BASE_DELAY="0.001",
        OTELRES_RETRY_MAX_DELAY="0.002",
    )
    done = subprocess.run(
        [str(launcher), sys.executable, str(app), *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()  # otelres's log events go to stdout too
    assert lines, done.stderr
    result: dict[str, int] = json.loads(lines[-1])
    return result


@pytest.mark.parametrize("enabled", [True, False])
def test_opentelemetry_instrument_enables_the_store_integrations(
    tmp_path: Path, proxy: FlakyProxy, enabled: bool
) -> None:
    """opentelemetry-instrument turns both integrations on by entry point; disabled by name, off."""
    database = tmp_path / "missing" / "app.db"
    proxy.drop("GET")
    disabled = OTHERS if enabled else f"{OTHERS},otelres_sqlite3,otelres_redis"
    breakers = run_instrumented(tmp_path, str(database), str(proxy.port), disabled=disabled)
    if enabled:
        assert breakers == {f"sqlite://{database}": 3, f"redis://127.0.0.1:{proxy.port}/0": 1}
    else:
        assert breakers == {}
    assert proxy.seen("GET") == 2  # by otelres, or by redis-py's own retry when otelres is off
