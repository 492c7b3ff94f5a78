"""The HTTP client contract for httpx: ``Client.send`` (sync) and ``AsyncClient.send`` (async,
each call in its own ``asyncio.run``)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpcore
import httpx
import pytest
from http_contract import CHUNKS, GENERATOR, Body, HttpClientContract, Reply
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

import otelres
from otelres import State
from otelres.instrumentation.httpx import HttpxInstrumentor
from otelres.testing import forced_state

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterable, Mapping

    from flaky_server import FlakyServer

#: How long an async response closed in the background may take to report closed.
CLOSE_WITHIN = 2.0

PATCHED = [
    (httpx.HTTPTransport, "handle_request"),
    (httpx.AsyncHTTPTransport, "handle_async_request"),
    (httpcore.ConnectionPool, "handle_request"),
    (httpcore.AsyncConnectionPool, "handle_async_request"),
]


class _Httpx(HttpClientContract):
    """What the sync and async httpx clients share."""

    transport_error = httpx.TransportError
    connect_error = httpx.ConnectError
    integration = "otelres.instrumentation.httpx"

    def otelres_instrumentor(self) -> HttpxInstrumentor:
        return HttpxInstrumentor()

    def opentelemetry_instrumentor(self) -> HTTPXClientInstrumentor:
        return HTTPXClientInstrumentor()

    def test_rejection_carries_its_request(
        self, server: FlakyServer, instrument: Callable[..., None]
    ) -> None:
        """A rejection, like httpx's own ConnectError, has the request it stopped as ``request``."""
        instrument()
        with forced_state(server.breaker, State.FORCED_OPEN), pytest.raises(httpx.ConnectError) as caught:
            self.get(server.url + "/price?id=7")
        assert isinstance(caught.value, otelres.CircuitOpenError)
        assert str(caught.value.request.url) == server.url + "/price?id=7"
        assert server.count() == 0


class TestHttpxSync(_Httpx):
    """httpx.Client: the contract."""

    def send(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: Body = None,
        timeout: float = 5.0,
        stream: bool = False,
        client_headers: Mapping[str, str] | None = None,
    ) -> Reply:
        seen: list[httpx.Response] = []
        with contextlib.ExitStack() as stack:
            client = stack.enter_context(
                httpx.Client(timeout=timeout, headers=client_headers, event_hooks={"response": [seen.append]})
            )
            content: Any = body
            if body == GENERATOR:
                content = (chunk for chunk in CHUNKS)
            elif isinstance(body, Path):
                content = stack.enter_context(body.open("rb"))
            if stream:
                request = client.build_request(method, url, headers=headers, content=content)
                response = client.send(request, stream=True)
            else:
                response = client.request(method, url, headers=headers, content=content)
            stack.callback(response.close)
            return Reply(
                status=response.status_code,
                headers=response.headers,
                body=b"" if stream else response.content,
                earlier_released=[r.is_closed for r in seen if r is not response],
                final_open=not response.is_closed if stream else None,
            )

    def patched(self) -> list[tuple[type, str]]:
        return [(httpx.Client, "send"), (httpx.AsyncClient, "send"), *PATCHED]


async def _agen(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def _released(response: httpx.Response) -> bool:
    """Closed, allowing for a close that otelres scheduled on the loop (polled, with a deadline)."""
    deadline = time.monotonic() + CLOSE_WITHIN
    while not response.is_closed and time.monotonic() < deadline:  # noqa: ASYNC110 - otelres's task closes it
        await asyncio.sleep(0.001)
    return response.is_closed


class TestHttpxAsync(_Httpx):
    """httpx.AsyncClient: the contract."""

    def send(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: Body = None,
        timeout: float = 5.0,
        stream: bool = False,
        client_headers: Mapping[str, str] | None = None,
    ) -> Reply:
        return asyncio.run(
            self._send(
                method,
                url,
                headers=headers,
                body=body,
                timeout=timeout,
                stream=stream,
                client_headers=client_headers,
            )
        )

    async def _send(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None,
        body: Body,
        timeout: float,
        stream: bool,
        client_headers: Mapping[str, str] | None,
    ) -> Reply:
        seen: list[httpx.Response] = []

        async def hook(response: httpx.Response) -> None:
            seen.append(response)

        async with contextlib.AsyncExitStack() as stack:
            client = await stack.enter_async_context(
                httpx.AsyncClient(timeout=timeout, headers=client_headers, event_hooks={"response": [hook]})
            )
            content: Any = body
            if body == GENERATOR:
                content = _agen(CHUNKS)
            elif isinstance(body, Path):
                content = _agen(stack.enter_context(body.open("rb")))
            if stream:
                request = client.build_request(method, url, headers=headers, content=content)
                response = await client.send(request, stream=True)
            else:
                response = await client.request(method, url, headers=headers, content=content)
            stack.push_async_callback(response.aclose)
            final_open = not response.is_closed if stream else None
            return Reply(
                status=response.status_code,
                headers=response.headers,
                body=b"" if stream else response.content,
                earlier_released=[await _released(r) for r in seen if r is not response],
                final_open=final_open,
            )

    def patched(self) -> list[tuple[type, str]]:
        return [(httpx.AsyncClient, "send"), (httpx.Client, "send"), *PATCHED]
