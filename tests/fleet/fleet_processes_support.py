"""Real parts for the fleet's process tests (test_fleet_processes.py).

- :class:`Upstream`: an HTTP server on loopback whose health the test switches,
  and which notes every request it receives (when, and with an optional tag: the
  fleet's state of the breaker at that moment).
- A worker process (``python fleet_processes_support.py``): ``otelres.instrument()``
  with the settings of its environment, then it calls the URL it is told to over
  standard input with ``requests`` at a steady rate, and reports on standard output,
  one JSON line each (prefixed with :data:`MARK`), every call's outcome and latency,
  every change of its breaker's state and of the fleet's ``connected`` flag.
- :class:`Partition`: a TCP proxy in front of redis-server for one worker, which the
  test cuts (that process alone loses Redis) and heals.
- :func:`make_app`: the WSGI app gunicorn's workers serve
  (``gunicorn 'fleet_processes_support:make_app()'``): each request calls the
  upstream through ``requests``; each worker writes its breaker's state to a file.

Nothing here imports pytest or otelres at module level: workers start as fast as
they can, and gunicorn's master imports nothing it does not need.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

#: What starts a worker's report lines (anything else on its stdout is not a report).
MARK = "@@ "
#: How often a worker looks at its breaker's state and the fleet's flag (seconds).
WATCH_EVERY = 0.01


# -- the upstream -------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that hung up is no news here."""


class Upstream:
    """``GET`` on 127.0.0.1: 200 while :attr:`healthy`, else 503; every request is noted
    as ``(time.time(), tag())`` in :attr:`seen`.
    """

    def __init__(self, *, healthy: bool = True, tag: Callable[[], Any] | None = None) -> None:
        self.healthy = healthy
        self.tag = tag
        self.seen: list[tuple[float, Any]] = []
        self._lock = threading.Lock()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                upstream.note()
                status = 200 if upstream.healthy else 503
                body = b"ok\n" if status == 200 else b"unavailable\n"
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
                pass

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="upstream", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/"

    @property
    def breaker(self) -> str:
        """The name of otelres's breaker for this upstream (one per scheme://host:port)."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def note(self) -> None:
        tag = self.tag() if self.tag is not None else None
        with self._lock:
            self.seen.append((time.time(), tag))

    @property
    def requests(self) -> int:
        with self._lock:
            return len(self.seen)

    def snapshot(self) -> list[tuple[float, Any]]:
        with self._lock:
            return list(self.seen)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


# -- one process's way to Redis ------------------------------------------------------------------


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


class Partition:
    """A TCP proxy on 127.0.0.1 in front of ``port``. :meth:`cut` closes every connection
    and closes new ones at once (the process behind it loses Redis, the others do not)
    until :meth:`heal`.
    """

    def __init__(self, port: int) -> None:
        self.target = port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._cut = False
        self._accepting = threading.Thread(target=self._accept, name="partition", daemon=True)
        self._accepting.start()

    def cut(self) -> None:
        with self._lock:
            self._cut = True
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            _close(sock)

    def heal(self) -> None:
        with self._lock:
            self._cut = False

    def close(self) -> None:
        _close(self._listener)  # wakes the thread blocked in accept()
        self.cut()
        self._accepting.join(5)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                _close(client)
                continue
            server.settimeout(None)
            with self._lock:
                if self._cut:
                    _close(client)
                    _close(server)
                    continue
                self._sockets |= {client, server}
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            _close(source)
            _close(sink)


# -- the worker process ----------------------------------------------------------------------


class _Out:
    """Report lines on stdout, one whole line at a time from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __call__(self, **report: Any) -> None:
        line = MARK + json.dumps(report) + "\n"
        with self._lock:
            sys.stdout.write(line)
            sys.stdout.flush()


