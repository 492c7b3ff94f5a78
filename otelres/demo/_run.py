"""The demo: a flaky upstream, an application's plain HTTP calls made resilient by
``otelres.instrument()`` alone, and a live view.

The workload (:mod:`otelres.demo._workload`) is ordinary application code:
``requests.get()`` from threads and ``httpx.AsyncClient().get()`` from an
asyncio task, with no otelres in it. ``otelres.instrument()``, with settings
sized for a 30 s story, gives those calls a circuit breaker and jittered
retries, and turns telemetry on: traces go where ``OTEL_*`` says (nowhere by
default), metrics to Prometheus with ``prometheus_port``. A listener counts
what otelres did; each second the view prints a line, and every transition of
the breaker is printed as it happens.

otelres's own structlog events (a retry, an exhausted call, a transition) tell
the same story line by line, dozens a second during the outage; for the length
of the demo structlog keeps errors only, written to stderr as one key=value
line each, so that the screen is the view's.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, TextIO

import structlog

import otelres
from otelres import Event, Listener, Transition, _config, _instrument, _prometheus, telemetry
from otelres._registry import default_registry
from otelres._sdk import Signal, exporter_names
from otelres.demo._upstream import PHASES, FlakyUpstream, Phase
from otelres.demo._workload import Workload, available_clients

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence

    from otelres._breaker import CircuitBreaker

__all__ = ["DEMO_SETTINGS", "DemoError", "run_demo"]

#: What the demo passes to ``otelres.instrument()``: tighter than the defaults,
#: so that the breaker trips, probes and closes within half a minute.
DEMO_SETTINGS: dict[str, Any] = {
    "enabled": True,
    "breaker": {
        "failure_rate": 0.5,
        "minimum_calls": 10,
        "window_seconds": 5.0,
        "open_seconds": 2.0,
        "open_backoff": 2.0,
        "max_open_seconds": 8.0,
        "half_open_calls": 1,
    },
    "retry": {"attempts": 3, "base_delay": 0.05, "max_delay": 0.5, "retry_after_cap": 2.0},
    "budget": {"ratio": 0.2, "min_retries": 3},
}


class DemoError(Exception):
    """The demo cannot run: a port in use, no HTTP client library installed."""


class _Screen:
    """Whole lines to the output, one writer at a time, flushed at once."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._lock = threading.Lock()

    def __call__(self, line: str = "") -> None:
        with self._lock:
            self._out.write(line + "\n")
            self._out.flush()


_NOTES = {
    ("open", "half_open"): "letting a probe through",
    ("half_open", "open"): "the probe failed",
    ("half_open", "closed"): "the probe succeeded",
}


