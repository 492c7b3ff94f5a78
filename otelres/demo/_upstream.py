"""A real HTTP server on loopback whose health follows a script.

The script is a list of phases; in each, a share of the requests fail (the
share may ramp from one value to another over the phase). A failure is either a
connection reset (the server reads the request and drops the connection with a
TCP RST) or a ``503``, some with ``Retry-After: 1`` (a retry waits that long)
and some with ``Retry-After: 30`` (more than the demo's cap: the retry is
suppressed). It is the dependency the demo's workload survives.
"""

from __future__ import annotations

import collections
import dataclasses
import random
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["PHASES", "FlakyUpstream", "Phase"]


@dataclasses.dataclass(frozen=True, slots=True)
class Phase:
    """One stretch of the upstream's life: ``failure_rate`` of the requests fail
    (ramping linearly to ``ramp_to`` over the phase when that is set), and
    ``resets`` of those failures are connection resets, the rest 503s.
    """

    name: str
    seconds: float
    failure_rate: float
    ramp_to: float | None = None
    resets: float = 0.3

    def __post_init__(self) -> None:
        if not self.seconds > 0:
            raise ValueError(f"phase {self.name!r}: seconds must be > 0, not {self.seconds}")
        for rate in (self.failure_rate, self.ramp_to, self.resets):
            if rate is not None and not 0.0 <= rate <= 1.0:
                raise ValueError(f"phase {self.name!r}: rates are between 0 and 1, not {rate}")

    def rate_at(self, elapsed: float) -> float:
        """The failure rate ``elapsed`` seconds into the phase."""
        if self.ramp_to is None:
            return self.failure_rate
        share = min(max(elapsed / self.seconds, 0.0), 1.0)
        return self.failure_rate + (self.ramp_to - self.failure_rate) * share


#: Healthy, degrading (the failure rate ramps up), down hard, recovering,
#: healthy: 30 s in all.
PHASES = (
    Phase("healthy", 5.0, 0.02),
    Phase("degrading", 6.0, 0.1, ramp_to=0.6),
    Phase("down", 6.0, 1.0, resets=0.7),
    Phase("recovering", 6.0, 0.1),
    Phase("healthy", 7.0, 0.0),
)

_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a RST


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that hung up mid-response is no news for the demo's screen."""


class FlakyUpstream:
    """Serves ``GET /`` on 127.0.0.1 with the failure rate of the current phase.

    ``counts`` tells what it answered: ``ok``, ``503`` and ``reset``.
    """

    def __init__(self, phases: Sequence[Phase] = PHASES, seed: int = 7) -> None:
        if not phases:
            raise ValueError("an upstream needs at least one phase")
        self.phases = tuple(phases)
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self.counts: collections.Counter[str] = collections.Counter()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                action, headers = upstream.decide()
                if action == "reset":
                    self.close_connection = True
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
                    self.connection.close()
                    return
                status = 200 if action == "ok" else 503
                body = b"ok\n" if status == 200 else b"unavailable\n"
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
                """Keep the demo's screen for the demo."""

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="flaky-upstream", daemon=True)

    @property
    def url(self) -> str:
        """The upstream's base URL."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/"

    @property
    def seconds(self) -> float:
        """The length of the whole script."""
        return sum(phase.seconds for phase in self.phases)

    def elapsed(self) -> float:
        """Seconds since the script started."""
        return time.monotonic() - self._started

    def now(self) -> tuple[Phase, float]:
        """The phase the upstream is in now and its failure rate."""
        return self.at(self.elapsed())

    def at(self, elapsed: float) -> tuple[Phase, float]:
        """The phase ``elapsed`` seconds into the script and its failure rate then
        (the last phase once the script ran out).
        """
        for phase in self.phases:
            if elapsed < phase.seconds:
                return phase, phase.rate_at(elapsed)
            elapsed -= phase.seconds
        last = self.phases[-1]
        return last, last.rate_at(last.seconds)

    def decide(self) -> tuple[str, dict[str, str]]:
        """What to do with the next request: ``ok``, ``503`` (with its headers) or ``reset``."""
        phase, rate = self.now()
        headers: dict[str, str] = {}
        with self._lock:
            if self._random.random() >= rate:
                action = "ok"
            elif self._random.random() < phase.resets:
                action = "reset"
            else:
                action = "503"
                pick = self._random.random()
                if pick < 0.5:
                    headers["Retry-After"] = "1" if pick < 0.3 else "30"
            self.counts[action] += 1
        return action, headers

    @property
    def requests(self) -> int:
        """How many requests reached the upstream."""
        with self._lock:
            return sum(self.counts.values())

    def start(self) -> FlakyUpstream:
        """Start serving in a background thread; the script starts now."""
        self._started = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving (and close the socket, started or not)."""
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()
