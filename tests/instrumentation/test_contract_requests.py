"""The HTTP client contract for requests (``Session.request`` carries the retry loop)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests
import requests.adapters
from http_contract import CHUNKS, GENERATOR, Body, HttpClientContract, Reply, reasons
from opentelemetry.instrumentation.requests import RequestsInstrumentor as OpenTelemetryRequests

from otelres.instrumentation.requests import RequestsInstrumentor
from otelres.testing import capture_events

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

    @pytest.mark.parametrize("session_key", [None, "k-9"])
    @pytest.mark.parametrize("name", ["Idempotency-Key", "idempotency-key"])
    def test_idempotency_key_none_removes_it(
        self, server: FlakyServer, instrument: Callable[..., None], session_key: str | None, name: str
    ) -> None:
        """headers={"Idempotency-Key": None} removes the key (the session's too): the POST is sent once."""
        instrument()
        server.script(503, 503, 200)
        with requests.Session() as session, capture_events() as events:
            if session_key is not None:
                session.headers["Idempotency-Key"] = session_key
            response = session.post(server.url + "/orders", data=b"order", headers={name: None}, timeout=5)
            response.close()
        assert response.status_code == 503
        assert [(s.method, s.headers.get("idempotency-key")) for s in server.requests] == [("POST", None)]
        assert reasons(events, "retry_suppressed") == ["not_idempotent"]

    @pytest.mark.parametrize("source", ["generator", "file", "stringio"])
    @pytest.mark.parametrize("form", ["dict", "pairs"])
    def test_form_with_a_stream_value_sent_once(
        self, server: FlakyServer, instrument: Callable[..., None], tmp_path: Path, source: str, form: str
    ) -> None:
        """A form holding a generator, file or StringIO value is sent once, whole: not_replayable."""
        instrument()
        server.script(503, 200)
        (tmp_path / "lines.txt").write_text("a\nb\n", encoding="utf-8")
        with contextlib.ExitStack() as stack, capture_events() as events:
            value: Any = {
                "generator": (line for line in ("a\n", "b\n")),
                "file": stack.enter_context((tmp_path / "lines.txt").open(encoding="utf-8")),
                "stringio": io.StringIO("a\nb\n"),
            }[source]
            data: Any = {"f": value} if form == "dict" else [("id", "7"), ("f", value)]
            response = requests.put(server.url + "/upload", data=data, timeout=5)
            response.close()
        assert response.status_code == 503
        expected = b"f=a%0A&f=b%0A" if form == "dict" else b"id=7&f=a%0A&f=b%0A"
        assert [(s.method, s.body) for s in server.requests] == [("PUT", expected)]
        assert reasons(events, "retry_suppressed") == ["not_replayable"]

    @pytest.mark.parametrize(
        "data",
        [
            {
                "s": "x",
                "b": b"y",
                "n": 3,
                "f": 1.5,
                "t": True,
                "none": None,
                "many": ["1", 2],
                "pair": ("a", "b"),
            },
            [("s", "x"), ("many", ["1", 2]), ("pair", ("a", "b"))],
            (("s", "x"),),
        ],
        ids=["dict", "list-of-pairs", "tuple-of-pairs"],
    )
    def test_form_of_plain_values_retried_whole(
        self, server: FlakyServer, instrument: Callable[..., None], data: Any
    ) -> None:
        """A form of plain values (str, bytes, numbers, None, lists of them) is retried, sent whole."""
        instrument()
        server.script(503, 200)
        response = requests.put(server.url + "/form", data=data, timeout=5)
        response.close()
        assert response.status_code == 200
        bodies = [s.body for s in server.requests]
        assert len(bodies) == 2
        assert bodies[0] == bodies[1] != b""
