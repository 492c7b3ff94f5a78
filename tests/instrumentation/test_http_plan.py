"""What the HTTP integrations work out before each request, and remember: a URL's breaker
name, cached by the URL's start (requests) or by its scheme, host and port (httpx).

The cache must name every URL exactly as :func:`breaker_name` does (hypothesis explores
the URLs), stay bounded under many hosts, keep no credential, and never hold a guard:
new settings, a new registry or a cleared one reach the very next request.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import requests
from http_contract import FAST
from hypothesis import example, given
from hypothesis import strategies as st

import otelres
import otelres.instrumentation.requests
from otelres import CircuitBreaker
from otelres._config import load_settings
from otelres._registry import Registry, set_default_registry
from otelres.instrumentation import _http
from otelres.instrumentation._http import (
    HTTP,
    KEY_MAX,
    NAMES_MAX,
    breaker_name,
    host_breaker_name,
    retry_reason,
    url_breaker_name,
)
from otelres.testing import capture_events

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from flaky_server import FlakyServer


@pytest.fixture(autouse=True)
def _no_names() -> Iterator[None]:
    """Every test starts and ends with nothing remembered."""
    _http._NAMES.clear()
    yield
    _http._NAMES.clear()


#: Characters that matter to urlsplit: separators, brackets, user info, the whitespace it
#: strips or drops, and a few letters, digits and non-ASCII ones.
URL_CHARS = st.sampled_from(list("/:@?#[]%.\t\n\r \x00-_aAbZ09ü\u3002\uff0f"))
URLS = st.one_of(
    st.text(URL_CHARS, max_size=40),
    st.builds(
        "{}{}{}{}".format,
        st.sampled_from(["", " ", "\t", "\x01"]),
        st.sampled_from(["http:", "https:", "HTTPS:", "ftp:", "http:/", "", "h\ttp:"]),
        st.sampled_from(["//", "/\t/", "/", "///", "\\\\"]),
        st.text(URL_CHARS, max_size=40),
    ),
)


@given(URLS)
@example("http:/\t/host/x")
@example("http:/\t//host/x")
@example("http://host?q=/a")
@example("http://host#/a")
@example("http://[::1]:8080/x")
@example("http://[::1/x]")
@example("http://user:pw@host:81/x")
@example("a/b//host:80/x")
@example("http://host:99999/")
def test_the_remembered_name_is_breaker_names(url: str) -> None:
    """Asked twice (the second time from the cache), any URL gets breaker_name's answer."""
    expected = breaker_name(url)
    assert url_breaker_name(url) == expected
    assert url_breaker_name(url) == expected


@pytest.mark.parametrize(("rest", "entries"), [("", 1), ("/", 1), ("/a/b?c=1", 1), ("?x=1", 2), ("#f", 2)])
def test_urls_of_one_host_share_one_entry(rest: str, entries: int) -> None:
    """A path is not part of what is remembered (a query or fragment with no path is)."""
    url_breaker_name("http://API.example.com:8080/first")
    assert url_breaker_name(f"http://API.example.com:8080{rest}") == "http://api.example.com:8080"
    assert len(_http._NAMES) == entries


HOSTS = st.one_of(
    st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z]{2,5}){0,2}", fullmatch=True),
    st.sampled_from(
        ["bücher.example", "ÉCOLE.fr", "[::1]", "[2001:db8::7]", "127.0.0.1", "xn--bcher-kva.example"]
    ),
)


@given(
    st.sampled_from(["http", "https", "HTTP"]),
    HOSTS,
    st.one_of(st.none(), st.integers(1, 65535)),
    st.sampled_from(["", "user@", "user:p%40ss@"]),
    st.sampled_from(["", "/", "/x/y?q=1#f"]),
)
def test_httpx_names_a_url_as_its_string_is_named(
    scheme: str, host: str, port: int | None, userinfo: str, path: str
) -> None:
    """httpx's parsed scheme, host and port give the name breaker_name gives its URL's string."""
    try:
        url = httpx.URL(f"{scheme}://{userinfo}{host}{'' if port is None else f':{port}'}{path}")
    except httpx.InvalidURL:
        return
    expected = breaker_name(str(url))
    assert host_breaker_name(url.scheme, url.raw_host, url.port) == expected
    assert host_breaker_name(url.scheme, url.raw_host, url.port) == expected


def test_many_hosts_keep_the_cache_bounded() -> None:
    """A crawler's hosts: the cache never holds more than NAMES_MAX entries, and still names right."""
    for i in range(NAMES_MAX * 3):
        assert url_breaker_name(f"https://h{i}.example/x") == f"https://h{i}.example:443"
        assert host_breaker_name("http", f"h{i}.example".encode(), 8080) == f"http://h{i}.example:8080"
        assert len(_http._NAMES) <= NAMES_MAX


