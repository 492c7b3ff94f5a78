"""The HTTP client contract for requests (``Session.request`` carries the retry loop)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests
import requests.adapters
from http_contract import CHUNKS, GENERATOR, Body, HttpClientContract, Reply
from opentelemetry.instrumentation.requests import RequestsInstrumentor as OpenTelemetryRequests

from otelres.instrumentation.requests import RequestsInstrumentor

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from flaky_server import FlakyServer


def released(response: requests.Response) -> bool:
    """Closed, and its connection handed back (or closed): nothing left to leak."""
    return bool(response.raw.closed) and response.raw.connection is None


class TestRequests(HttpClientContract):
    """requests: the contract."""

    transport_error = requests.RequestException
    connect_error = requests.exceptions.ConnectionError
    integration = "otelres.instrumentation.requests"

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
        seen: list[requests.Response] = []

        def hook(response: requests.Response, *args: Any, **kwargs: Any) -> None:
            seen.append(response)

        with contextlib.ExitStack() as stack:
            session = stack.enter_context(requests.Session())
            session.headers.update(client_headers or {})
            data: Any = body
            if body == GENERATOR:
                data = (chunk for chunk in CHUNKS)
            elif isinstance(body, Path):
                data = stack.enter_context(body.open("rb"))
            response = session.request(
                method,
                url,
                headers=headers,
                data=data,
                timeout=timeout,
                stream=stream,
                hooks={"response": hook},
            )
            stack.enter_context(response)
            return Reply(
                status=response.status_code,
                headers=response.headers,
                body=b"" if stream else response.content,
                earlier_released=[released(r) for r in seen if r is not response],
                final_open=not released(response) if stream else None,
            )

    def patched(self) -> list[tuple[type, str]]:
        return [
            (requests.Session, "request"),
            (requests.Session, "send"),
            (requests.adapters.HTTPAdapter, "send"),
        ]

    def otelres_instrumentor(self) -> RequestsInstrumentor:
        return RequestsInstrumentor()

    def opentelemetry_instrumentor(self) -> OpenTelemetryRequests:
        return OpenTelemetryRequests()

    # -- requests only -------------------------------------------------------------------------------

    def test_post_with_default_idempotency_key_retried(
        self, server: FlakyServer, instrument: Callable[..., None]
    ) -> None:
        """An Idempotency-Key in Session.headers makes a POST retryable, as with httpx's client headers."""
        super().test_post_with_default_idempotency_key_retried(server, instrument)

    def test_bytesio_upload_never_resent_short(
        self, server: FlakyServer, instrument: Callable[..., None]
    ) -> None:
        """A multipart upload from a BytesIO is sent whole by every attempt (or not retried at all)."""
        instrument()
        server.script(503, 200)
        with requests.Session() as session:
            response = session.put(server.url, files={"f": ("a.txt", io.BytesIO(b"hello-file"))}, timeout=5)
            response.close()
        assert server.count("PUT") >= 1
        assert [b"hello-file" in seen.body for seen in server.requests] == [True] * server.count("PUT")
