"""The contract every HTTP client integration keeps (the OpenTelemetry contrib pattern):
one abstract test class, implemented once per client library and flavour (requests,
httpx sync, httpx async) by saying how to send a request and what the integration patches.

Every test talks to a real flaky server on loopback (see flaky_server.py).
"""

from __future__ import annotations

import abc
import dataclasses
import email.utils
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pytest
import wrapt
from flaky_server import RESET, SLOW
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.trace import SpanKind, StatusCode
from rejection_support import check_rejection

import otelres
import otelres.telemetry
from otelres.testing import capture_events, in_trouble

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

    from flaky_server import FlakyServer, RefusedPort
    from opentelemetry.instrumentation.instrumentor import BaseInstrumentor
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from otelres._breaker import BreakerStats
    from otelres.testing import CapturedEvents

__all__ = ["CHUNKS", "FAST", "GENERATOR", "Body", "HttpClientContract", "Reply"]

#: Retries within a few milliseconds: no test waits for a real backoff.
FAST: dict[str, object] = {"retry_base_delay": 0.001, "retry_max_delay": 0.002}

#: The parts of a streamed (not replayable) request body.
CHUNKS = (b"part-1|", b"part-2|")
#: ``body=GENERATOR``: send CHUNKS from a generator (an async one for an async client).
GENERATOR = "generator"
RESEND_COUNT = "http.request.resend_count"
#: A client timeout far shorter than a SLOW answer.
SHORT_TIMEOUT = 0.25

Body = bytes | Path | str | None


