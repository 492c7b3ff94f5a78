"""Helpers shared by the end-to-end tests (importable from tests/e2e, unlike conftest.py)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import otelres

__all__ = ["CHILD_TIMEOUT", "SOURCE_ROOT", "clean_environ", "free_port"]

#: The checkout under test: the child processes import otelres from here.
SOURCE_ROOT = Path(otelres.__file__).resolve().parent.parent
#: The longest any child process may run before the test fails.
CHILD_TIMEOUT = 20.0


def clean_environ() -> dict[str, str]:
    """``os.environ`` without any ``OTEL_*`` or ``OTELRES_*`` variable, importing this checkout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OTELRES_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SOURCE_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
