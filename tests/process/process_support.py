"""Helpers of the multi-process tests: free port ranges, a loopback upstream that pairs its
requests, and the helpers of tests/observability (a real Prometheus) and tests/e2e (an OTLP
receiver), which tests/ not being a package makes importable only through sys.path.
"""

from __future__ import annotations

import importlib
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
for _helpers in ("observability", "e2e"):
    _path = str(HERE.parent / _helpers)
    if _path not in sys.path:
        sys.path.append(_path)
live_stack: Any = importlib.import_module("live_stack")
otlp_receiver: Any = importlib.import_module("otlp_receiver")

#: Bound on every wait for the other side (a worker, Prometheus, the receiver) to act.
WAIT = 30.0


def free_port_range(count: int) -> int:
    """The first of ``count`` consecutive TCP ports on 127.0.0.1 that were all free a moment ago."""
    for _ in range(100):
        first = live_stack.free_port()
        if first + count > 65536:
            continue
        taken = []
        try:
            for port in range(first, first + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                taken.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in taken:
                sock.close()
        return first
    raise AssertionError(f"no {count} consecutive free ports found")


class Upstream:
    """A loopback HTTP server answering 200 ``ok``. While ``pairs`` is on, each request waits
    until a second one arrives (a Barrier of two): two requests sent at once to a server whose
    workers handle one request each at a time are then handled by two different workers.
    """

    def __init__(self) -> None:
        self.pairs = False
        self._barrier = threading.Barrier(2)
        self.requests = 0
        self._lock = threading.Lock()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with upstream._lock:
                    upstream.requests += 1
                if upstream.pairs:
                    upstream._barrier.wait(WAIT)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's signature
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                """Quiet: a worker that gave up on a request is the test's to report."""

        self._server = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/"

    def __enter__(self) -> Upstream:  # noqa: PYI034 - Self needs 3.11
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._barrier.abort()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
