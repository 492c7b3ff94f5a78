"""otelres's server middleware under load, in one run: ``python benchmarks/server.py [--quick]``.

Requests per second of a hello-world route (a 13-byte ``text/plain`` 200) under
gunicorn (WSGI: one ``gthread`` worker with 4 threads) and uvicorn (ASGI: one
worker), driven by ``wrk`` (1 thread, 8 keep-alive connections) on 127.0.0.1.
Three configurations per server:

- bare: the app alone;
- OpenTelemetry alone: ``opentelemetry.instrumentation.{wsgi,asgi}.OpenTelemetryMiddleware``
  around the app, with global SDK providers set in the server process before the app
  is built (TracerProvider + BatchSpanProcessor over an exporter that drops the spans;
  MeterProvider + InMemoryMetricReader);
- OpenTelemetry + otelres: the same, wrapped by otelres's ``ResilienceMiddleware``
  (outermost), with ``otelres.telemetry.enable()``.

Each of the six (server, configuration) pairs is its own server process, started
once (this file's ``make_wsgi()`` / ``make_asgi()`` factories, the configuration
chosen by the ``OTELRES_BENCH_CONFIG`` environment variable) and warmed up; then
every round runs wrk once against each of the six, in a freshly shuffled order.
Figures are medians of the rounds. ``GET /_bench/stats`` (answered inside the
app, so it goes through the middleware like any request) reports the
configuration and the spans exported, which the run checks at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _harness as h  # noqa: E402

ENV = "OTELRES_BENCH_CONFIG"
CONFIGS = ("bare", "otel", "otelres")
LABELS = {"bare": "bare app", "otel": "OpenTelemetry alone", "otelres": "OpenTelemetry + otelres"}
SERVERS = ("gunicorn", "uvicorn")
BODY = b"Hello, world!"
STATS_PATH = "/_bench/stats"
WRK_THREADS = 1
WRK_CONNECTIONS = 8
GUNICORN_THREADS = 4
DISTS = (
    "gunicorn",
    "uvicorn",
    "opentelemetry-sdk",
    "opentelemetry-instrumentation-wsgi",
    "opentelemetry-instrumentation-asgi",
)


# -- the apps (built in the server process) ---------------------------------------------------------


class _Telemetry:
    """The server process's SDK providers, set globally, and a count of the spans dropped."""

    def __init__(self) -> None:
        from opentelemetry import metrics, trace  # noqa: PLC0415
        from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: PLC0415
        from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
        from opentelemetry.sdk.trace.export import (  # noqa: PLC0415
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )

        telemetry = self
        self.exported = 0

        class Dropping(SpanExporter):
            def export(self, spans: Sequence[Any]) -> SpanExportResult:
                telemetry.exported += len(spans)
                return SpanExportResult.SUCCESS

        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(BatchSpanProcessor(Dropping()))
        self.meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
        trace.set_tracer_provider(self.tracer_provider)
        metrics.set_meter_provider(self.meter_provider)

    def stats(self) -> dict[str, Any]:
        self.tracer_provider.force_flush()
        return {"spans": self.exported}


def _config() -> tuple[str, _Telemetry | None]:
    config = os.environ.get(ENV, "bare")
    if config not in CONFIGS:
        raise SystemExit(f"{ENV}={config!r}: expected one of {', '.join(CONFIGS)}")
    telemetry = _Telemetry() if config != "bare" else None
    if config == "otelres":
        import otelres.telemetry  # noqa: PLC0415

        otelres.telemetry.enable()
    return config, telemetry


def _stats(config: str, telemetry: _Telemetry | None) -> bytes:
    data = {"config": config, "pid": os.getpid(), **(telemetry.stats() if telemetry else {"spans": 0})}
    return json.dumps(data).encode()


