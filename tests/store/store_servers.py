"""Real parts for the store integration tests: a redis-server on loopback that can
stop and come back on the same port (keeping its data), a TCP proxy in front of
it that drops connections on cue and counts them, and a raw RESP client that
asks the server what it holds without going through redis-py or otelres.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pathlib import Path

START_TIMEOUT = 10.0


def redis_server_binary() -> str:
    """The redis-server executable; fails in CI (env CI set) when it is missing, else skips."""
    path = shutil.which("redis-server")
    if path is None:
        message = "redis-server is not installed (apt-get install redis-server)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port() -> int:
    """A TCP port that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A redis-server process on 127.0.0.1 with its data in ``directory``.

    With ``durable``, every write is appended and fsynced before the reply, so
    the data survives :meth:`stop` and :meth:`start` (the outage test); without,
    nothing is written to disk.
    """

    def __init__(self, directory: Path, *, durable: bool = False, unix_socket: Path | None = None) -> None:
        self.binary = redis_server_binary()
        self.directory = directory
        self.port = free_port()
        self.unix_socket = unix_socket
        self.durable = durable
        self._process: subprocess.Popen[str] | None = None
        self._drain: threading.Thread | None = None

    def command_line(self) -> list[str]:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory)]
        args += ["--save", ""]
        if self.durable:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        if self.unix_socket is not None:
            args += ["--unixsocket", str(self.unix_socket), "--unixsocketperm", "700"]
        return args

    def start(self) -> None:
        """Start the server and return once it accepts connections."""
        process = subprocess.Popen(
            self.command_line(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        watchdog = threading.Timer(START_TIMEOUT, process.kill)
        watchdog.start()
        lines: list[str] = []
        try:
            assert process.stdout is not None
            for line in process.stdout:
                lines.append(line)
                if "Ready to accept connections" in line:
                    break
            else:
                process.wait()
                raise RuntimeError("redis-server did not start:\n" + "".join(lines))
        finally:
            watchdog.cancel()
        self._process = process
        # Keep reading its log so that the pipe never fills up.
        self._drain = threading.Thread(target=process.stdout.read, daemon=True)
        self._drain.start()

    def stop(self) -> None:
        """Shut the server down (SIGTERM: a durable one flushes its log first) and wait."""
        process, self._process = self._process, None
        if process is None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=START_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if self._drain is not None:
            self._drain.join(START_TIMEOUT)
        if process.stdout is not None:
            process.stdout.close()

    def __enter__(self) -> RedisServer:  # noqa: PYI034 - Self needs 3.11
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _parse_command(buffer: bytes) -> tuple[str, int] | None:
    """The name and the length in bytes of the first whole RESP command in
    ``buffer``, or None while it is incomplete.
    """
    end = buffer.find(b"\r\n")
    if end < 0:
        return None
    if not buffer.startswith(b"*"):  # an inline command
        words = buffer[:end].split()
        return (words[0].decode().upper() if words else ""), end + 2
    count = int(buffer[1:end])
    pos = end + 2
    name = ""
    for index in range(count):
        end = buffer.find(b"\r\n", pos)
        if end < 0:
            return None
        length = int(buffer[pos + 1 : end])
        start, stop = end + 2, end + 2 + length
        if len(buffer) < stop + 2:
            return None
        if index == 0:
            name = buffer[start:stop].decode().upper()
        pos = stop + 2
    return name, pos


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed by the other side
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


class FlakyProxy:
    """A TCP proxy on 127.0.0.1 in front of a redis-server.

    It reads the client's commands one by one and, on cue (:meth:`drop`), drops
    the connection *before* forwarding a command (the server never sees it) or
    *after* (the server runs it, the reply is lost). It counts the connections
    it accepts and the commands it sees, forwarded or not. While the server is
    down it accepts and closes at once, as a load balancer with no backend.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._rules: list[tuple[str, str]] = []
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self.connections = 0
        self.commands: list[str] = []
        self._start(self._accept)

    def drop(self, command: str, *, when: str = "before", times: int = 1) -> None:
        """Drop the connection at the next ``times`` commands named ``command``."""
        assert when in ("before", "after")
        with self._lock:
            self._rules += [(command.upper(), when)] * times

    def seen(self, command: str) -> int:
        """How many commands named ``command`` clients sent through the proxy."""
        with self._lock:
            return self.commands.count(command.upper())

    def close(self) -> None:
        """Stop accepting, close every connection, wait for the threads."""
        _close(self._listener)  # shutdown() wakes the thread blocked in accept()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            _close(sock)
        for thread in list(self._threads):
            thread.join(START_TIMEOUT)

    def _start(self, target: object, *args: object) -> threading.Thread:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()
        return thread

    def _track(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            self._sockets.add(sock)
        return sock

    def _action(self, name: str) -> str | None:
        with self._lock:
            self.commands.append(name)
            for index, (command, when) in enumerate(self._rules):
                if command == name:
                    del self._rules[index]
                    return when
        return None

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            self._start(self._serve, self._track(client))

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = self._track(socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5))
        except OSError:
            _close(client)
            return
        upstream.settimeout(None)
        drop_reply = threading.Event()
        pump = self._start(self._pump, upstream, client, drop_reply)
        buffer = b""
        try:
            while True:
                data = client.recv(65536)
                if not data:
                    return
                buffer += data
                while (parsed := _parse_command(buffer)) is not None:
                    name, size = parsed
                    raw, buffer = buffer[:size], buffer[size:]
                    action = self._action(name)
                    if action == "before":
                        return
                    if action == "after":
                        drop_reply.set()
                        upstream.sendall(raw)
                        pump.join(START_TIMEOUT)
                        return
                    upstream.sendall(raw)
        except OSError:
            return
        finally:
            _close(client)
            _close(upstream)

    @staticmethod
    def _pump(upstream: socket.socket, client: socket.socket, drop_reply: threading.Event) -> None:
        """Server to client; once ``drop_reply`` is set, the next reply is swallowed
        and the client's connection closed.
        """
        try:
            while True:
                data = upstream.recv(65536)
                if not data or drop_reply.is_set():
                    return
                client.sendall(data)
        except OSError:
            return
        finally:
            _close(client)


def resp(port: int, *args: str | int) -> Any:
    """Send one command to the server at ``port`` and return its decoded reply."""
    parts = [str(arg).encode() for arg in args]
    request = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock, sock.makefile("rb") as reader:
        sock.sendall(request)
        return _read_reply(reader)


def _read_reply(reader: object) -> object:
    line: bytes = reader.readline()  # type: ignore[attr-defined]
    kind, body = line[:1], line[1:-2]
    if kind == b"+":
        return body.decode()
    if kind == b"-":
        raise RuntimeError(body.decode())
    if kind == b":":
        return int(body)
    if kind == b"$":
        length = int(body)
        if length < 0:
            return None
        data: bytes = reader.read(length + 2)  # type: ignore[attr-defined]
        return data[:-2].decode()
    if kind == b"*":
        count = int(body)
        return None if count < 0 else [_read_reply(reader) for _ in range(count)]
    raise RuntimeError(f"unexpected reply {line!r}")
