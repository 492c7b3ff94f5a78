"""End to end over Prometheus: an app in its own process calls ``otelres.instrument()``
with ``OTEL_METRICS_EXPORTER=prometheus``, makes successful, retried, failed,
deadline-suppressed and rejected calls and trips a breaker; a real scrape of its
``/metrics`` must show exactly the series of the README's telemetry table, with
their labels, which dashboards and alert rules query.
"""

from __future__ import annotations

import dataclasses
import math
import queue
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from typing import TYPE_CHECKING

import pytest
from e2e_helpers import CHILD_TIMEOUT, clean_environ, free_port
from prometheus_client.parser import text_string_to_metric_families

from otelres.telemetry import names

if TYPE_CHECKING:
    from collections.abc import Iterator

    from prometheus_client.metrics_core import Metric

API = "https://api.example.com:443"
FLAKY = "https://flaky.example.com:443"

#: The README's telemetry table ("Metrics"), as written there.
DESIGN_SERIES = {
    names.CALLS: "otelres_calls_total",
    names.CALL_DURATION: "otelres_call_duration_seconds",
    names.RETRIES: "otelres_retries_total",
    names.RETRIES_SUPPRESSED: "otelres_retries_suppressed_total",
    names.CIRCUIT_STATE: "otelres_circuit_state",
    names.CIRCUIT_TRANSITIONS: "otelres_circuit_transitions_total",
}
P = names.PROMETHEUS
DURATION = P[names.CALL_DURATION]
#: Labels the OTel Prometheus exporter adds to every series (the instrumentation scope).
SCOPE_LABELS = {"otel_scope_name", "otel_scope_version", "otel_scope_schema_url"}


def label(attribute: str) -> str:
    """The Prometheus label the exporter makes of an attribute name."""
    return attribute.replace(".", "_")


BREAKER, OUTCOME, REASON = (
    label(names.ATTR_BREAKER),
    label(names.ATTR_OUTCOME),
    label(names.ATTR_RETRY_REASON),
)
STATE, FROM, TO = label(names.ATTR_STATE), label(names.ATTR_FROM_STATE), label(names.ATTR_TO_STATE)

APP = """
import sys

import otelres

otelres.instrument()
retry = otelres.RetryPolicy(base_delay=0.001, jitter="none")
api = otelres.Resilience("https://api.example.com:443", retry=retry)
slow = otelres.Resilience("https://api.example.com:443", retry=retry.evolve(base_delay=1.0))
flaky = otelres.Resilience(
    "https://flaky.example.com:443", retry=retry, breaker=otelres.BreakerPolicy(consecutive_failures=2)
)


def endpoint(failures):
    # Fails its first `failures` attempts (None: every attempt).
    count = 0

    def attempt():
        nonlocal count
        count += 1
        if failures is None or count <= failures:
            raise ConnectionError(f"connection refused (attempt {count})")
        return "ok"

    return attempt


def fails(res, fn):
    try:
        res.call(fn)
    except Exception as exc:
        return type(exc).__name__
    raise AssertionError("the call should have failed")


assert api.call(endpoint(0)) == "ok"  # success
assert api.call(endpoint(1)) == "ok"  # success after a retry
assert fails(api, endpoint(None)) == "ConnectionError"  # exhausted: 2 retries
with otelres.deadline(0.5):  # the 1 s backoff cannot finish in time: suppressed
    assert fails(slow, endpoint(None)) == "ConnectionError"
assert fails(flaky, endpoint(None)) == "ConnectionError"  # 1 retry, trips, 2nd retry suppressed
assert fails(flaky, endpoint(None)) == "CircuitOpenError"  # rejected
print("ready", flush=True)
sys.stdin.read()
"""