class _Worker:
    def __init__(self) -> None:
        import requests  # noqa: PLC0415

        import otelres  # noqa: PLC0415 - after the environment is set

        otelres.instrument()
        self.otelres = otelres
        self.session = requests.Session()
        self.out = _Out()
        self.lock = threading.Lock()
        self.url = ""
        self.breaker: Any = None
        self.period = 0.0
        self.changed = threading.Event()

    def target(self, url: str, rate: float) -> None:
        """Call ``url`` ``rate`` times a second from now on (0: stop calling)."""
        from otelres.instrumentation._http import breaker_name  # noqa: PLC0415

        # The breaker requests' integration uses for this URL, made now: the fleet
        # publishes it before the first call.
        breaker = self.otelres.default_registry().get(breaker_name(url) or url)
        with self.lock:
            self.url, self.breaker = url, breaker
            self.period = 1.0 / rate if rate > 0 else 0.0
        self.out(ev="target", url=url, t=time.time())
        self.changed.set()

    def call_loop(self) -> None:
        next_at = time.monotonic()
        while True:
            with self.lock:
                url, period = self.url, self.period
            if not period:
                self.changed.wait()
                self.changed.clear()
                next_at = time.monotonic()
                continue
            delay = next_at - time.monotonic()
            if delay > 0 and self.changed.wait(delay):
                self.changed.clear()
                next_at = time.monotonic()
                continue
            next_at = max(next_at + period, time.monotonic())
            self.call(url)

    def call(self, url: str) -> None:
        started = time.perf_counter()
        try:
            response = self.session.get(url, timeout=5)
        except self.otelres.CircuitOpenError:
            outcome = "rejected"
        except Exception as exc:  # the upstream is flaky on purpose
            outcome = "error:" + type(exc).__name__
        else:
            outcome = "ok" if response.status_code < 500 else "failed"
        self.out(ev="call", url=url, outcome=outcome, latency=time.perf_counter() - started, t=time.time())

    def watch_loop(self) -> None:
        """Report each change of the breaker's state and of the fleet's flags."""
        from otelres import _fleet  # noqa: PLC0415

        last: dict[str, Any] = {}
        while True:
            with self.lock:
                url, breaker = self.url, self.breaker
            fleet = _fleet.current()
            now: dict[str, Any] = {
                "state": (url, None if breaker is None else breaker.state.value),
                "connected": None if fleet is None else fleet.connected,
                "processes": None if fleet is None else fleet.processes,
            }
            for key, value in now.items():
                if key not in last or last[key] != value:
                    shown = value[1] if key == "state" else value
                    self.out(ev=key, value=shown, url=url, t=time.time())
            last = now
            time.sleep(WATCH_EVERY)


def worker_main(lines: Iterable[str]) -> None:
    """Run a worker: commands ``target URL RATE`` and ``quit``, one a line."""
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(name)s %(message)s")
    worker = _Worker()
    threading.Thread(target=worker.call_loop, name="calls", daemon=True).start()
    threading.Thread(target=worker.watch_loop, name="watch", daemon=True).start()
    worker.out(ev="ready", pid=os.getpid(), t=time.time())
    for line in lines:
        words = line.split()
        if not words:
            continue
        if words[0] == "quit":
            break
        if words[0] == "target":
            worker.target(words[1], float(words[2]))
    worker.out(ev="bye", t=time.time())


# -- the WSGI app under gunicorn -------------------------------------------------------------


def _write_state(directory: str, breaker: Any) -> None:
    """Keep ``<directory>/<pid>.json`` up to date with this worker's breaker and fleet."""
    from pathlib import Path  # noqa: PLC0415

    from otelres import _fleet  # noqa: PLC0415

    path = Path(directory, f"{os.getpid()}.json")
    scratch = path.with_suffix(".tmp")
    last = None
    while True:
        fleet = _fleet.current()
        report = {
            "state": breaker.state.value,
            "connected": fleet is not None and fleet.connected,
            "processes": 0 if fleet is None else fleet.processes,
        }
        if report != last:
            scratch.write_text(json.dumps({**report, "t": time.time()}))
            scratch.replace(path)  # a reader never sees half a file
            last = report
        time.sleep(WATCH_EVERY)


def make_app() -> Callable[..., Iterable[bytes]]:
    """The app a gunicorn worker serves: ``GET /`` calls ``FLEET_UPSTREAM`` (200 when it
    answered, 502 when it failed, 503 when otelres's breaker rejected the call);
    ``GET /livez`` answers 200 without calling anything.
    """
    import requests  # noqa: PLC0415

    import otelres  # noqa: PLC0415
    from otelres.instrumentation._http import breaker_name  # noqa: PLC0415

    otelres.instrument()
    upstream = os.environ["FLEET_UPSTREAM"]
    breaker = otelres.default_registry().get(breaker_name(upstream) or upstream)
    threading.Thread(
        target=_write_state, args=(os.environ["FLEET_STATE_DIR"], breaker), name="state", daemon=True
    ).start()
    session = requests.Session()
    pid = str(os.getpid()).encode()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/livez":
            status, body = "200 OK", b"live"
        else:
            try:
                response = session.get(upstream, timeout=5)
            except otelres.CircuitOpenError:
                status, body = "503 Service Unavailable", b"rejected"
            except requests.RequestException:
                status, body = "502 Bad Gateway", b"failed"
            else:
                ok = response.status_code < 500
                status, body = ("200 OK", b"ok") if ok else ("502 Bad Gateway", b"failed")
        start_response(status, [("Content-Length", str(len(body))), ("X-Worker", pid.decode())])
        return [body]

    return app


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt, BrokenPipeError):
        worker_main(sys.stdin)
