"""The server code lives in otelres.server; the public paths of before still give the same objects."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    ("public", "home"),
    [
        ("otelres.wsgi", "otelres.server.wsgi"),
        ("otelres.asgi", "otelres.server.asgi"),
        ("otelres.health", "otelres.server.health"),
        ("otelres.instrumentation.frameworks", "otelres.server._frameworks"),
    ],
)
def test_public_path_exports_the_objects_of_their_new_home(public: str, home: str) -> None:
    """Every name a public path lists is the very object its home in otelres.server defines."""
    old = importlib.import_module(public)
    new = importlib.import_module(home)
    assert old.__all__
    assert set(old.__all__) <= set(new.__all__)
    for name in old.__all__:
        assert getattr(old, name) is getattr(new, name), name


def test_health_keeps_its_whole_public_api() -> None:
    """otelres.health lists the same names as otelres.server.health, which are all defined."""
    old = importlib.import_module("otelres.health")
    new = importlib.import_module("otelres.server.health")
    assert sorted(old.__all__) == sorted(new.__all__)
    assert all(hasattr(new, name) for name in new.__all__)


def test_server_package_imports_nothing_heavy() -> None:
    """Importing otelres.server loads neither a middleware nor the health checks."""
    code = (
        "import sys, otelres.server; print(sorted(n for n in sys.modules if n.startswith('otelres.server.')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]", done.stderr
