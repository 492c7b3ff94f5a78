"""Zero-code: ``opentelemetry-instrument python app.py`` enables the PostgreSQL integrations
through their entry points; OTEL_PYTHON_DISABLED_INSTRUMENTATIONS turns them off."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from pg_server import free_port

import otelres

if TYPE_CHECKING:
    from conftest import Pg

#: The checkout under test: the child imports otelres from here.
SOURCE_ROOT = Path(otelres.__file__).resolve().parent.parent
CHILD_TIMEOUT = 30.0
OURS = "otelres_psycopg,otelres_psycopg2,otelres_asyncpg"
#: otelres's other integrations, kept out of the child.
OTHERS = "otelres_requests,otelres_httpx,otelres_sqlite3,otelres_redis"

APP = """\
import asyncio
import json
import sys

import asyncpg
import psycopg
import psycopg2

import otelres

good, refused = sys.argv[1:3]
with psycopg.connect(good) as conn:
    conn.execute("SELECT 1")
conn = psycopg2.connect(good)
conn.cursor().execute("SELECT 1")
conn.close()


async def main():
    conn = await asyncpg.connect(good)
    await conn.fetchval("SELECT 1")
    await conn.close()


asyncio.run(main())
try:
    psycopg2.connect(refused)
except psycopg2.OperationalError:
    pass
stats = {b.name: b.stats() for b in otelres.default_registry().breakers()}
print(json.dumps({name: [s.successes, s.failures] for name, s in stats.items()}))
"""


@pytest.mark.parametrize("enabled", [True, False])
def test_opentelemetry_instrument_enables_the_database_integrations(
    pg: Pg, tmp_path: Path, enabled: bool
) -> None:
    """opentelemetry-instrument turns the three drivers' integrations on by entry point; disabled, off."""
    launcher = Path(sys.executable).parent / "opentelemetry-instrument"
    assert launcher.exists(), f"no {launcher}: opentelemetry-instrumentation is not installed here"
    app = tmp_path / "app.py"
    app.write_text(APP, encoding="utf-8")
    refused_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OTELRES_", "PG"))}
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(SOURCE_ROOT), os.environ.get("PYTHONPATH")])),
        OTEL_TRACES_EXPORTER="none",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=OTHERS if enabled else f"{OTHERS},{OURS}",
        OTELRES_RETRY_BASE_DELAY="0.001",
        OTELRES_RETRY_MAX_DELAY="0.002",
    )
    done = subprocess.run(
        [str(launcher), sys.executable, str(app), pg.dsn(password="s3cret"), pg.dsn(port=refused_port)],  # noqa: S106
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
    breakers = json.loads(lines[-1])
    if enabled:
        refused = f"postgresql://127.0.0.1:{refused_port}/app"
        # Three connects and three statements; the refused connect tried three times.
        assert breakers == {pg.name: [6, 0], refused: [0, 3]}
    else:
        assert breakers == {}