class _Tally(Listener):
    """Counts what otelres reports for the upstream's breaker, per second and in
    total, and prints each transition as it happens.
    """

    per_call = True  # outcomes come with the call events, which only per-call listeners hear

    def __init__(self, breaker: str, screen: _Screen, elapsed: Callable[[], float]) -> None:
        self._breaker = breaker
        self._screen = screen
        self._elapsed = elapsed
        self._lock = threading.Lock()
        self.second: collections.Counter[str] = collections.Counter()
        self.total: collections.Counter[str] = collections.Counter()

    def _count(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                self.second[key] += 1
                self.total[key] += 1

    def take_second(self) -> collections.Counter[str]:
        """The counts since the last call."""
        with self._lock:
            second, self.second = self.second, collections.Counter()
        return second

    def on_event(self, event: Event) -> None:
        if event.breaker != self._breaker:
            return
        if event.kind == "transition" and event.transition is not None:
            self._transition(event.transition)
        elif event.kind == "retry":
            self._count("retries", f"retry:{event.reason}")
        elif event.kind == "retry_suppressed":
            self._count("suppressed", f"suppressed:{event.reason}")
        elif event.kind == "call":
            self._count(event.outcome)

    def _transition(self, transition: Transition) -> None:
        was, now = transition.from_state.value, transition.to_state.value
        notes = [_NOTES.get((was, now), "")]
        if was == "closed":
            notes = [f"{transition.failure_rate:.0%} of the attempts in the window failed"]
        breaker = _breaker(self._breaker)
        if now == "open" and breaker is not None:
            notes.append(f"rejecting calls for {breaker.retry_after():.0f} s")
        note = "; ".join(filter(None, notes))
        suffix = f" ({note})" if note else ""
        self._screen(f"   >> {self._elapsed():5.1f}s  circuit {was} -> {now}{suffix}")
        self._count("transitions", f"to:{now}")


@contextlib.contextmanager
def _quiet_structlog() -> Iterator[None]:
    """Keep structlog's errors only, to stderr, one line each; restored afterwards."""
    was_configured = structlog.is_configured()
    saved = structlog.get_config()
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.KeyValueRenderer(key_order=["level", "event"], drop_missing=True),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    try:
        yield
    finally:
        if was_configured:
            structlog.configure(**saved)
        else:
            structlog.reset_defaults()


@contextlib.contextmanager
def _environ(changes: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the block, then put them back as they were."""
    saved = {name: os.environ.get(name) for name in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _prometheus_env(port: int) -> dict[str, str]:
    """Add Prometheus to the metrics exporters the environment asks for."""
    env = os.environ
    exporters = env.get("OTEL_METRICS_EXPORTER")
    if exporters is None:  # an OTLP endpoint alone means OTLP metrics too: keep them
        otlp = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
        exporters = "otlp" if otlp else ""
    wanted = [name.strip() for name in exporters.split(",") if name.strip() and name.strip() != "none"]
    if "prometheus" not in wanted:
        wanted.append("prometheus")
    return {
        "OTEL_METRICS_EXPORTER": ",".join(wanted),
        # Loopback unless the environment says otherwise (a container publishing it sets 0.0.0.0).
        "OTEL_EXPORTER_PROMETHEUS_HOST": env.get("OTEL_EXPORTER_PROMETHEUS_HOST", "127.0.0.1"),
        "OTEL_EXPORTER_PROMETHEUS_PORT": str(port),
    }


def _otlp_url(signal: Signal) -> str:
    """Where the OTLP exporter of ``signal`` sends (as the exporter reads the variables)."""
    env = os.environ
    own = env.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")
    if own:
        return own
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318")
    protocol = env.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL") or env.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    return base if protocol.strip() == "grpc" else f"{base.rstrip('/')}/v1/{signal}"


def _destination(signal: Signal) -> str:
    """Where the SDK set up from ``OTEL_*`` sends ``signal`` (``traces``/``metrics``)."""
    names = [n for n in exporter_names(signal, os.environ) if n != "prometheus"]
    if not names:
        return "to the application's own provider"
    return ", ".join(
        f"OTLP to {_otlp_url(signal)}" if name.startswith("otlp") else f"to the {name} exporter"
        for name in names
    )


def _telemetry_lines(prometheus_port: int | None) -> list[str]:
    """Where traces and metrics go, now that ``instrument()`` set them up."""
    active = telemetry.active()
    service = os.environ.get("OTEL_SERVICE_NAME", "otelres-demo")
    if active["traces"]:
        traces = f"  traces: {_destination('traces')}, service {service}"
    else:
        traces = "  traces: off; set OTEL_EXPORTER_OTLP_ENDPOINT (Jaeger: http://localhost:4318) to send them"
    lines = [traces]
    if prometheus_port is not None and active["metrics"]:
        lines.append(f"  metrics at http://127.0.0.1:{prometheus_port}/metrics (Prometheus)")
    others = [n for n in exporter_names("metrics", os.environ) if n != "prometheus"]
    if active["metrics"] and (others or prometheus_port is None):
        lines.append(f"  metrics: {_destination('metrics')}")
    elif not active["metrics"]:
        lines.append("  metrics: off; --prometheus-port N serves them at /metrics")
    return lines


def _header(
    upstream: FlakyUpstream, seconds: float, workers: int, clients: list[str], prometheus_port: int | None
) -> list[str]:
    breaker, retry, budget = DEMO_SETTINGS["breaker"], DEMO_SETTINGS["retry"], DEMO_SETTINGS["budget"]
    callers = []
    if "requests" in clients:
        callers.append(f"requests.get() from {workers} thread{'s' if workers > 1 else ''}")
    if "httpx" in clients:
        callers.append("httpx.AsyncClient().get() from an asyncio task")
    missing = [name for name in ("requests", "httpx") if name not in clients]
    script = ", ".join(phase.name for phase in upstream.phases)
    lines = [
        f"otelres demo: a flaky upstream at {upstream.url} for {seconds:g} s: {script}",
        f"  workload: plain {', '.join(callers)}",
        "            (no otelres code: otelres.instrument() alone gives them the breaker and the retries)",
    ]
    if missing:
        extra = ",".join(missing)
        lines.append(f"            ({' and '.join(missing)} not installed: pip install 'otelres[{extra}]')")
    lines += [
        (
            f"  breaker {upstream.url.rstrip('/')}: opens at {breaker['failure_rate']:.0%} failed attempts "
            f"over {breaker['window_seconds']:g} s (>= {breaker['minimum_calls']}), "
            f"{breaker['open_seconds']:g} s doubling to {breaker['max_open_seconds']:g} s"
        ),
        (
            f"  retries: up to {retry['attempts']} attempts, {retry['base_delay'] * 1000:g}-"
            f"{retry['max_delay'] * 1000:g} ms jittered backoff, Retry-After up to "
            f"{retry['retry_after_cap']:g} s, budget {budget['ratio']:.0%} (min {budget['min_retries']})"
        ),
        *_telemetry_lines(prometheus_port),
        "  log events: otelres's structlog events: errors only, to stderr (the view tells the same story)",
        "",
        (
            f"{'t':>6}  {'upstream':<21} {'circuit':<10}| {'ok':>4} {'failed':>6} {'rejected':>8} | "
            f"{'retries':>7} {'suppressed':>10} | {'upstream saw':>12}"
        ),
    ]
    return lines


def _breaker(name: str) -> CircuitBreaker | None:
    """The breaker ``name``, if the integrations created it (looking does not create it)."""
    for breaker in default_registry().breakers():
        if breaker.name == name:
            return breaker
    return None


def _line(elapsed: float, phase: Phase, rate: float, state: str, second: Mapping[str, int], hits: int) -> str:
    upstream = f"{phase.name} ({rate:.0%} fail)"
    return (
        f"{elapsed:>5g}s  {upstream:<21} {state:<10}| {second.get('success', 0):>4} "
        f"{second.get('failure', 0):>6} {second.get('rejected', 0):>8} | {second.get('retries', 0):>7} "
        f"{second.get('suppressed', 0):>10} | {hits:>12}"
    )


def _breakdown(totals: Mapping[str, int], prefix: str) -> str:
    parts = [f"{key[len(prefix) :]} {n}" for key, n in sorted(totals.items()) if key.startswith(prefix)]
    return f" ({', '.join(parts)})" if parts else ""


def _upstream_summary(upstream: Mapping[str, int]) -> str:
    answers = {"ok": "x 200", "503": "x 503", "reset": "connections reset"}
    served = ", ".join(f"{upstream[what]} {label}" for what, label in answers.items() if upstream.get(what))
    return f"the upstream saw {sum(upstream.values())} requests: {served or 'none'}"


def _summary(totals: Mapping[str, int]) -> str:
    return (
        f"total: {totals.get('success', 0)} ok, {totals.get('failure', 0)} failed, "
        f"{totals.get('rejected', 0)} rejected without touching the upstream; "
        f"{totals.get('retries', 0)} retries{_breakdown(totals, 'retry:')}, "
        f"{totals.get('suppressed', 0)} suppressed{_breakdown(totals, 'suppressed:')}; "
        f"{totals.get('transitions', 0)} transitions"
    )


@contextlib.contextmanager
def _instrumented(prometheus_port: int | None) -> Iterator[None]:
    """``otelres.instrument()`` with the demo's settings for the block (and the
    environment it needs); the process's settings, structlog configuration and
    environment come back afterwards, and an instrumentation it already had stays.
    """
    env = {"OTEL_SERVICE_NAME": os.environ.get("OTEL_SERVICE_NAME", "otelres-demo")}
    if prometheus_port is not None:
        env.update(_prometheus_env(prometheus_port))
    with contextlib.ExitStack() as stack:
        stack.enter_context(_quiet_structlog())
        stack.enter_context(_environ(env))
        stack.callback(_config.configure, _config._current)
        already = _instrument._instrumented
        # The port asked for and no other (a service tries several, one per worker).
        ports: dict[str, Any] = {} if prometheus_port is None else {"prometheus_ports": 1}
        otelres.instrument(**DEMO_SETTINGS, **ports)
        if not already:
            stack.callback(otelres.uninstrument)
        _, served, error = _prometheus.serving()
        if prometheus_port is not None and served != prometheus_port:
            if error is not None:
                reason = error.strerror
            elif served is not None:
                reason = f"this process serves them on port {served} already"
            else:
                reason = "the application's own MeterProvider is in place"
            raise DemoError(f"cannot serve /metrics on 127.0.0.1:{prometheus_port}: {reason}")
        yield


def _watch(upstream: FlakyUpstream, tally: _Tally, screen: _Screen, seconds: float) -> bool:
    """Print the view's line each second for ``seconds``; False if interrupted (Ctrl-C)."""
    name = upstream.url.rstrip("/")
    hits = 0
    tick = 1
    try:
        while True:
            at = min(float(tick), seconds)
            time.sleep(max(at - upstream.elapsed(), 0.0))
            # The counts are the last second's: so is the upstream's phase (at its middle).
            phase, failure_rate = upstream.at(max(at - 0.5, 0.0))
            breaker = _breaker(name)
            state = breaker.state.value if breaker is not None else "-"
            seen = upstream.requests
            screen(_line(at, phase, failure_rate, state, tally.take_second(), seen - hits))
            hits = seen
            if at >= seconds:
                return True
            tick += 1
    except KeyboardInterrupt:
        screen("interrupted")
        return False


def run_demo(
    *,
    duration: float | None = None,
    workers: int = 4,
    rate: float = 40.0,
    phases: Sequence[Phase] = PHASES,
    prometheus_port: int | None = None,
    out: TextIO | None = None,
) -> dict[str, int]:
    """Run the demo for ``duration`` seconds (the whole script of ``phases`` by default).

    ``workers`` threads call ``requests.get()`` and one asyncio task calls
    ``httpx.AsyncClient().get()``, about ``rate`` calls per second in all.
    With ``prometheus_port``, /metrics is served on 127.0.0.1 at that port.
    Returns the totals (``success``, ``failure``, ``rejected``, ``retries``,
    ``suppressed``, ``transitions``, ``to:<state>``, ``retry:<reason>``,
    ``suppressed:<reason>``, ``upstream_requests``, and ``interrupted`` after a
    Ctrl-C), so that a test can check the story it told.
    """
    seconds = duration if duration is not None else sum(phase.seconds for phase in phases)
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"duration must be a number of seconds > 0, not {seconds}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, not {workers}")
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"rate must be > 0 calls per second, not {rate}")
    clients = available_clients()
    if not clients:
        raise DemoError("the demo needs requests or httpx: pip install 'otelres[demo]'")
    screen = _Screen(out if out is not None else sys.stdout)
    upstream = FlakyUpstream(phases)
    tally = _Tally(upstream.url.rstrip("/"), screen, upstream.elapsed)
    workload = Workload(upstream.url, workers=workers, rate=rate, clients=clients)
    with contextlib.ExitStack() as stack:
        stack.callback(upstream.stop)
        stack.enter_context(_instrumented(prometheus_port))
        for line in _header(upstream, seconds, workers, clients, prometheus_port):
            screen(line)
        otelres.add_listener(tally)
        stack.callback(otelres.remove_listener, tally)
        upstream.start()
        workload.start()
        stack.callback(workload.stop)
        finished = _watch(upstream, tally, screen, seconds)
    totals = dict(tally.total)
    served = dict(upstream.counts)
    totals["upstream_requests"] = sum(served.values())
    if not finished:
        totals["interrupted"] = 1
    screen()
    screen(_upstream_summary(served))
    screen(f"the application saw: {workload.seen.summary()}")
    screen(_summary(totals))
    return totals