def test_a_long_host_is_never_remembered() -> None:
    """A host longer than KEY_MAX is named afresh every time: no hostile host fills memory."""
    host = "a" * (KEY_MAX + 1) + ".example"
    assert url_breaker_name(f"http://{host}/") == breaker_name(f"http://{host}/")
    assert host_breaker_name("http", host.encode(), None) == breaker_name(f"http://{host}/")
    assert not _http._NAMES


def test_credentials_reach_neither_a_name_nor_the_cache() -> None:
    """A URL with a user and password gives the bare host's name, and is not kept."""
    url = "https://alice:s3cr3t@api.example.com/orders?token=t0k3n"
    assert url_breaker_name(url) == "https://api.example.com:443"
    assert url_breaker_name(url) == "https://api.example.com:443"
    assert not any("s3cr3t" in repr(key) or "alice" in repr(key) for key in _http._NAMES)
    parsed = httpx.URL(url)
    assert host_breaker_name(parsed.scheme, parsed.raw_host, parsed.port) == "https://api.example.com:443"
    assert not any("s3cr3t" in repr(key) or "alice" in repr(key) for key in _http._NAMES)


def test_retry_reason() -> None:
    """Replayable and idempotent, or carrying an Idempotency-Key, or configured: None."""
    guard = otelres.default_registry().guard("http://h.example:80", HTTP)
    assert retry_reason(guard, "POST", {"Idempotency-Key": "k"}, True) is None
    assert retry_reason(guard, "POST", None, True) == "not_idempotent"
    assert retry_reason(guard, "get", None, True) is None
    assert retry_reason(guard, "GET", None, False) == "not_replayable"
    otelres.configure(load_settings(overrides={"http.retry_unsafe": True}))
    unsafe_ok = otelres.default_registry().guard("http://h.example:80", HTTP)
    assert retry_reason(unsafe_ok, "PATCH", None, True) is None


def test_a_plain_request_reads_no_headers(
    server: FlakyServer, instrument: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replayable GET through requests is settled by its method: the headers requests will
    send are not worked out; a POST's are (an Idempotency-Key may make it retryable).
    """
    merged: list[object] = []
    real = otelres.instrumentation.requests._sent_headers

    def sent_headers(*sources: Any) -> dict[str, Any]:
        merged.append(sources)
        return real(*sources)

    monkeypatch.setattr(otelres.instrumentation.requests, "_sent_headers", sent_headers)
    instrument()
    with requests.Session() as session:
        session.get(server.url, timeout=5)
        session.put(server.url, data=b"x", timeout=5)
        assert merged == []
        session.post(server.url, data=b"x", timeout=5)
        assert len(merged) == 1


def _attempts(breaker: CircuitBreaker) -> int:
    stats = breaker.stats()
    return stats.successes + stats.failures + stats.ignored


@pytest.mark.parametrize("client", ["requests", "httpx"])
def test_new_settings_and_registries_reach_the_next_request(
    server: FlakyServer, instrument: Callable[..., None], client: str
) -> None:
    """Nothing the settings or the registry decide is remembered: after configure(), a new
    registry or a cleared one, the next request to a remembered host follows them.
    """
    instrument(retry_attempts=2)
    with requests.Session() if client == "requests" else httpx.Client() as session:

        def call_503() -> int:
            before = server.count()
            server.script(503, 503, 503, 503)
            session.get(server.url, timeout=5)
            return server.count() - before

        assert call_503() == 2
        otelres.configure(load_settings(overrides={**FAST, "retry_attempts": 3}))
        assert call_503() == 3

        fresh = Registry()
        previous = set_default_registry(fresh)
        try:
            call_503()
            breaker = fresh.get(server.breaker)
            assert _attempts(breaker) == 3  # the new registry's breaker judged them
            fresh.clear()
            call_503()
            renewed = fresh.get(server.breaker)
            assert renewed is not breaker
            assert _attempts(renewed) == 3  # the cleared registry's new breaker judged them
            assert _attempts(breaker) == 3
        finally:
            set_default_registry(previous)


def test_positional_files_are_not_replayed(server: FlakyServer, instrument: Callable[..., None]) -> None:
    """A file object passed positionally to Session.request is a stream: sent once, not_replayable."""
    instrument()
    server.script(503, 503)
    with otelres.retry_unsafe(), capture_events() as events, requests.Session() as session:
        response = session.request("POST", server.url, None, None, None, None, {"f": io.BytesIO(b"x")})
    assert response.status_code == 503
    assert server.count() == 1
    assert [e.fields["reason"] for e in events.of("retry_suppressed")] == ["not_replayable"]
