"""The README's first command: `otelres demo` runs, tells its story and exits cleanly."""

from __future__ import annotations

import subprocess
import sys

import pytest

from otelres.__main__ import main


def test_demo_command_runs_and_reports_totals() -> None:
    """`python -m otelres demo` serves a real upstream, calls it through otelres and prints totals."""
    done = subprocess.run(
        [sys.executable, "-m", "otelres", "demo", "--duration", "2", "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("otelres demo: 2 workers call a flaky upstream at http://127.0.0.1:")
    assert any("circuit closed" in line for line in lines)
    assert lines[-1].startswith("total: ")
    assert "the upstream saw" in lines[-1]
    assert done.stderr == ""


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--duration", "-1"], "--duration must be > 0"),
        (["demo", "--workers", "0"], "--workers must be >= 1"),
        (["demo", "--duration", "soon"], "invalid float value"),
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