def make_wsgi() -> Callable[..., Any]:
    """The WSGI app of the configuration in ``OTELRES_BENCH_CONFIG`` (gunicorn's factory)."""
    config, telemetry = _config()

    def hello(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        body = _stats(config, telemetry) if environ.get("PATH_INFO") == STATS_PATH else BODY
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    app: Callable[..., Any] = hello
    if config != "bare":
        from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware  # noqa: PLC0415

        app = OpenTelemetryMiddleware(app)
    if config == "otelres":
        from otelres.wsgi import ResilienceMiddleware  # noqa: PLC0415

        app = ResilienceMiddleware(app, deadline_header="X-Request-Timeout")
    return app


def make_asgi() -> Callable[..., Any]:
    """The ASGI app of the configuration in ``OTELRES_BENCH_CONFIG`` (uvicorn's factory)."""
    config, telemetry = _config()
    hello_length = str(len(BODY)).encode()

    async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope.get("path") == STATS_PATH:
            body, length = _stats(config, telemetry), None
        else:
            body, length = BODY, hello_length
        headers = [(b"content-type", b"text/plain"), (b"content-length", length or str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    app: Callable[..., Any] = hello
    if config != "bare":
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware  # noqa: PLC0415

        app = OpenTelemetryMiddleware(app)
    if config == "otelres":
        from otelres.asgi import ResilienceMiddleware  # noqa: PLC0415

        app = ResilienceMiddleware(app, deadline_header="X-Request-Timeout")
    return app


# -- the server processes ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """One (server, configuration) pair: a gunicorn or uvicorn process on a loopback port."""

    def __init__(self, server: str, config: str) -> None:
        self.server = server
        self.config = config
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.samples: list[float] = []
        bind = f"127.0.0.1:{self.port}"
        if server == "gunicorn":
            cmd = [
                *("-m", "gunicorn", "--chdir", str(HERE), "-b", bind, "-w", "1", "-k", "gthread"),
                *("--threads", str(GUNICORN_THREADS), "--log-level", "warning", "server:make_wsgi()"),
            ]
        else:
            cmd = [
                *("-m", "uvicorn", "--app-dir", str(HERE), "--factory", "--host", "127.0.0.1"),
                *("--port", str(self.port), "--workers", "1", "--log-level", "warning"),
                *("--no-access-log", "--lifespan", "off", "server:make_asgi"),
            ]
        env = {**os.environ, ENV: config, "PYTHONPATH": str(HERE)}
        self.proc = subprocess.Popen([sys.executable, *cmd], env=env, stdin=subprocess.DEVNULL)

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + STATS_PATH, timeout=5) as response:  # noqa: S310 (loopback)
            return json.loads(response.read())

    def wait_ready(self, timeout: float = 20.0) -> None:
        give_up = time.monotonic() + timeout
        while time.monotonic() < give_up:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.server} ({self.config}) exited with code {self.proc.returncode}")
            try:
                stats = self.stats()
            except OSError:
                time.sleep(0.1)
                continue
            if stats["config"] != self.config:
                raise RuntimeError(f"{self.server}: expected {self.config}, the app says {stats['config']}")
            return
        raise RuntimeError(f"{self.server} ({self.config}) did not answer within {timeout:g} s")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- the load generator -----------------------------------------------------------------------------

_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
_TOTAL = re.compile(r"(\d+) requests in")
_BAD = re.compile(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)")


def wrk(url: str, seconds: int) -> tuple[float, int, str]:
    """Requests per second, requests made, and any errors wrk reported ('' when none)."""
    cmd = [
        *("wrk", "-t", str(WRK_THREADS), "-c", str(WRK_CONNECTIONS)),
        *("-d", f"{seconds}s", "--timeout", "5s", url + "/"),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
    rps, total = _RPS.search(out), _TOTAL.search(out)
    if rps is None or total is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    bad = "; ".join(m.group(0) for m in _BAD.finditer(out))
    return float(rps.group(1)), int(total.group(1)), bad


# -- the run ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a ~25 s smoke run (fewer, shorter rounds)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 7; quick 3)")
    parser.add_argument("--seconds", type=int, help="wrk seconds per run (default 2; quick 1)")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up seconds per server (default 1)")
    parser.add_argument("--seed", type=int, default=20240601, help="seed of the shuffles")
    parser.add_argument("--only", default="", help="comma-separated: gunicorn,uvicorn")
    args = parser.parse_args(argv)
    # bounded: wrk takes whole seconds; the run stays short
    args.rounds = max(1, min(args.rounds or (3 if args.quick else 7), 50))
    args.seconds = max(1, min(args.seconds or (1 if args.quick else 2), 30))
    args.warmup = max(0, min(args.warmup, 10))
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    args.servers = [s for s in SERVERS if not only or s in only]
    return args


def print_header(args: argparse.Namespace, wrk_version: str) -> None:
    import otelres  # noqa: PLC0415

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print("## otelres's server middleware under load\n")
    print(
        f"- python {platform.python_version()} ({platform.python_implementation()}), {platform.system()} "
        f"{platform.machine()}, {cpus} CPUs usable"
    )
    print(f"- otelres {otelres.__version__}; " + ", ".join(f"{d} {h.version_of(d)}" for d in DISTS))
    print(
        f"- gunicorn: 1 worker, `-k gthread --threads {GUNICORN_THREADS}`; uvicorn: 1 worker, "
        f"http {_uvicorn_http()}, loop {_uvicorn_loop()}; hello-world route, {len(BODY)}-byte 200"
    )
    print(
        f"- load: {wrk_version}, `-t{WRK_THREADS} -c{WRK_CONNECTIONS}` (keep-alive) on 127.0.0.1; "
        f"server, wrk and the span exporter thread share the CPUs"
    )
    print(
        f"- {'quick' if args.quick else 'full'} run: {args.rounds} interleaved rounds x {args.seconds:g} s "
        f"per configuration (after a {args.warmup:g} s warm-up each); figures are medians of the rounds; "
        f"IQR is the rounds' interquartile range over the median; seed {args.seed}"
    )
    load_avg = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(f"- load average at start: {load_avg}")


def _uvicorn_http() -> str:
    return "httptools" if h.optional_import("httptools") is not None else "h11"


def _uvicorn_loop() -> str:
    return "uvloop" if h.optional_import("uvloop") is not None else "asyncio"


def server_table(procs: dict[str, ServerProcess], spans: dict[str, float]) -> str:
    bare = statistics.median(procs["bare"].samples)
    rows = []
    for config in CONFIGS:
        samples = procs[config].samples
        median = statistics.median(samples)
        rows.append(
            [
                LABELS[config],
                f"{median:,.0f}",
                f"{h.spread(samples):.0%}",
                f"{max(samples):,.0f}",
                f"{median / bare:.3f}x",
                f"{spans[config]:.2f}",
            ]
        )
    return h.table(["configuration", "req/s", "IQR", "max req/s", "x bare", "spans/req"], rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wrk_path = shutil.which("wrk")
    if wrk_path is None:
        print("wrk is not installed (Debian: apt-get install -y wrk)", file=sys.stderr)
        return 2
    wrk_version = subprocess.run([wrk_path, "--version"], capture_output=True, text=True, check=False)
    version = (wrk_version.stdout or wrk_version.stderr).split("Copyright")[0].strip()
    started = time.perf_counter()
    rng = random.Random(args.seed)
    procs = {(s, c): ServerProcess(s, c) for s in args.servers for c in CONFIGS}
    problems: list[str] = []
    totals = dict.fromkeys(procs, 0)
    try:
        for proc in procs.values():
            proc.wait_ready()
        print_header(args, version)
        if args.warmup:
            for proc in procs.values():
                wrk(proc.url, args.warmup)
        before = {key: proc.stats()["spans"] for key, proc in procs.items()}
        keys = list(procs)
        for _ in range(args.rounds):
            rng.shuffle(keys)
            for key in keys:
                rps, total, bad = wrk(procs[key].url, args.seconds)
                procs[key].samples.append(rps)
                totals[key] += total
                if bad:
                    problems.append(f"{key[0]} {key[1]}: {bad}")
        after = {key: proc.stats()["spans"] for key, proc in procs.items()}
    finally:
        for proc in procs.values():
            proc.close()
    summary = []
    for server in args.servers:
        by_config = {c: procs[server, c] for c in CONFIGS}
        # +1: the /_bench/stats request that read 'before' is counted in 'after'
        spans = {c: (after[server, c] - before[server, c]) / max(1, totals[server, c] + 1) for c in CONFIGS}
        print(f"\n### {server}\n")
        print(server_table(by_config, spans))
        otel, ours = by_config["otel"].samples, by_config["otelres"].samples
        ratio = statistics.median(ours) / statistics.median(otel)
        paired = statistics.median(b / a for a, b in zip(otel, ours, strict=True))
        summary.append(
            [
                server,
                f"{statistics.median(by_config['bare'].samples):,.0f}",
                f"{statistics.median(otel):,.0f}",
                f"{statistics.median(ours):,.0f}",
                f"{ratio:.3f}",
                f"{paired:.3f}",
                f"{1 - ratio:.1%}",
                "yes" if ratio >= 0.95 else "**NO**",
            ]
        )
        if spans["bare"] != 0:
            problems.append(f"{server} bare: {spans['bare']:.2f} spans per request (expected none)")
        problems.extend(
            f"{server} {config}: {spans[config]:.2f} spans per request (expected >= 1)"
            for config in ("otel", "otelres")
            if spans[config] < 1
        )
    print("\n### summary\n")
    print(
        "'ratio' is the median req/s of OpenTelemetry + otelres over that of OpenTelemetry alone "
        "(what 'goal' judges: otelres may cost at most 5 % of the throughput); 'paired' is the median "
        "over the rounds of the ratio within each round; 'costs' is 1 - ratio.\n"
    )
    header = ["server", "bare req/s", "OTel alone req/s", "OTel + otelres req/s", "ratio", "paired", "costs"]
    print(h.table([*header, "goal >= 0.95"], summary))
    if problems:
        print("\nproblems:\n")
        for problem in problems:
            print(f"- {problem}")
    print(f"\ntotal run time: {time.perf_counter() - started:.1f} s")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
