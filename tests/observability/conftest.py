"""The files under test are those users run: what ``otelres export`` writes from the package data,
once with the default options and once with every option set (``exported``, ``root``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from otelres import _export

if TYPE_CHECKING:
    from pathlib import Path

#: The option sets every test of the exported files runs with.
EXPORTS: dict[str, dict[str, str]] = {
    "defaults": {},
    "options": {
        "job": "Checkout_API.v2",
        "jaeger_url": "https://tools.example.com/jaeger/",
        "runbook_base": "https://runbooks.example.com/otelres",
    },
}


@pytest.fixture(scope="session", params=sorted(EXPORTS))
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> _export.Exported:
    """A tree ``otelres export`` wrote (with the defaults, then with every option set)."""
    options = EXPORTS[request.param]
    return _export.export(tmp_path_factory.mktemp(f"export-{request.param}"), **options)


@pytest.fixture
def root(exported: _export.Exported) -> Path:
    """The directory of an exported tree."""
    return exported.directory
