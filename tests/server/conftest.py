"""Fixtures for the middleware tests: a stub readiness, and real WSGI and ASGI
servers on loopback, each in a thread."""

from __future__ import annotations

import socket
import socketserver
import threading
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
import uvicorn
from server_stubs import StubReadiness

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator


@pytest.fixture
def readiness() -> StubReadiness:
    """A stub readiness that passes."""
    return StubReadiness()


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's signature
        pass


@pytest.fixture
def wsgi_server() -> Iterator[Callable[[Any], str]]:
    """Start a threaded wsgiref server for an app; gives its base URL."""
    servers: list[tuple[WSGIServer, threading.Thread]] = []

    def start(app: Any) -> str:
        server = make_server(
            "127.0.0.1", 0, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler
        )
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        servers.append((server, thread))
        return f"http://127.0.0.1:{server.server_port}"

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def asgi_server() -> Iterator[Callable[[Any], str]]:
    """Start a real uvicorn server for an app in a thread; gives its base URL."""
    running: list[tuple[uvicorn.Server, threading.Thread, socket.socket]] = []

    def start(app: Any) -> str:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        config = uvicorn.Config(app, lifespan="auto", log_level="warning", ws="none", access_log=False)
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        running.append((server, thread, sock))
        started = threading.Event()
        for _ in range(500):
            if server.started or not thread.is_alive():
                break
            started.wait(0.01)
        assert server.started, "uvicorn did not start"
        return f"http://127.0.0.1:{sock.getsockname()[1]}"

    yield start
    for server, thread, sock in running:
        server.should_exit = True
        thread.join(5)
        sock.close()
