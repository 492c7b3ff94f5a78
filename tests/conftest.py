"""Shared fixtures: every test starts from a clean otelres (no settings, no
breakers, no listeners, no testing mode) and ends leaving none behind."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

from otelres import _config, _events
from otelres._flow import testing_state
from otelres._registry import Registry, set_default_registry
from otelres.testing import FakeClock

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture(autouse=True)
def _clean_otelres(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Isolate each test from the environment and from every other test."""
    for name in list(os.environ):
        if name.startswith("OTELRES_"):
            monkeypatch.delenv(name)
    _config.configure(None)
    previous_registry = set_default_registry(Registry())
    previous_listeners = (_events.listeners, _events.call_listeners)
    _events.listeners, _events.call_listeners = (), ()
    _events.failures.clear()
    attempts, sleep = testing_state.attempts, testing_state.sleep
    yield
    testing_state.attempts, testing_state.sleep = attempts, sleep
    _events.listeners, _events.call_listeners = previous_listeners
    set_default_registry(previous_registry)
    _config.configure(None)


@pytest.fixture
def clock() -> FakeClock:
    """A fake monotonic clock: tests move time, nothing sleeps for real."""
    return FakeClock()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """In CI a skip is a failure: a test whose real service is missing must not pass silently."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which counts as a failure: {report.longrepr}"