@dataclasses.dataclass
class Reply:
    """What the caller got, read back in a library-neutral form."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    #: For each response before the final one (the retried attempts): was it released?
    earlier_released: list[bool]
    #: For a streamed call: was the final response still open when it reached the caller?
    final_open: bool | None = None


def stats(name: str) -> BreakerStats | None:
    """The stats of the registered breaker ``name``, or None when it does not exist."""
    for breaker in otelres.default_registry().breakers():
        if breaker.name == name:
            return breaker.stats()
    return None


def reasons(events: CapturedEvents, kind: str = "retry") -> list[object]:
    return [event.fields["reason"] for event in events.of(kind)]


class HttpClientContract(abc.ABC):
    """The behaviours; a subclass says how its client sends a request."""

    #: The exception the client raises for connection errors and timeouts.
    transport_error: ClassVar[type[BaseException]]
    #: The client's own error for a server it could not connect to.
    connect_error: ClassVar[type[BaseException]]
    #: The otelres module of the integration (its ``CircuitOpenError``).
    integration: ClassVar[str]

    @abc.abstractmethod
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
        """Send one request with a fresh client, closed before returning.

        ``body`` is bytes, a Path (sent as an open file) or GENERATOR. With ``stream``,
        the final response's body is not read before the call returns. ``client_headers``
        are the client's (session's) default headers.
        """

    @abc.abstractmethod
    def patched(self) -> list[tuple[type, str]]:
        """Every (class, attribute) that instrumenting this library replaces; the
        first is where otelres's retry loop sits.
        """

    @abc.abstractmethod
    def otelres_instrumentor(self) -> BaseInstrumentor:
        """otelres's instrumentor of this library."""

    @abc.abstractmethod
    def opentelemetry_instrumentor(self) -> BaseInstrumentor:
        """OpenTelemetry's own instrumentor of this library (the CLIENT spans)."""

    def get(self, url: str, **options: Any) -> Reply:
        return self.send("GET", url, **options)

    # -- retried until success ----------------------------------------------------------------------

    @pytest.mark.parametrize("status", [503, 502, 504, 408, 429])
    def test_retryable_status_retried_until_success(
        self, server: FlakyServer, instrument: Callable[..., None], status: int
    ) -> None:
        """A GET answered 503/502/504/408/429 twice is retried and the third answer, 200, is returned."""
        instrument()
        server.script(status, status, 200)
        with capture_events() as events:
            reply = self.get(server.url + "/items")
        assert reply.status == 200
        assert reply.body == b"status 200\n"
        assert server.count("GET") == 3
        assert reasons(events) == [f"status_{status}"] * 2

    def test_connection_reset_retried_until_success(
        self, server: FlakyServer, instrument: Callable[..., None]
    ) -> None:
        """A GET whose connection is closed twice without an answer is retried until it gets its 200."""
        instrument()
        server.script(RESET, RESET, 200)
        with capture_events() as events:
            reply = self.get(server.url)
        assert reply.status == 200
        assert server.count() == 3
        assert reasons(events) == ["connect", "connect"]

    def test_timeout_retried_until_success(
        self, server: FlakyServer, instrument: Callable[..., None]
    ) -> None:
        """A GET that times out on a slow answer is retried, and the next, prompt answer is returned."""
        instrument()
        server.script(SLOW, 200)
        with capture_events() as events:
            reply = self.get(server.url, timeout=SHORT_TIMEOUT)
        assert reply.status == 200
        assert server.count() == 2
        assert reasons(events) == ["timeout"]

    def test_refused_connection_retried_then_raised(
        self, refused: RefusedPort, instrument: Callable[..., None]
    ) -> None:
        """A refused connection is retried up to the attempts, then the client's own error is raised."""
        instrument()
        with capture_events() as events, pytest.raises(self.transport_error):
            self.get(refused.url)
        assert reasons(events) == ["connect", "connect"]
        assert [e.fields["attempts"] for e in events.of("exhausted")] == [3]

    @pytest.mark.parametrize("method", ["HEAD", "PUT", "DELETE", "OPTIONS"])
    def test_idempotent_methods_retried(
        self, server: FlakyServer, instrument: Callable[..., None], method: str
    ) -> None:
        """HEAD, PUT, DELETE and OPTIONS are retried by default, like GET."""
        instrument()
        server.script(503, 200)
        reply = self.send(method, server.url, body=b"same" if method == "PUT" else None)
        assert reply.status == 200
        assert server.count(method) == 2

    # -- exhausted ----------------------------------------------------------------------------------

    def test_exhausted_503_is_returned_as_a_response(
        self, server: FlakyServer, instrument: Callable[..., None]
    ) -> None:
        """After three 503s the last 503 reaches the caller as a response, not an exception."""
        instrument()
        server.script(503, 503, 503, 200)
        reply = self.get(server.url)
        assert reply.status == 503
        assert reply.body == b"status 503\n"
        assert server.count() == 3

    def test_exhausted_resets_raise_the_client_error(
        self, server: FlakyServer, instrument: Callable[..., None]
    ) -> None:
        """Three connection resets raise the client library's own transport error after three attempts."""
        instrument()
        server.script(RESET, RESET, RESET, 200)
        with pytest.raises(self.transport_error):
            self.get(server.url)
        assert server.count() == 3

    # -- 500 and 4xx --------------------------------------------------------------------------------

    def test_500_not_retried_by_default(self, server: FlakyServer, instrument: Callable[..., None]) -> None:
        """A 500 is returned at once (one request) and counts as a failure of the breaker."""
        instrument()
        server.script(500, 200)
        reply = self.get(server.url)
        assert reply.status == 500
        assert server.count() == 1
        found = stats(server.breaker)
        assert found is not None
        assert (found.successes, found.failures) == (0, 1)

    @pytest.mark.parametrize("source", ["override", "environment"])
    def test_500_retried_when_configured(
        self,
        server: FlakyServer,
        instrument: Callable[..., None],
        monkeypatch: pytest.MonkeyPatch,
        source: str,
    ) -> None:
        """With http_retry_500=True or OTELRES_HTTP_RETRY_500=true, a 500 is retried like a 503."""
        if source == "override":
            instrument(http_retry_500=True)
        else:
            monkeypatch.setenv("OTELRES_HTTP_RETRY_500", "true")
            otelres.configure(None)
            instrument()
        server.script(500, 500, 200)
        reply = self.get(server.url)
        assert reply.status == 200
        assert server.count() == 3

    def test_404_not_retried_nor_a_breaker_failure(
        self, server: FlakyServer, instrument: Callable[..., None]
    ) -> None:
        """A 404 is returned at once and is no failure: a breaker tripping on one failure stays closed."""
        instrument(breaker_consecutive_failures=1)
        server.script(404, 404, 404)
        for _ in range(3):
            assert self.get(server.url + "/missing").status == 404
        assert server.count() == 3
        found = stats(server.breaker)
        assert found is not None
        assert found.state is otelres.State.CLOSED
        assert (found.successes, found.failures) == (3, 0)

    # -- methods and bodies -------------------------------------------------------------------------

    @pytest.mark.parametrize("method", ["POST", "PATCH"])
    def test_unsafe_method_sent_once(
        self, server: FlakyServer, instrument: Callable[..., None], method: str
    ) -> None:
        """A failed POST or PATCH is sent exactly once; its retry is counted as suppressed not_idempotent."""
        instrument()
        server.script(503, 200)
        with capture_events() as events:
            reply = self.send(method, server.url + "/orders", body=b'{"n": 1}')
        assert reply.status == 503
        assert server.count(method) == 1
        assert reasons(events, "retry_suppressed") == ["not_idempotent"]

    def test_post_reset_sent_once(self, server: FlakyServer, instrument: Callable[..., None]) -> None:
        """A POST whose connection is reset raises at once: the server saw it exactly once."""
        instrument()
        server.script(RESET, 200)
        with capture_events() as events, pytest.raises(self.transport_error):
            self.send("POST", server.url + "/orders", body=b'{"n": 1}')
        assert server.count("POST") == 1
        assert reasons(events, "retry_suppressed") == ["not_idempotent"]

    def test_post_with_idempotency_key_retried(
        self, server: FlakyServer, instrument: Callable[..., None]
    ) -> None:
        """A POST carrying an Idempotency-Key header is retried, sending the same key and body again."""
        instrument()
        server.script(503, 200)
        reply = self.send("POST", server.url, headers={"Idempotency-Key": "order-7"}, body=b"payload")
        assert reply.status == 200
        posts = server.requests
        assert [(s.method, s.body, s.headers.get("idempotency-key")) for s in posts] == [
            ("POST", b"payload", "order-7")
        ] * 2

    def test_post_with_default_idempotency_key_retried(
        self, server: FlakyServer, instrument: Callable[..., None]
    ) -> None:
        """An Idempotency-Key set as the client's default header makes a POST retryable too."""
        instrument()
        server.script(503, 200)
        reply = self.send("POST", server.url, body=b"payload", client_headers={"Idempotency-Key": "k-9"})
        assert reply.status == 200
        assert [s.headers.get("idempotency-key") for s in server.requests] == ["k-9", "k-9"]

    def test_post_retried_within_retry_unsafe(
        self, server: FlakyServer, instrument: Callable[..., None]
    ) -> None:
        """Inside retry_unsafe() a POST is retried; after the block it is sent once again."""
        instrument()
        server.script(503, 200)
        with otelres.retry_unsafe():
            assert self.send("POST", server.url, body=b"x").status == 200
        assert server.count("POST") == 2
        server.script(503, 200)
        assert self.send("POST", server.url, body=b"x").status == 503
        assert server.count("POST") == 3

    def test_post_retried_when_configured(self, server: FlakyServer, instrument: Callable[..., None]) -> None:
        """With http_retry_unsafe=True every POST may be retried."""
        instrument(http_retry_unsafe=True)
        server.script(503, 200)
        assert self.send("POST", server.url, body=b"x").status == 200
        assert server.count("POST") == 2

    @pytest.mark.parametrize("kind", [GENERATOR, "file"])
    def test_stream_body_never_retried(
        self, server: FlakyServer, instrument: Callable[..., None], tmp_path: Path, kind: str
    ) -> None:
        """A PUT with a generator or file body is sent once, whole; its retry is suppressed not_replayable."""
        instrument()
        body: Body = GENERATOR
        if kind == "file":
            body = tmp_path / "upload.bin"
            body.write_bytes(b"".join(CHUNKS))
        server.script(503, 200)
        with capture_events() as events:
            reply = self.send("PUT", server.url + "/upload", body=body)
        assert reply.status == 503
        assert [(s.method, s.body) for s in server.requests] == [("PUT", b"".join(CHUNKS))]
        assert reasons(events, "retry_suppressed") == ["not_replayable"]

    # -- Retry-After --------------------------------------------------------------------------------

    def test_retry_after_seconds_honoured(
        self, server: FlakyServer, instrument: Callable[..., None], sleeps: list[float]
    ) -> None:
        """A 429 with Retry-After: 7 is retried after exactly 7 s (the recorded wait), not the backoff."""
        instrument()
        server.script((429, {"Retry-After": "7"}), 200)
        with capture_events() as events:
            reply = self.get(server.url)
        assert reply.status == 200
        assert server.count() == 2
        assert sleeps == [7.0]
        assert [e.fields["delay"] for e in events.of("retry")] == [7.0]

    def test_retry_after_http_date_honoured(
        self, server: FlakyServer, instrument: Callable[..., None], sleeps: list[float]
    ) -> None:
        """A 503 with Retry-After as an HTTP date 10 s ahead is retried after the time left until then."""
        instrument()
        when = email.utils.formatdate(time.time() + 10, usegmt=True)
        server.script((503, {"Retry-After": when}), 200)
        reply = self.get(server.url)
        assert reply.status == 200
        assert server.count() == 2
        assert len(sleeps) == 1
        assert 8.0 < sleeps[0] <= 10.0

    def test_retry_after_above_cap_ends_retries(
        self, server: FlakyServer, instrument: Callable[..., None], sleeps: list[float]
    ) -> None:
        """A Retry-After above retry_after_cap ends the retries: the 429 is returned after one request."""
        instrument(retry_retry_after_cap=5.0)
        server.script((429, {"Retry-After": "7"}), 200)
        with capture_events() as events:
            reply = self.get(server.url)
        assert reply.status == 429
        assert reply.headers.get("retry-after") == "7"
        assert server.count() == 1
        assert sleeps == []
        assert reasons(events, "retry_suppressed") == ["retry_after"]

    def test_malformed_retry_after_ignored(
        self, server: FlakyServer, instrument: Callable[..., None], sleeps: list[float]
    ) -> None:
        """A malformed Retry-After is ignored: the retry waits the configured backoff instead."""
        instrument()
        server.script((503, {"Retry-After": "soon-ish"}), 200)
        assert self.get(server.url).status == 200
        assert server.count() == 2
        assert len(sleeps) == 1
        assert sleeps[0] <= FAST["retry_max_delay"]  # type: ignore[operator]

    # -- responses of retried attempts --------------------------------------------------------------

    def test_retried_responses_are_released(
        self, server: FlakyServer, instrument: Callable[..., None]
    ) -> None:
        """The streamed responses of retried attempts are closed; the final one reaches the caller open."""
        instrument()
        server.script(503, 503, 200)
        reply = self.get(server.url, stream=True)
        assert reply.status == 200
        assert reply.earlier_released == [True, True]
        assert reply.final_open is True

    def test_exhausted_final_response_is_not_closed(
        self, server: FlakyServer, instrument: Callable[..., None]
    ) -> None:
        """After exhausted retries the last streamed 503 reaches the caller still open, as without otelres."""
        instrument()
        server.script(503, 503, 503)
        reply = self.get(server.url, stream=True)
        assert reply.status == 503
        assert reply.earlier_released == [True, True]
        assert reply.final_open is True

    # -- the breaker --------------------------------------------------------------------------------

    def test_open_breaker_rejects_without_a_request(
        self, server: FlakyServer, instrument: Callable[..., None]
    ) -> None:
        """Once three 503s opened the breaker, the next call raises CircuitOpenError; no request is sent."""
        instrument(breaker_consecutive_failures=3)
        server.script(503, 503, 503, 200)
        assert self.get(server.url).status == 503
        assert server.count() == 3
        with pytest.raises(otelres.CircuitOpenError) as caught:
            self.get(server.url + "/again")
        assert caught.value.breaker == server.breaker
        assert caught.value.retry_after > 0
        assert server.count() == 3

    def test_rejection_is_the_clients_connection_error(
        self, server: FlakyServer, instrument: Callable[..., None]
    ) -> None:
        """With the circuit open, the client's own except clause answers from a cache; no request is sent."""
        instrument(breaker_consecutive_failures=3)
        server.script(503, 503, 503)
        assert self.get(server.url).status == 503

        def price() -> str:
            try:
                self.get(server.url + "/price")
            except self.transport_error:
                return "cached"
            return "fresh"

        assert price() == "cached"
        with pytest.raises(self.connect_error) as caught:
            self.get(server.url + "/price")
        check_rejection(caught.value, server.breaker, self.integration)
        assert caught.value.retry_after > 0
        assert server.count() == 3

    def test_open_breaker_makes_no_connection(
        self, refused: RefusedPort, instrument: Callable[..., None]
    ) -> None:
        """Once refused connections opened the breaker, the next call makes no connection attempt at all."""
        instrument(breaker_consecutive_failures=3)
        with pytest.raises(self.transport_error):
            self.get(refused.url)
        refused.listen()
        with pytest.raises(otelres.CircuitOpenError):
            self.get(refused.url)
        assert refused.accepted() == 0
        # The probe sees a connection when one is made (uninstrumented: one attempt, which times out).
        otelres.uninstrument()
        with pytest.raises(self.transport_error):
            self.get(refused.url, timeout=SHORT_TIMEOUT)
        assert refused.accepted() == 1

    def test_breaker_name_is_scheme_host_port(
        self, server: FlakyServer, instrument: Callable[..., None]
    ) -> None:
        """The breaker is named scheme://host:port: no user, password, path or query."""
        instrument()
        url = f"http://user:s3cret@127.0.0.1:{server.port}/a/b?token=xyz"
        with capture_events() as events:
            assert self.get(url).status == 200
        assert server.requests[0].path == "/a/b?token=xyz"
        assert {e.breaker for e in events.events} == {f"http://127.0.0.1:{server.port}"}
        assert [b.name for b in otelres.default_registry().breakers()] == [f"http://127.0.0.1:{server.port}"]

    # -- patching -----------------------------------------------------------------------------------

    def test_uninstrument_restores_the_originals(
        self, server: FlakyServer, instrument: Callable[..., None]
    ) -> None:
        """uninstrument() puts back the very function objects that were there before instrument()."""
        before = {(owner, name): owner.__dict__[name] for owner, name in self.patched()}
        instrument()
        owner, name = self.patched()[0]
        assert isinstance(owner.__dict__[name], wrapt.FunctionWrapper)
        otelres.uninstrument()
        # Identity, not ==: a wrapt proxy compares equal to the function it wraps.
        changed = [f"{o.__name__}.{n}" for (o, n), f in before.items() if o.__dict__[n] is not f]
        assert changed == []
        server.script(503, 200)
        assert self.get(server.url).status == 503
        assert server.count() == 1

    def test_instrument_twice_patches_once(
        self, server: FlakyServer, instrument: Callable[..., None]
    ) -> None:
        """instrument() twice (and the instrumentor again) leaves one wrapper: one loop of three attempts."""
        instrument()
        instrument()
        self.otelres_instrumentor().instrument()
        owner, name = self.patched()[0]
        wrapper = owner.__dict__[name]
        assert isinstance(wrapper, wrapt.FunctionWrapper)
        assert not isinstance(wrapper.__wrapped__, wrapt.FunctionWrapper)
        server.script(*[503] * 9, 200)
        assert self.get(server.url).status == 503
        assert server.count() == 3

    def test_suppressed_instrumentation_passes_through(
        self, server: FlakyServer, instrument: Callable[..., None]
    ) -> None:
        """A request made while OpenTelemetry instrumentation is suppressed is neither retried nor counted."""
        instrument()
        server.script(503, 200)
        with capture_events() as events, suppress_instrumentation():
            reply = self.get(server.url)
        assert reply.status == 503
        assert server.count() == 1
        assert events.events == []
        found = stats(server.breaker)
        assert found is None or (found.successes, found.failures) == (0, 0)

    # -- spans --------------------------------------------------------------------------------------

    @pytest.fixture
    def client_spans(
        self, tracing: tuple[TracerProvider, InMemorySpanExporter]
    ) -> Iterator[Callable[[str], InMemorySpanExporter]]:
        """Install otelres and OpenTelemetry's instrumentation (CLIENT spans into ``tracing``) in an
        order: ``otelres_first``, ``opentelemetry_first``, or ``otelres_only`` (no CLIENT spans).
        """
        provider, exporter = tracing
        theirs = self.opentelemetry_instrumentor()
        ours = self.otelres_instrumentor()

        def install(order: str) -> InMemorySpanExporter:
            if order in ("otelres_first", "otelres_only"):
                otelres.configure(otelres.load_settings(overrides=FAST))
                ours.instrument()
                if order == "otelres_first":
                    theirs.instrument(tracer_provider=provider)
            else:
                theirs.instrument(tracer_provider=provider)
                otelres.instrument(**FAST)
            otelres.telemetry.enable(tracer_provider=provider)
            return exporter

        yield install
        otelres.uninstrument()
        for instrumentor in (theirs, ours):
            if instrumentor.is_instrumented_by_opentelemetry:
                instrumentor.uninstrument()

    @staticmethod
    def call_and_attempts(exporter: InMemorySpanExporter, breaker: str) -> tuple[ReadableSpan, list[Any]]:
        spans = exporter.get_finished_spans()
        calls = [s for s in spans if s.kind is SpanKind.INTERNAL and s.name == f"otelres {breaker}"]
        assert len(calls) == 1, [s.name for s in spans]
        clients = sorted((s for s in spans if s.kind is SpanKind.CLIENT), key=lambda s: s.start_time or 0)
        return calls[0], clients

    @pytest.mark.parametrize("order", ["otelres_first", "opentelemetry_first"])
    def test_attempts_are_client_spans_under_one_call_span(
        self, server: FlakyServer, client_spans: Callable[[str], InMemorySpanExporter], order: str
    ) -> None:
        """A call retried twice, the destination in trouble: one INTERNAL call span, three CLIENT
        children, resend_count 1 and 2."""
        exporter = client_spans(order)
        server.script(503, 503, 200)
        with in_trouble(server.breaker):
            assert self.get(server.url).status == 200
        call, clients = self.call_and_attempts(exporter, server.breaker)
        assert len(clients) == 3
        for client in clients:
            assert client.parent is not None
            assert client.parent.span_id == call.context.span_id
            assert client.context.trace_id == call.context.trace_id
        assert [(c.attributes or {}).get(RESEND_COUNT) for c in clients] == [None, 1, 2]
        assert [e.name for e in call.events] == ["otelres.retry", "otelres.retry"]
        assert call.status.status_code is not StatusCode.ERROR

    def test_a_plain_success_is_one_client_span(
        self, server: FlakyServer, client_spans: Callable[[str], InMemorySpanExporter]
    ) -> None:
        """A call that succeeds at once exports OpenTelemetry's CLIENT span and nothing else."""
        exporter = client_spans("opentelemetry_first")
        server.script(200)
        assert self.get(server.url).status == 200
        assert [s.kind for s in exporter.get_finished_spans()] == [SpanKind.CLIENT]

    def test_the_first_retry_after_quiet_times_starts_the_call_span(
        self, server: FlakyServer, client_spans: Callable[[str], InMemorySpanExporter]
    ) -> None:
        """The destination quiet until now: its first attempt's CLIENT span is the call span's
        sibling (it ended before the retry was decided); the retries are the call span's children."""
        exporter = client_spans("opentelemetry_first")
        server.script(503, 200)
        assert self.get(server.url).status == 200
        call, (first, second) = self.call_and_attempts(exporter, server.breaker)
        assert first.parent is None
        assert call.parent is None
        assert second.parent is not None
        assert second.parent.span_id == call.context.span_id
        assert call.start_time is not None
        assert first.start_time is not None
        assert call.start_time <= first.start_time + 1_000_000  # back-dated to the call's start (1 ms slack)

    def test_exhausted_call_span_has_status_error(
        self, server: FlakyServer, client_spans: Callable[[str], InMemorySpanExporter]
    ) -> None:
        """When the last attempt is still a 503, the call span has status ERROR over three CLIENT spans."""
        exporter = client_spans("opentelemetry_first")
        server.script(503, 503, 503)
        assert self.get(server.url).status == 503
        call, clients = self.call_and_attempts(exporter, server.breaker)
        assert len(clients) == 3
        assert call.status.status_code is StatusCode.ERROR

    def test_no_resend_count_on_the_call_span(
        self, server: FlakyServer, client_spans: Callable[[str], InMemorySpanExporter]
    ) -> None:
        """Without CLIENT spans (OpenTelemetry's instrumentation off), the call span gets no resend_count."""
        exporter = client_spans("otelres_only")
        server.script(503, 503, 200)
        assert self.get(server.url).status == 200
        call, clients = self.call_and_attempts(exporter, server.breaker)
        assert clients == []
        assert RESEND_COUNT not in (call.attributes or {})
