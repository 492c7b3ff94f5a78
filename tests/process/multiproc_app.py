"""A small service for the multi-process tests, served by gunicorn (``app``, WSGI) or uvicorn
(``asgi``) with several workers.

``otelres.instrument()`` runs at import: in every worker, or once in gunicorn's master with
``--preload``. Each request to ``/`` makes one call to the loopback upstream in ``UPSTREAM_URL``
through a patched client (requests in WSGI, httpx in ASGI) and answers with the worker's pid;
``/force-open`` forces the upstream's breaker open in that worker, after meeting the upstream
without otelres (urllib: the breaker may be open already); ``/ping`` answers the pid without a
call. otelres's own log lines (the Prometheus port each
process serves) go to stderr.
"""

from __future__ import annotations

import asyncio
import logging
import os
import urllib.request
from typing import TYPE_CHECKING, Any

import httpx
import requests

import otelres

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
logging.getLogger("otelres").setLevel(logging.INFO)
otelres.instrument()

UPSTREAM = os.environ["UPSTREAM_URL"]
#: The breaker of the upstream, as the HTTP integration names it (scheme://host:port).
BREAKER = UPSTREAM.rstrip("/")


def _force_open() -> int:
    with urllib.request.urlopen(UPSTREAM, timeout=10) as response:  # noqa: S310 - loopback http
        status = int(response.status)
    otelres.default_registry().get(BREAKER).force_open()
    return status


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """WSGI: one upstream call per request."""
    path = environ.get("PATH_INFO", "/")
    status = 0
    if path == "/force-open":
        status = _force_open()
    elif path != "/ping":
        status = requests.get(UPSTREAM, timeout=10).status_code
    body = f"{os.getpid()} {status}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


async def asgi(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    """ASGI: the same, with httpx."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    status = 0
    if scope["path"] == "/force-open":
        status = await asyncio.to_thread(_force_open)
    elif scope["path"] != "/ping":
        async with httpx.AsyncClient(timeout=10) as client:
            status = (await client.get(UPSTREAM)).status_code
    body = f"{os.getpid()} {status}".encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
