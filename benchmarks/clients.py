"""otelres's overhead on real client calls, in one run: ``python benchmarks/clients.py [--quick]``.

Clients (see benchmarks/README.md, "Client calls", for the method and the choices):

1. requests      ``Session.get`` of a small 200 response from an HTTP server on loopback
2. httpx         ``Client.get``, the same server
3. httpx async   ``await AsyncClient.get``, the same server, N awaits per run on one event loop
4. psycopg       ``conn.execute("SELECT 1").fetchone()`` on a PostgreSQL started for the run
5. asyncpg       ``await conn.fetchval("SELECT 1")``, the same PostgreSQL, N awaits per run on the
                 same event loop as httpx async
6. redis         ``client.get("k")`` (redis-py's sync client) on a redis-server started for the run

Each client is measured in three configurations, interleaved (every round runs
each configuration once, in a shuffled order):

- without otelres: nothing instrumented;
- OpenTelemetry alone: OpenTelemetry's own instrumentation of the library, with
  an SDK TracerProvider (BatchSpanProcessor over an exporter that drops the
  spans) and an SDK MeterProvider (InMemoryMetricReader);
- OpenTelemetry + otelres: the same, plus otelres's integration of the library,
  its telemetry on through the same providers.

Every span exported during a configuration's runs is counted: the spans/call
column, and in the summary otelres's spans/call and whether it exported exactly
as many spans per call as OpenTelemetry alone (``1 span``: the goal is
OpenTelemetry's CLIENT span alone for a successful single-attempt call), beside
the time ratio (goal <= 1.05).

Instrumenting is global to the process, so a configuration is switched on just
before each of its runs and off just after, outside the timing
(``Contender.before_round`` / ``after_round``); each configuration keeps its
own client objects (session, client, connection), made while it was on. The
HTTP server runs in a subprocess (this file with ``--serve-http``), so that its
work does not take the client's GIL; PostgreSQL is started with initdb/pg_ctl
in a temporary directory (as the ``postgres`` user when run as root), and
redis-server on a free loopback port in a temporary directory (``--save ''
--appendonly no``), each only when a client needing it runs, and stopped at
the end.

Memory (``--memory``; on in a full run without ``--only``, off in a ``--quick``
one unless asked for, and on with ``--only`` naming ``memory``): after the
timing rounds, for each client, OpenTelemetry alone and OpenTelemetry + otelres,
each on new client objects: a warm-up (2,000 calls; ``--quick`` 500),
``tracemalloc`` on for its last 500 (``--quick`` 100: tracing makes a call ~3x
slower), the span processor flushed, ``gc.collect()``, a snapshot, N more calls
(5,000; ``--quick`` 1,000), the span processor flushed (its queue drained: what
the SDK holds before export is not otelres's), ``gc.collect()``, a second
snapshot: the net bytes the calls left allocated, per call (goal: otelres adds
0 to OpenTelemetry alone's), and the allocation site that grew the most.
``--only memory`` measures the memory of every client and times none;
``--only redis,memory`` times redis and measures its memory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import gc
import importlib
import operator
import os
import platform
import pwd
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from itertools import repeat
from pathlib import Path
from typing import TYPE_CHECKING, Any

import _harness as h
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

import otelres
import otelres.telemetry
from otelres import _events
from otelres._instrument import INTEGRATIONS
from otelres.telemetry import names as telemetry_names

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from opentelemetry.sdk.trace import ReadableSpan

requests = h.optional_import("requests")
httpx = h.optional_import("httpx")
psycopg = h.optional_import("psycopg")
asyncpg = h.optional_import("asyncpg")
redis = h.optional_import("redis")
uvicorn = h.optional_import("uvicorn")

Contender = h.Contender

PLAIN = "without otelres"
OTEL = "OpenTelemetry alone"
OTELRES = "OpenTelemetry + otelres"
CONFIGS = (PLAIN, OTEL, OTELRES)
KINDS = {PLAIN: h.BASELINE, OTEL: h.REFERENCE, OTELRES: h.OTELRES}

#: The goal: otelres adds at most 5 % to a call instrumented by OpenTelemetry alone.
GOAL = 1.05

SERVERS = ("asyncio", "uvicorn", "threading")
BODY = b'{"ok": true}\n'
HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
RESPONSE = HEAD % len(BODY) + BODY
SQL = "SELECT 1"

DISTS = (
    "requests",
    "httpx",
    "psycopg",
    "asyncpg",
    "redis",
    "opentelemetry-sdk",
    "opentelemetry-instrumentation-requests",
    "opentelemetry-instrumentation-httpx",
    "opentelemetry-instrumentation-psycopg",
    "opentelemetry-instrumentation-asyncpg",
    "opentelemetry-instrumentation-redis",
)

#: The client paths, in the order they run (``--only`` names them, and ``memory``).
CLIENTS = ("requests", "httpx", "httpx-async", "psycopg", "asyncpg", "redis")
ASYNC_CLIENTS = {"httpx-async", "asyncpg"}
REDIS_KEY, REDIS_VALUE = "k", b"v"


# -- the HTTP server (a subprocess: this file with --serve-http KIND) -----------------------------


class _Answer(asyncio.Protocol):
    """Answers every request (a GET without a body) with the same small 200, keeping the
    connection open.
    """

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.pending = b""

    def data_received(self, data: bytes) -> None:
        self.pending += data
        while (end := self.pending.find(b"\r\n\r\n")) >= 0:
            self.pending = self.pending[end + 4 :]
            self.transport.write(RESPONSE)


async def _asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})


def _listening_socket() -> socket.socket:
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say so; without it,
    # a response written in two parts waits for the client's delayed ACK (40 ms a call).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    return sock


def serve_http(kind: str) -> int:
    """Serve on a free loopback port (printed first) until standard input closes."""

    def exit_when_parent_goes() -> None:
        sys.stdin.read()
        os._exit(0)

    threading.Thread(target=exit_when_parent_goes, daemon=True).start()
    if kind == "threading":
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: PLC0415

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(BODY)))
                self.end_headers()
                self.wfile.write(BODY)

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        print(server.server_address[1], flush=True)
        server.serve_forever()
        return 0
    sock = _listening_socket()
    print(sock.getsockname()[1], flush=True)
    if kind == "uvicorn":
        if uvicorn is None:
            return 1
        config = uvicorn.Config(_asgi_app, log_level="warning", access_log=False, lifespan="off")
        uvicorn.Server(config).run(sockets=[sock])
        return 0

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(_Answer, sock=sock)
        await server.serve_forever()

    asyncio.run(main())
    return 0


class HttpServer:
    """The HTTP server subprocess: :meth:`ready` gives its URL, :meth:`close` stops it."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve-http", kind],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.url = ""

    def ready(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            raise RuntimeError(f"the {self.kind} HTTP server did not start (exit code {self.proc.poll()})")
        self.url = f"http://127.0.0.1:{int(line)}/"
        return self.url

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# -- PostgreSQL ------------------------------------------------------------------------------------


def pg_bin_dir() -> Path | None:
    """The directory of ``initdb`` and ``pg_ctl`` (the newest installed PostgreSQL), or None."""
    found = Path("/usr/lib/postgresql").glob("*/bin")
    for directory in sorted(found, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)[::-1]:
        if (directory / "initdb").exists() and (directory / "pg_ctl").exists():
            return directory
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb and shutil.which("pg_ctl") else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PgServer:
    """A throwaway cluster on 127.0.0.1, trust authentication, in a temporary directory.

    PostgreSQL refuses to run as root: then every command runs as ``postgres``.
    """

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.port = free_port()
        self.user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        self.root = Path(tempfile.mkdtemp(prefix="otelres-bench-pg-"))
        self.data = self.root / "data"
        self.running = False
        if self.user is not None:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    @property
    def url(self) -> str:
        """The same, as asyncpg takes it."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        as_user: dict[str, Any] = {}
        if self.user is not None:
            as_user = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        result = subprocess.run(
            [str(self.bin_dir / tool), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=self.root,
            **as_user,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed ({result.returncode}): {result.stderr.strip()[-300:]}")

    def start(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.root}'",
            "fsync": "off",
            "max_connections": "20",
            "log_min_messages": "fatal",
        }
        with (self.data / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        self.running = True  # from here on, destroy() tries to stop it
        self._run("pg_ctl", "start", "-D", str(self.data), "-w", "-t", "30", "-l", str(self.root / "log"))

    def destroy(self) -> None:
        """Stop the server (if it runs) and remove the cluster."""
        if self.running:
            try:
                self._run("pg_ctl", "stop", "-D", str(self.data), "-w", "-m", "fast")
            except (RuntimeError, subprocess.TimeoutExpired):
                with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                    self._run("pg_ctl", "stop", "-D", str(self.data), "-w", "-m", "immediate")
            self.running = False
        shutil.rmtree(self.root, ignore_errors=True)


# -- redis-server ----------------------------------------------------------------------------------

REDIS_START_TIMEOUT = 10.0


class RedisServer:
    """A redis-server on a free port on 127.0.0.1, in a temporary directory, nothing written to disk
    (``--save '' --appendonly no``), as tests/store/store_servers.py starts one.
    """

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="otelres-bench-redis-"))
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> str:
        """Start it and wait until it accepts connections; put the key the calls read. Its version."""
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.root)]
        command += ["--save", "", "--appendonly", "no"]
        self.proc = proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        watchdog = threading.Timer(REDIS_START_TIMEOUT, proc.kill)
        watchdog.start()
        try:
            assert proc.stdout is not None
            lines: list[str] = []
            for line in proc.stdout:
                lines.append(line)
                if "Ready to accept connections" in line:
                    break
            else:
                raise RuntimeError(f"redis-server did not start: {''.join(lines).strip()[-300:]}")
        finally:
            watchdog.cancel()
        # Keep reading its log so that the pipe never fills up.
        threading.Thread(target=proc.stdout.read, daemon=True).start()
        assert redis is not None
        # A plain client, made and used while no configuration is on.
        client = redis.Redis(host="127.0.0.1", port=self.port)
        try:
            client.set(REDIS_KEY, REDIS_VALUE)
            return str(client.info("server")["redis_version"])
        finally:
            client.close()

    def destroy(self) -> None:
        """Stop the server (if it runs) and remove its directory."""
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(REDIS_START_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)


# -- the SDK providers, shared by the instrumented configurations ---------------------------------


class SpanSink(SpanExporter):
    """An exporter that drops the spans it is given, counting them."""

    def __init__(self) -> None:
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.exported += len(spans)
        return SpanExportResult.SUCCESS


@dataclasses.dataclass
class Sdk:
    """An SDK TracerProvider (BatchSpanProcessor, the SDK's default settings, over a
    :class:`SpanSink`) and MeterProvider (InMemoryMetricReader, collected only at the end).
    """

    tracer_provider: TracerProvider
    sink: SpanSink
    meter_provider: MeterProvider
    reader: InMemoryMetricReader

    @classmethod
    def new(cls) -> Sdk:
        sink = SpanSink()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(BatchSpanProcessor(sink))
        reader = InMemoryMetricReader()
        return cls(tracer_provider, sink, MeterProvider(metric_readers=[reader]), reader)

    def exported(self) -> int:
        """Spans exported so far, every span ended before now included (flushed)."""
        self.tracer_provider.force_flush()
        return self.sink.exported

    def otelres_calls(self) -> int:
        """The sum of the ``otelres.calls`` counter (every outcome, every breaker)."""
        total = 0
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics if data is not None else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == telemetry_names.CALLS:
                        total += sum(
                            int(p.value) for p in metric.data.data_points if isinstance(p, NumberDataPoint)
                        )
        return total

    def close(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


# -- the configurations -----------------------------------------------------------------------------


def load(path: str) -> Any:
    """``module:Class``, instantiated; None when the module or class does not exist."""
    module, _, name = path.partition(":")
    try:
        return getattr(importlib.import_module(module), name)()
    except (ImportError, AttributeError):
        return None


class Switch:
    """Turns one configuration on (before each run) and off (after it), outside the timing.

    otelres's part does what ``otelres.instrument()`` does for one library, with the
    providers given: telemetry on, otelres's instrumentor, then OpenTelemetry's;
    off undoes it in the reverse order, as ``otelres.uninstrument()`` does.
    """

    def __init__(self, config: str, theirs: Any, ours: Any, sdk: Sdk) -> None:
        self.config = config
        self.theirs = theirs
        self.ours = ours
        self.sdk = sdk

    def nothing_on(self) -> None:
        for instrumentor in (self.theirs, self.ours):
            if instrumentor is not None and instrumentor.is_instrumented_by_opentelemetry:
                raise AssertionError(f"{type(instrumentor).__module__} is still instrumented")
        if _events.listeners:
            raise AssertionError(f"otelres listeners are registered: {_events.listeners!r}")

    def on(self) -> None:
        self.nothing_on()
        if self.config == OTELRES:
            otelres.telemetry.enable(
                tracer_provider=self.sdk.tracer_provider, meter_provider=self.sdk.meter_provider
            )
            self.ours.instrument(skip_dep_check=True)
            if not self.ours.is_instrumented_by_opentelemetry:
                raise AssertionError(f"{type(self.ours).__module__} did not instrument")
        if self.config in {OTEL, OTELRES}:
            self.theirs.instrument(
                tracer_provider=self.sdk.tracer_provider, meter_provider=self.sdk.meter_provider
            )
            if not self.theirs.is_instrumented_by_opentelemetry:
                raise AssertionError(f"{type(self.theirs).__module__} did not instrument")
        if self.config == OTELRES:
            active = otelres.telemetry.active()
            if active != {"logs": True, "traces": True, "metrics": True}:
                raise AssertionError(f"otelres.telemetry.active() is {active}")

    def off(self) -> None:
        if self.config in {OTEL, OTELRES}:
            self.theirs.uninstrument()
        if self.config == OTELRES:
            self.ours.uninstrument()
            otelres.telemetry.disable()
        self.nothing_on()


@dataclasses.dataclass
class Row:
    """One configuration of one client: its contender and what its calls made."""

    config: str
    contender: Contender
    calls: int = 0
    spans: int = 0
    #: otelres calls made while opening the configuration's client (a connect).
    opening_calls: int = 0

    @property
    def spans_per_call(self) -> float | None:
        return self.spans / self.calls if self.calls else None


class ClientPath:
    """One client library: a call to make, and the three configurations of it.

    ``opener`` makes a configuration's client objects (called once, while that
    configuration is on) and returns ``(run, check, close)``: ``run(n)`` makes n
    calls, ``check()`` one call whose result it verifies, ``close()`` releases them.
    """

    def __init__(
        self,
        key: str,
        title: str,
        entry: str,
        sdk: Sdk,
        opener: Callable[[], tuple[Callable[[int], Any], Callable[[], Any], Callable[[], Any]]] | None,
        missing: str = "",
    ) -> None:
        self.key = key
        self.title = title
        self.sdk = sdk
        self.opener = opener
        self.rows: list[Row] = []
        self.closers: list[Callable[[], Any]] = []
        _, ours_path, theirs_path = INTEGRATIONS[entry]
        self.theirs = theirs = load(theirs_path)
        self.ours = ours = load(ours_path)
        for config in CONFIGS:
            note = missing
            if not note and opener is None:
                note = "not installed: the client library"
            if not note and config != PLAIN and theirs is None:
                note = f"not installed: {theirs_path.partition(':')[0]}"
            if not note and config == OTELRES and ours is None:
                note = "otelres: integration not available"
            row = Row(config, Contender(config, KINDS[config], None, note))
            if opener is not None and not note:
                self._arm(row, Switch(config, theirs, ours, sdk), opener)
            self.rows.append(row)

    def _arm(self, row: Row, switch: Switch, opener: Callable[..., Any]) -> None:
        state: dict[str, Any] = {}
        mark = [0]

        def run(n: int) -> None:
            row.calls += n
            state["run"](n)

        def before() -> None:
            switch.on()
            check = None
            if not state:
                # Opened outside the counts: a connection made through otelres is a call of its own
                # (counted in ``opening_calls``), and makes its own span.
                before_open = self.sdk.otelres_calls() if row.config == OTELRES else 0
                state["run"], check, close = opener()
                self.closers.append(close)
                if row.config == OTELRES:
                    row.opening_calls = self.sdk.otelres_calls() - before_open
            mark[0] = self.sdk.exported()
            if check is not None:
                row.calls += 1
                check()

        def after() -> None:
            row.spans += self.sdk.exported() - mark[0]
            switch.off()

        row.contender.run = run
        row.contender.before_round = before
        row.contender.after_round = after

    @property
    def contenders(self) -> list[Contender]:
        return [row.contender for row in self.rows]

    def row(self, config: str) -> Row:
        return next(row for row in self.rows if row.config == config)

    def close(self) -> None:
        for close in self.closers:
            with contextlib.suppress(Exception):
                close()


def loop(call: Callable[[], Any]) -> Callable[[int], None]:
    def run(n: int) -> None:
        for _ in repeat(None, n):
            call()

    return run


def aloop(loop_: asyncio.AbstractEventLoop, acall: Callable[[], Awaitable[Any]]) -> Callable[[int], None]:
    async def body(n: int) -> None:
        for _ in repeat(None, n):
            await acall()

    def run(n: int) -> None:
        loop_.run_until_complete(body(n))

    return run


def expect_ok(status: int, body: bytes) -> None:
    if status != 200 or body != BODY:
        raise AssertionError(f"unexpected response: {status} {body!r}")


def requests_opener(url: str) -> Callable[[], Any]:
    def opener() -> tuple[Callable[[int], Any], Callable[[], Any], Callable[[], Any]]:
        assert requests is not None
        session = requests.Session()

        def check() -> None:
            response = session.get(url)
            expect_ok(response.status_code, response.content)

        return loop(functools.partial(session.get, url)), check, session.close

    return opener


def httpx_opener(url: str) -> Callable[[], Any]:
    def opener() -> tuple[Callable[[int], Any], Callable[[], Any], Callable[[], Any]]:
        assert httpx is not None
        client = httpx.Client()

        def check() -> None:
            response = client.get(url)
            expect_ok(response.status_code, response.content)

        return loop(functools.partial(client.get, url)), check, client.close

    return opener


def httpx_async_opener(url: str, event_loop: asyncio.AbstractEventLoop) -> Callable[[], Any]:
    def opener() -> tuple[Callable[[int], Any], Callable[[], Any], Callable[[], Any]]:
        assert httpx is not None
        client = httpx.AsyncClient()

        def check() -> None:
            response = event_loop.run_until_complete(client.get(url))
            expect_ok(response.status_code, response.content)

        def close() -> None:
            event_loop.run_until_complete(client.aclose())

        return aloop(event_loop, functools.partial(client.get, url)), check, close

    return opener


def psycopg_opener(dsn: str) -> Callable[[], Any]:
    def opener() -> tuple[Callable[[int], Any], Callable[[], Any], Callable[[], Any]]:
        assert psycopg is not None
        # Autocommit: each SELECT 1 is a statement of its own, not one of a long transaction
        # (inside which otelres would never retry).
        conn = psycopg.connect(dsn, autocommit=True)

        def call() -> Any:
            return conn.execute(SQL).fetchone()

        def check() -> None:
            if call() != (1,):
                raise AssertionError("SELECT 1 did not return (1,)")

        return loop(call), check, conn.close

    return opener


def asyncpg_opener(url: str, event_loop: asyncio.AbstractEventLoop) -> Callable[[], Any]:
    def opener() -> tuple[Callable[[int], Any], Callable[[], Any], Callable[[], Any]]:
        assert asyncpg is not None
        # Outside a transaction: each SELECT 1 is a statement of its own.
        conn = event_loop.run_until_complete(asyncpg.connect(url))

        def check() -> None:
            if event_loop.run_until_complete(conn.fetchval(SQL)) != 1:
                raise AssertionError("SELECT 1 did not return 1")

        def close() -> None:
            event_loop.run_until_complete(conn.close())

        return aloop(event_loop, functools.partial(conn.fetchval, SQL)), check, close

    return opener


def redis_opener(port: int) -> Callable[[], Any]:
    def opener() -> tuple[Callable[[int], Any], Callable[[], Any], Callable[[], Any]]:
        assert redis is not None
        client = redis.Redis(host="127.0.0.1", port=port)

        def check() -> None:
            if (value := client.get(REDIS_KEY)) != REDIS_VALUE:
                raise AssertionError(f"GET {REDIS_KEY} returned {value!r}")

        return loop(functools.partial(client.get, REDIS_KEY)), check, client.close

    return opener


# -- report -------------------------------------------------------------------------------------------


def us(ns: float) -> str:
    return f"{ns / 1000:,.1f}"


def path_table(path: ClientPath) -> str:
    plain = path.row(PLAIN).contender
    rows = []
    for row in path.rows:
        c = row.contender
        if not c.samples:
            rows.append([c.name, c.note or "not run", "", "", "", ""])
            continue
        ratio = f"{c.median / plain.median:.3f}x" if plain.samples else "-"
        per_call = row.spans_per_call
        rows.append(
            [
                c.name,
                us(c.median),
                f"{h.spread(c.samples):.0%}",
                us(c.best),
                ratio,
                "-" if per_call is None else f"{per_call:.2f}",
            ]
        )
    return h.table(["configuration", "µs/call", "IQR", "min µs", "x without", "spans/call"], rows)


def within_rounds(a: Contender, b: Contender, op: Callable[[float, float], float]) -> float:
    """The median over the rounds of ``op(a's run, b's run)`` in the same round: free of the
    noise that comes and goes between rounds (the loopback's latency on this VM has two modes).
    """
    return statistics.median(op(x, y) for x, y in zip(a.samples, b.samples, strict=True))


def same_spans(otel: Row, ours: Row) -> bool | None:
    """Whether otelres's configuration exported exactly as many spans per call as OpenTelemetry
    alone (compared exactly, in whole spans); None when either made no calls.
    """
    if not (otel.calls and ours.calls):
        return None
    return ours.spans * otel.calls == otel.spans * ours.calls


def summary_rows(paths: list[ClientPath]) -> list[list[str]]:
    rows = []
    for path in paths:
        plain, otel, ours = (path.row(config).contender for config in CONFIGS)
        if not (otel.samples and ours.samples):
            why = ours.note or otel.note or "not run"
            cells = [us(c.median) if c.samples else "n/a" for c in (plain, otel, ours)]
            rows.append([path.title, *cells, "", "", why, "", "", "", "", ""])
            continue
        ratio = ours.median / otel.median
        otel_adds = within_rounds(otel, plain, operator.sub) if plain.samples else None
        per_call = path.row(OTELRES).spans_per_call
        same = same_spans(path.row(OTEL), path.row(OTELRES))
        rows.append(
            [
                path.title,
                us(plain.median) if plain.samples else "n/a",
                us(otel.median),
                us(ours.median),
                "n/a" if otel_adds is None else us(otel_adds),
                us(within_rounds(ours, otel, operator.sub)),
                f"{ratio:.3f}",
                f"{within_rounds(ours, otel, operator.truediv):.3f}",
                f"{ours.best / otel.best:.3f}",
                "-" if per_call is None else f"{per_call:.2f}",
                "yes" if ratio <= GOAL else "**NO**",
                "-" if same is None else "yes" if same else "**NO**",
            ]
        )
    return rows


def problems(paths: list[ClientPath], sdk: Sdk) -> list[str]:
    """What the calls made, against what each configuration must make (whether otelres adds a
    span of its own is the summary's ``1 span`` column, not a problem of the run).
    """
    found = []
    otelres_calls = 0
    for path in paths:
        for row in path.rows:
            per_call = row.spans_per_call
            if per_call is None:
                continue
            made = f"{path.title}, {row.config}: {row.spans:,} spans for {row.calls:,} calls"
            if row.config == PLAIN and row.spans:
                found.append(f"{path.title}, {row.config}: {row.spans:,} spans (none expected)")
            if row.config == OTEL and row.spans != row.calls:
                found.append(made)
            if row.config == OTELRES:
                otelres_calls += row.calls + row.opening_calls
                # At least OpenTelemetry's CLIENT span for every call, and the same spans for
                # every call (none was retried).
                if row.spans < row.calls:
                    found.append(f"{made} (fewer spans than calls: CLIENT spans missing)")
                elif row.spans % row.calls:
                    found.append(f"{made} (not a whole number of spans per call: a retry, or a stray span)")
    recorded = sdk.otelres_calls()
    if recorded != otelres_calls:
        found.append(f"otelres.calls counted {recorded:,}, otelres made {otelres_calls:,} calls")
    return found


# -- memory retained per call -------------------------------------------------------------------------

#: Frames kept per traced allocation (``--memory-frames``): tracemalloc's cost grows with them (an
#: HTTP call here is ~3x slower traced with 1 frame, ~10x with 4); the sums do not depend on them.
FRAMES = 1


@dataclasses.dataclass
class Retained:
    """What one configuration of one client kept of the memory its calls allocated."""

    title: str
    config: str
    calls: int = 0
    #: Net bytes and blocks still held, allocated during the measured calls.
    size: int = 0
    blocks: int = 0
    spans: int = 0
    top: str = ""
    note: str = ""

    @property
    def per_call(self) -> float | None:
        return self.size / self.calls if self.calls else None


def short_path(filename: str) -> str:
    """A source file's path from its package on: no machine path in the output."""
    path = Path(filename)
    parts = path.parts
    for marker in ("site-packages", "dist-packages"):
        if marker in parts:
            return "/".join(parts[len(parts) - parts[::-1].index(marker) :])
    with contextlib.suppress(ValueError, OSError):
        return path.resolve().relative_to(Path(__file__).resolve().parent.parent).as_posix()
    for index in range(len(parts) - 1, -1, -1):  # the standard library: from lib/python3.X on
        if parts[index].startswith("python3"):
            return "/".join(parts[index + 1 :])
    return path.name


def describe_site(stat: tracemalloc.StatisticDiff) -> str:
    """The allocating line of the traceback holding the most, and otelres's innermost frame in it."""
    frames = list(stat.traceback)  # oldest first
    if not frames:
        return "?"
    line = f"{short_path(frames[-1].filename)}:{frames[-1].lineno}"
    ours = next((f for f in reversed(frames) if short_path(f.filename).startswith("otelres/")), None)
    via = (
        f" via {short_path(ours.filename)}:{ours.lineno}"
        if ours is not None and ours is not frames[-1]
        else ""
    )
    return f"{line}{via} ({stat.size_diff:+,} B in {stat.count_diff:+,} blocks)"


def measure_retained(path: ClientPath, config: str, sdk: Sdk, args: argparse.Namespace) -> Retained:
    """``args.memory_calls`` calls of ``path`` under ``config`` after a warm-up, on client objects
    of their own: the net memory they left allocated once the spans are exported and the garbage
    collected.

    tracemalloc starts for the warm-up's last ``args.memory_settle`` calls: what those hold at the
    first snapshot and the measured calls free (a bounded cache's entries replaced, a buffer
    reallocated) counts as freed, so that a structure that stays the same size nets out.
    """
    result = Retained(path.title, config)
    row = path.row(config)
    if path.opener is None or row.contender.note:
        result.note = row.contender.note or "not run"
        return result
    n, warmup, settle = args.memory_calls, args.memory_warmup, args.memory_settle
    switch = Switch(config, path.theirs, path.ours, sdk)
    switch.on()
    close: Callable[[], Any] | None = None
    try:
        run, check, close = path.opener()
        check()
        run(warmup - settle)
        tracemalloc.start(args.memory_frames)
        try:
            run(settle)
            # The SDK's queue drained, the garbage gone: the heap the calls start from.
            sdk.tracer_provider.force_flush()
            gc.collect()
            before = tracemalloc.take_snapshot()
            exported = sdk.sink.exported
            run(n)
            sdk.tracer_provider.force_flush()
            gc.collect()
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        result.calls = n
        result.spans = sdk.sink.exported - exported
    except Exception as exc:
        result.note = f"failed: {type(exc).__name__}: {exc}"[:200]
        return result
    finally:
        if close is not None:
            with contextlib.suppress(Exception):
                close()
        switch.off()
    mine = (tracemalloc.Filter(inclusive=False, filename_pattern=tracemalloc.__file__),)
    stats = after.filter_traces(mine).compare_to(before.filter_traces(mine), "traceback")
    result.size = sum(stat.size_diff for stat in stats)
    result.blocks = sum(stat.count_diff for stat in stats)
    top = max(stats, key=lambda stat: stat.size_diff, default=None)
    if result.size > 0 and top is not None and top.size_diff > 0:
        result.top = describe_site(top)
    return result


def memory_goal(ours: Retained, reference: Retained | None) -> str:
    """Met when otelres adds less than a byte a call to what OpenTelemetry alone retains (to
    nothing, when that could not be measured): anything kept for each call is at least one object
    (16 bytes or more), while a one-off (a cache filled, a dict resized) spread over the calls comes
    to less.
    """
    per_call = ours.per_call
    if per_call is None:
        return ""
    if reference is not None and reference.per_call is not None:
        per_call -= reference.per_call
    return "yes" if per_call < 1 else "**NO**"


def memory_table(results: list[Retained]) -> str:
    rows = []
    reference: dict[str, Retained] = {}
    for r in results:
        if r.per_call is None:
            rows.append([r.title, r.config, r.note or "not run", "", "", "", "", "", "", ""])
            continue
        if r.config == OTEL:
            reference[r.title] = r
        ref = reference.get(r.title) if r.config == OTELRES else None
        adds = "" if ref is None or ref.per_call is None else f"{r.per_call - ref.per_call:+,.1f}"
        goal = memory_goal(r, ref) if r.config == OTELRES else "(reference)"
        rows.append(
            [
                r.title,
                r.config,
                f"{r.calls:,}",
                f"{r.size:+,}",
                f"{r.blocks:+,}",
                f"{r.per_call:,.1f}",
                adds,
                f"{r.spans / r.calls:.2f}",
                r.top or "-",
                goal,
            ]
        )
    header = [
        "client",
        "configuration",
        "calls",
        "retained B",
        "blocks",
        "B/call",
        "otelres adds B/call",
        "spans/call",
        "top allocation site (by traceback)",
        "goal 0 B",
    ]
    return h.table(header, rows)


# -- main -----------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a ~20 s smoke run (fewer, shorter rounds)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds per client (default 31; quick 5)")
    parser.add_argument("--target-ms", type=float, help="time per run (default 150; quick 40)")
    parser.add_argument("--seed", type=int, default=20240601, help="seed of the shuffles")
    parser.add_argument("--server", choices=SERVERS, default="asyncio", help="HTTP server (default asyncio)")
    parser.add_argument("--only", default="", help=f"comma-separated: {','.join(CLIENTS)},memory")
    parser.add_argument(
        "--memory",
        action=argparse.BooleanOptionalAction,
        help="the memory retained per call, after the timing (default: on in a full run without --only)",
    )
    parser.add_argument(
        "--memory-calls", type=int, help="measured calls per memory row (default 5,000; quick 1,000)"
    )
    parser.add_argument(
        "--memory-frames",
        type=int,
        default=FRAMES,
        help=f"frames per traced allocation (default {FRAMES}; more show where from, much slower)",
    )
    parser.add_argument("--serve-http", choices=SERVERS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (5 if args.quick else 31)
    args.target = (args.target_ms or (40.0 if args.quick else 150.0)) / 1000
    args.only = {p.strip() for p in args.only.split(",") if p.strip()}
    unknown = args.only - {*CLIENTS, "memory"}
    if unknown:
        parser.error(f"--only: unknown {', '.join(sorted(unknown))} (known: {', '.join(CLIENTS)}, memory)")
    if args.memory is None:  # tracemalloc makes the calls ~3x slower: not part of a quick run
        args.memory = "memory" in args.only or not (args.only or args.quick)
    args.memory_calls = args.memory_calls or (1000 if args.quick else 5000)
    # tracemalloc makes a call ~3x slower: it is on for the warm-up's last calls only.
    args.memory_warmup, args.memory_settle = (500, 100) if args.quick else (2000, 500)
    if args.memory_frames < 1:
        parser.error("--memory-frames: at least 1")
    return args


def print_header(args: argparse.Namespace, pg_version: str, redis_version: str) -> None:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print("## otelres on real client calls\n")
    print(
        f"- python {platform.python_version()} ({platform.python_implementation()}), {platform.system()} "
        f"{platform.machine()}, {cpus} CPUs usable"
    )
    print(f"- otelres {otelres.__version__}; " + ", ".join(f"{d} {h.version_of(d)}" for d in DISTS))
    server = {
        "asyncio": "a minimal asyncio HTTP/1.1 server",
        "uvicorn": "uvicorn with a minimal ASGI app",
        "threading": "http.server's ThreadingHTTPServer",
    }[args.server]
    print(
        f"- HTTP: {server} in a subprocess on 127.0.0.1, keep-alive, a {len(BODY)}-byte 200 response; "
        f"PostgreSQL: {pg_version}; Redis: {redis_version}"
    )
    print(
        f"- {'quick' if args.quick else 'full'} run: {args.rounds} interleaved rounds x "
        f"~{args.target * 1000:g} ms per configuration; figures are medians of the rounds; IQR is the "
        f"rounds' interquartile range over the median; seed {args.seed}"
    )
    if args.memory:
        print(
            f"- memory: {args.memory_warmup:,} calls of warm-up, then {args.memory_calls:,} calls traced "
            f"by tracemalloc ({args.memory_frames} frame(s)) per configuration"
        )
    load_avg = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(f"- load average at start: {load_avg}")


def postgres_version(server: PgServer) -> str:
    if psycopg is not None:
        with psycopg.connect(server.dsn) as conn:
            return str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
    assert asyncpg is not None

    async def ask() -> str:
        conn = await asyncpg.connect(server.url)
        try:
            return str(await conn.fetchval("SHOW server_version"))
        finally:
            await conn.close()

    return asyncio.run(ask())


def start_postgres(wanted: bool) -> tuple[PgServer | None, str]:
    """The running server and its description, or None and why not."""
    if not wanted:
        return None, "not run"
    if psycopg is None and asyncpg is None:
        return None, "not installed: psycopg, asyncpg"
    bin_dir = pg_bin_dir()
    if bin_dir is None:
        return None, "not found (initdb, pg_ctl)"
    server = PgServer(bin_dir)
    try:
        server.start()
        version = postgres_version(server).split()[0]
    except Exception as exc:
        server.destroy()
        return None, f"setup failed: {exc}"
    except BaseException:
        server.destroy()
        raise
    return server, f"{version} (initdb + pg_ctl, temporary cluster, trust auth, TCP on 127.0.0.1)"


def start_redis(wanted: bool) -> tuple[RedisServer | None, str]:
    """The running redis-server and its description, or None and why not."""
    if not wanted:
        return None, "not run"
    if redis is None:
        return None, "not installed: redis"
    binary = shutil.which("redis-server")
    if binary is None:
        return None, "redis-server not found (apt-get install redis-server)"
    server = RedisServer(binary)
    try:
        version = server.start()
    except Exception as exc:
        server.destroy()
        return None, f"redis-server setup failed: {exc}"
    except BaseException:
        server.destroy()
        raise
    return server, f"redis-server {version} (temporary directory, no persistence, TCP on 127.0.0.1)"


def make_paths(
    keys: list[str],
    sdk: Sdk,
    url: str,
    event_loop: asyncio.AbstractEventLoop,
    pg: tuple[PgServer | None, str],
    rd: tuple[RedisServer | None, str],
) -> list[ClientPath]:
    """The client paths of ``keys``, in the order of :data:`CLIENTS`."""
    pg_server, pg_version = pg
    redis_server, redis_version = rd
    pg_missing = "" if pg_server is not None else f"PostgreSQL {pg_version}"
    paths = []
    for key in (k for k in CLIENTS if k in keys):
        opener: Callable[[], Any] | None = None
        if key == "requests":
            missing = "" if requests is not None else "not installed: requests"
            opener = requests_opener(url) if not missing else None
            paths.append(ClientPath(key, "requests GET", "otelres_requests", sdk, opener, missing))
        elif key in {"httpx", "httpx-async"}:
            missing = "" if httpx is not None else "not installed: httpx"
            if not missing:
                opener = httpx_opener(url) if key == "httpx" else httpx_async_opener(url, event_loop)
            title = "httpx GET (Client)" if key == "httpx" else "httpx GET (AsyncClient)"
            paths.append(ClientPath(key, title, "otelres_httpx", sdk, opener, missing))
        elif key == "psycopg":
            missing = pg_missing or ("" if psycopg is not None else "not installed: psycopg")
            opener = psycopg_opener(pg_server.dsn) if pg_server is not None and not missing else None
            paths.append(ClientPath(key, "psycopg SELECT 1", "otelres_psycopg", sdk, opener, missing))
        elif key == "asyncpg":
            missing = pg_missing or ("" if asyncpg is not None else "not installed: asyncpg")
            if pg_server is not None and not missing:
                opener = asyncpg_opener(pg_server.url, event_loop)
            paths.append(
                ClientPath(key, "asyncpg SELECT 1 (fetchval)", "otelres_asyncpg", sdk, opener, missing)
            )
        elif key == "redis":
            missing = "" if redis_server is not None else redis_version
            opener = redis_opener(redis_server.port) if redis_server is not None else None
            paths.append(ClientPath(key, "redis GET", "otelres_redis", sdk, opener, missing))
    return paths


def run_timing(paths: list[ClientPath], args: argparse.Namespace, sdk: Sdk) -> None:
    for path in paths:
        what = "one event loop, N awaits per run" if path.key in ASYNC_CLIENTS else "N calls per run"
        print(f"\n### {path.title}\n\n{what}; spans/call counts every span exported during the runs.\n")
        h.measure(path.contenders, args.rounds, args.target, args.seed)
        print(path_table(path))
        for row in path.rows:
            if row.contender.note and row.config == OTELRES and row.contender.run is None:
                print(f"\n{row.contender.note}")
    print(
        "\n### summary\n\n'ratio' is otelres's median over OpenTelemetry alone's (what 'goal' judges); "
        "'paired' is the median over the rounds of the ratio within each round; 'min ratio' is the "
        "ratio of the fastest rounds; 'adds' are medians over the rounds of the difference within "
        "each round; 'spans/call (otelres)' counts every span OpenTelemetry + otelres exported, and "
        "'1 span' says whether that is exactly as many per call as OpenTelemetry alone exported (the "
        "goal: OpenTelemetry's CLIENT span alone for a successful single-attempt call).\n"
    )
    header = [
        "client",
        "without µs",
        "OTel alone µs",
        "OTel + otelres µs",
        "OTel adds µs",
        "otelres adds µs",
        "ratio",
        "paired",
        "min ratio",
        "spans/call (otelres)",
        f"goal <= {GOAL}",
        "1 span",
    ]
    print(h.table(header, summary_rows(paths)))
    for problem in problems(paths, sdk):
        print(f"\nWARNING: {problem}")


def run_memory(paths: list[ClientPath], args: argparse.Namespace, sdk: Sdk) -> None:
    print(
        "\n### memory retained per call\n\n"
        "For each client, OpenTelemetry + otelres and (for reference) OpenTelemetry alone, on client "
        f"objects of their own: {args.memory_warmup:,} calls of warm-up (tracemalloc on, "
        f"{args.memory_frames} frame(s), for its last {args.memory_settle:,}), the span processor "
        f"flushed, gc.collect(), a snapshot, {args.memory_calls:,} calls, the span processor flushed "
        "again (its queue drained: what the SDK holds before export is not otelres's), gc.collect(), "
        "a second snapshot. 'retained B' and 'blocks' are the net difference of the snapshots (what "
        "the calls allocated and still hold, less what they freed of the traced warm-up's), 'B/call' "
        "that over the calls, 'otelres adds' the difference from OpenTelemetry alone; the top "
        "allocation site is the traceback whose blocks grew the most. 'goal 0 B' is met when otelres "
        "adds less than 1 B a call: anything kept for each call is an object (16 B or more), while a "
        "one-off (a cache filled, a dict resized) spread over the calls comes to less. tracemalloc "
        "sees Python's allocators, not the C library's malloc.\n"
    )
    results = [measure_retained(path, config, sdk, args) for path in paths for config in (OTEL, OTELRES)]
    print(memory_table(results))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_http:
        return serve_http(args.serve_http)
    if _events.listeners:
        print(f"otelres listeners are registered ({_events.listeners!r}); nothing may be on", file=sys.stderr)
        return 2
    started = time.perf_counter()
    named = [k for k in CLIENTS if k in args.only]
    timed = named if args.only else list(CLIENTS)
    # The memory of the clients named (or of every client when none is).
    remembered = (named or list(CLIENTS)) if args.memory else []
    keys = [k for k in CLIENTS if k in timed or k in remembered]

    http = HttpServer(args.server) if {"requests", "httpx", "httpx-async"} & set(keys) else None
    pg: tuple[PgServer | None, str] = (None, "not run")
    rd: tuple[RedisServer | None, str] = (None, "not run")
    sdk = Sdk.new()
    memory_sdk = Sdk.new()
    event_loop = asyncio.new_event_loop()
    paths: list[ClientPath] = []
    memory_paths: list[ClientPath] = []
    try:
        pg = start_postgres(bool({"psycopg", "asyncpg"} & set(keys)))
        rd = start_redis("redis" in keys)
        url = http.ready() if http is not None else ""
        print_header(args, pg[1], rd[1])
        paths = make_paths(timed, sdk, url, event_loop, pg, rd)
        if paths:
            run_timing(paths, args, sdk)
        memory_paths = make_paths(remembered, memory_sdk, url, event_loop, pg, rd)
        if memory_paths:
            run_memory(memory_paths, args, memory_sdk)
    finally:
        for path in (*paths, *memory_paths):
            path.close()
        event_loop.close()
        sdk.close()
        memory_sdk.close()
        if http is not None:
            http.close()
        if pg[0] is not None:
            pg[0].destroy()
        if rd[0] is not None:
            rd[0].destroy()
    print(f"\ntotal run time: {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    # SIGTERM too unwinds through main()'s clean-up: the servers stop, the cluster goes.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