@dataclasses.dataclass
class Scrape:
    """One scrape of the app's /metrics, parsed."""

    text: str
    families: dict[str, Metric]

    def samples(self, name: str) -> list[tuple[dict[str, str], float]]:
        """Every sample of the series ``name`` (labels, value)."""
        return [
            (dict(s.labels), s.value)
            for family in self.families.values()
            for s in family.samples
            if s.name == name
        ]

    def values(self, name: str, *labels: str) -> dict[tuple[str, ...], float]:
        """The samples of ``name`` keyed by the values of ``labels``."""
        return {tuple(ls[k] for k in labels): value for ls, value in self.samples(name)}

    def otelres_series(self) -> set[str]:
        """The names of every otelres series in the scrape."""
        return {s.name for f in self.families.values() for s in f.samples if s.name.startswith("otelres_")}


def _wait_for_line(lines: queue.Queue[str | None], wanted: str, timeout: float) -> list[str]:
    """Read the app's stdout until the line ``wanted``; returns what came before it."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            pytest.fail(f"no {wanted!r} line within {timeout} s; stdout so far: {seen}")
        if line is None:
            pytest.fail(f"the app ended before printing {wanted!r}; stdout: {seen}")
        if line.rstrip("\n") == wanted:
            return seen
        seen.append(line)


@pytest.fixture(scope="module")
def scrape(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scrape]:
    """Start the app, wait for its readiness line, scrape /metrics once, then let it exit."""
    folder = tmp_path_factory.mktemp("prometheus")
    script = folder / "app.py"
    script.write_text(textwrap.dedent(APP), encoding="utf-8")
    port = free_port()
    env = {
        **clean_environ(),
        "OTEL_METRICS_EXPORTER": "prometheus",
        "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
        "OTEL_EXPORTER_PROMETHEUS_PORT": str(port),
    }
    with (folder / "stderr.txt").open("w+", encoding="utf-8") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(script)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line)
            lines.put(None)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            _wait_for_line(lines, "ready", CHILD_TIMEOUT)
            url = f"http://127.0.0.1:{port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as response:
                text = response.read().decode("utf-8")
            families = {f.name: f for f in text_string_to_metric_families(text)}
            yield Scrape(text, families)
        finally:
            assert proc.stdin is not None
            proc.stdin.close()
            try:
                code = proc.wait(timeout=CHILD_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
                raise
            finally:
                reader.join(timeout=5)
                assert proc.stdout is not None
                proc.stdout.close()
            stderr.seek(0)
            assert code == 0, stderr.read()


def test_names_module_matches_the_design_table() -> None:
    """otelres.telemetry.names.PROMETHEUS holds the README table's series names, letter for letter."""
    assert {key: P[key] for key in DESIGN_SERIES} == DESIGN_SERIES


def test_exactly_the_design_series_are_exposed(scrape: Scrape) -> None:
    """The scrape holds each series of the README's table, and no other otelres series but the retry
    delay and the rejections by reason (the scenario rejects calls)."""
    delay = P[names.RETRY_DELAY]
    expected = {
        P[names.CALLS],
        f"{DURATION}_bucket",
        f"{DURATION}_sum",
        f"{DURATION}_count",
        P[names.RETRIES],
        P[names.RETRIES_SUPPRESSED],
        P[names.CIRCUIT_STATE],
        P[names.CIRCUIT_TRANSITIONS],
        f"{delay}_bucket",
        f"{delay}_sum",
        f"{delay}_count",
        P[names.REJECTIONS],
    }
    assert scrape.otelres_series() == expected


def test_series_types(scrape: Scrape) -> None:
    """Counters are counters, the state is a gauge and the durations are histograms."""
    types = {sample.name: family.type for family in scrape.families.values() for sample in family.samples}
    assert types[P[names.CALLS]] == "counter"
    assert types[P[names.RETRIES]] == "counter"
    assert types[P[names.RETRIES_SUPPRESSED]] == "counter"
    assert types[P[names.CIRCUIT_TRANSITIONS]] == "counter"
    assert types[P[names.CIRCUIT_STATE]] == "gauge"
    assert types[f"{DURATION}_bucket"] == "histogram"


