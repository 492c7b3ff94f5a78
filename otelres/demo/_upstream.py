"""A real HTTP server on loopback whose health follows a script.

The script is a list of phases (seconds, failure rate, latency); failures are
503 responses, some with ``Retry-After``. It is the dependency the demo's
workload survives.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["PHASES", "FlakyUpstream", "Phase"]


@dataclasses.dataclass(frozen=True, slots=True)
class Phase:
    """One stretch of the upstream's life."""

    name: str
    seconds: float
    failure_rate: float


#: Healthy, degrading, down hard, recovering, healthy: about 30 s in all.
PHASES = (
    Phase("healthy", 5.0, 0.02),
    Phase("degrading", 6.0, 0.35),
    Phase("down", 9.0, 1.0),
    Phase("recovering", 5.0, 0.15),
    Phase("healthy", 5.0, 0.0),
)


class FlakyUpstream:
    """Serves ``GET /`` on 127.0.0.1 with the failure rate of the current phase."""

    def __init__(self, phases: tuple[Phase, ...] = PHASES, seed: int = 7) -> None:
        self.phases = phases
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self.requests = 0
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, headers = upstream.decide()
                body = b"ok\n" if status == 200 else b"unavailable\n"
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
                """Keep the demo's screen for the demo."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="flaky-upstream", daemon=True)

    @property
    def url(self) -> str:
        """The upstream's base URL."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/"

    def phase(self) -> Phase:
        """The phase the upstream is in now (the last one once the script ran out)."""
        elapsed = time.monotonic() - self._started
        for phase in self.phases:
            if elapsed < phase.seconds:
                return phase
            elapsed -= phase.seconds
        return self.phases[-1]

    def decide(self) -> tuple[int, dict[str, str]]:
        """The status and headers of the next response."""
        with self._lock:
            self.requests += 1
            fail = self._random.random() < self.phase().failure_rate
            retry_after = self._random.random() < 0.2
        if not fail:
            return 200, {}
        return 503, ({"Retry-After": "0"} if retry_after else {})

    def start(self) -> FlakyUpstream:
        """Start serving in a background thread."""
        self._started = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()
