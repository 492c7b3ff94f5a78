"""A real, scriptable flaky HTTP server on loopback, and a port that refuses connections.

Each request takes the next action of the script the test set: a status (with optional
headers, e.g. ``Retry-After``), :data:`RESET` (the connection is closed without an answer)
or :data:`SLOW` (the server waits on an Event longer than any client timeout). Once the
script is spent, the server answers 200. Every request is recorded before it is answered.
"""

from __future__ import annotations

import dataclasses
import http.server
import socket
import struct
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["RESET", "SLOW", "FlakyServer", "RefusedPort", "Seen"]

#: Close the connection without answering (SO_LINGER 0: the peer sees a reset).
RESET = "reset"
#: Answer only once the server is released (at teardown): longer than any client timeout.
SLOW = "slow"
#: How long a SLOW answer waits at most, should nobody release it.
SLOW_LIMIT = 10.0

Action = int | str | tuple[int, "Mapping[str, str]"]


@dataclasses.dataclass(frozen=True)
class Seen:
    """One request as the server received it."""

    method: str
    path: str
    body: bytes
    headers: dict[str, str]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base's signature
        """Quiet: the test asserts on what the server recorded."""

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        seen = Seen(
            self.command,
            self.path,
            self._body(),
            {name.lower(): value for name, value in self.headers.items()},
        )
        action = self.server.flaky.next_action(seen)
        if action == RESET:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            return
        if action == SLOW:
            self.server.flaky.release.wait(SLOW_LIMIT)
            action = 200
        status, headers = action if isinstance(action, tuple) else (int(action), {})
        body = b"" if self.command == "HEAD" else f"status {status}\n".encode()
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    # The base dispatches on these names.
    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _handle  # noqa: N815


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    flaky: FlakyServer

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that gave up (timeout, reset) is expected here: no traceback on stderr."""


class FlakyServer:
    """The server: ``script(503, 503, 200)``, then assert on ``requests`` / ``count()``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._script: list[Action] = []
        self._seen: list[Seen] = []
        self.release = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.flaky = self
        self.port: int = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        #: The breaker otelres names for this server.
        self.breaker = self.url
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )

    def __enter__(self) -> FlakyServer:  # noqa: PYI034 - Self needs 3.11
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def script(self, *actions: Action) -> None:
        """The answers to the next requests, in order (200 once they are spent)."""
        with self._lock:
            self._script = list(actions)

    def next_action(self, seen: Seen) -> Action:
        with self._lock:
            self._seen.append(seen)
            return self._script.pop(0) if self._script else 200

    @property
    def requests(self) -> list[Seen]:
        """Every request seen so far, in order."""
        with self._lock:
            return list(self._seen)

    def count(self, method: str | None = None) -> int:
        """How many requests (of ``method``) the server saw."""
        return sum(1 for s in self.requests if method is None or s.method == method)


class RefusedPort:
    """A loopback port bound but not listening: every connection is refused, and nothing
    else can take the port. :meth:`listen` turns it into a listener that never answers,
    so :meth:`accepted` can tell whether a client tried to connect.
    """

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.breaker = self.url

    def listen(self) -> None:
        """Start accepting connections (into the backlog; nothing answers them)."""
        self._sock.listen(16)
        self._sock.setblocking(False)

    def accepted(self) -> int:
        """The connections made since :meth:`listen` (each is accepted and closed)."""
        count = 0
        while True:
            try:
                conn, _ = self._sock.accept()
            except BlockingIOError:
                return count
            conn.close()
            count += 1

    def close(self) -> None:
        self._sock.close()
