"""Fixtures of the end-to-end telemetry tests: an OTLP receiver on loopback, a clean
environment for child processes, and a runner for small apps written to tmp_path.

The apps run in their own interpreter: OpenTelemetry's global providers can be
set once per process, and ``otelres.instrument()`` reads the real environment.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING

import pytest
from e2e_helpers import CHILD_TIMEOUT, clean_environ
from otlp_receiver import OtlpReceiver

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path


@pytest.fixture
def clean_env() -> dict[str, str]:
    """A copy of the environment minus ``OTEL_*``/``OTELRES_*``: add what a test needs."""
    return clean_environ()


@pytest.fixture
def otlp_receiver() -> Iterator[OtlpReceiver]:
    """A running OTLP/HTTP receiver on 127.0.0.1 (an ephemeral port)."""
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture
def write_app(tmp_path: Path) -> Callable[[str], Path]:
    """Write an app's source (dedented) to tmp_path; returns its path."""
    count = 0

    def write(source: str) -> Path:
        nonlocal count
        count += 1
        path = tmp_path / f"app_{count}.py"
        path.write_text(textwrap.dedent(source), encoding="utf-8")
        return path

    return write


@pytest.fixture
def run_app(
    write_app: Callable[[str], Path], clean_env: dict[str, str]
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run an app's source in a child interpreter with the clean environment plus ``env``;
    returns the finished process (stdout and stderr as text). Fails on a timeout.
    """

    def run(
        source: str, env: dict[str, str] | None = None, timeout: float = CHILD_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        script = write_app(source)
        try:
            return subprocess.run(
                [sys.executable, str(script)],
                env={**clean_env, **(env or {})},
                cwd=script.parent,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"the app did not finish within {timeout} s; stderr: {exc.stderr!r}")

    return run