@pytest.mark.parametrize(
    ("series", "labels"),
    [
        (P[names.CALLS], {BREAKER, OUTCOME}),
        (f"{DURATION}_bucket", {BREAKER, OUTCOME, "le"}),
        (f"{DURATION}_sum", {BREAKER, OUTCOME}),
        (f"{DURATION}_count", {BREAKER, OUTCOME}),
        (P[names.RETRIES], {BREAKER, REASON}),
        (P[names.RETRIES_SUPPRESSED], {BREAKER, REASON}),
        (P[names.CIRCUIT_STATE], {BREAKER, STATE}),
        (P[names.CIRCUIT_TRANSITIONS], {BREAKER, FROM, TO}),
    ],
)
def test_series_labels(scrape: Scrape, series: str, labels: set[str]) -> None:
    """Each series carries exactly its table's labels (besides the exporter's scope labels)."""
    samples = scrape.samples(series)
    assert samples, f"{series} missing"
    assert {frozenset(set(ls) - SCOPE_LABELS) for ls, _ in samples} == {frozenset(labels)}
    assert {ls["otel_scope_name"] for ls, _ in samples} == {names.METER_NAME}


def test_calls_by_outcome(scrape: Scrape) -> None:
    """otelres_calls_total counts successes, failures and rejections per breaker."""
    assert scrape.values(P[names.CALLS], BREAKER, OUTCOME) == {
        (API, "success"): 2,
        (API, "failure"): 2,
        (FLAKY, "failure"): 1,
        (FLAKY, "rejected"): 1,
    }


def test_call_duration_histogram(scrape: Scrape) -> None:
    """otelres_call_duration_seconds counts the same calls; its +Inf bucket equals its count."""
    counts = scrape.values(f"{DURATION}_count", BREAKER, OUTCOME)
    assert counts == scrape.values(P[names.CALLS], BREAKER, OUTCOME)
    infinite = {
        (ls[BREAKER], ls[OUTCOME]): value
        for ls, value in scrape.samples(f"{DURATION}_bucket")
        if math.isinf(float(ls["le"]))
    }
    assert infinite == counts
    assert all(value >= 0 for value in scrape.values(f"{DURATION}_sum", BREAKER, OUTCOME).values())


def test_call_duration_buckets_resolve_sub_second_latencies(scrape: Scrape) -> None:
    """The duration histogram has several bucket bounds below one second (latency percentiles need them)."""
    bounds = {float(ls["le"]) for ls, _ in scrape.samples(f"{DURATION}_bucket")}
    assert len({b for b in bounds if 0 < b < 1}) >= 4, sorted(bounds)


def test_retries_by_reason(scrape: Scrape) -> None:
    """otelres_retries_total counts each retry made, by breaker and reason."""
    assert scrape.values(P[names.RETRIES], BREAKER, REASON) == {(API, "connect"): 3, (FLAKY, "connect"): 1}


def test_suppressed_retries_by_reason(scrape: Scrape) -> None:
    """otelres_retries_suppressed_total counts the retry a deadline and the one an open circuit stopped."""
    assert scrape.values(P[names.RETRIES_SUPPRESSED], BREAKER, REASON) == {
        (API, "deadline"): 1,
        (FLAKY, "circuit_open"): 1,
    }


def test_circuit_state_gauge(scrape: Scrape) -> None:
    """otelres_circuit_state is 1 for each breaker's current state and 0 for its other states."""
    state = scrape.values(P[names.CIRCUIT_STATE], BREAKER, STATE)
    assert set(state) == {(b, s) for b in (API, FLAKY) for s in names.STATES}
    assert {key for key, value in state.items() if value == 1} == {(API, "closed"), (FLAKY, "open")}
    assert sum(state.values()) == 2


def test_circuit_transitions(scrape: Scrape) -> None:
    """otelres_circuit_transitions_total counts the trip from closed to open."""
    assert scrape.values(P[names.CIRCUIT_TRANSITIONS], BREAKER, FROM, TO) == {(FLAKY, "closed", "open"): 1}
