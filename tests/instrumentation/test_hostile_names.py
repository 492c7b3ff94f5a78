"""Hostile hosts: one host is one breaker whichever library calls it, and any URL gives None or a
bounded, ASCII, credential-free breaker name (hypothesis explores the URLs)."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

import otelres
from otelres.instrumentation._http import breaker_name


@pytest.mark.parametrize(
    "url",
    ["http://Bücher.Example/books", "https://ÉCOLE.fr:8443/x?y=1", "http://USER:pw@Api.Example.com/"],
)
def test_requests_and_httpx_name_one_host_one_breaker(url: str) -> None:
    """requests gets the raw URL, httpx sends its punycode form: both give the same breaker name."""
    assert breaker_name(url) == breaker_name(str(httpx.URL(url)))
    name = breaker_name(url)
    assert name is not None
    assert name.isascii()
    assert name == name.lower()


def test_an_idn_host_is_named_in_punycode() -> None:
    """bücher.example is xn--bcher-kva.example, with the scheme's default port."""
    assert breaker_name("http://bücher.example/") == "http://xn--bcher-kva.example:80"


def test_a_70kb_host_gives_a_bounded_breaker() -> None:
    """A 70 KB host name makes a breaker named in at most 200 characters."""
    name = breaker_name("https://" + "a" * 70_000 + ".example/")
    assert name is not None
    assert len(otelres.default_registry().guard(name).name) <= 200


URLS = st.one_of(
    st.text(max_size=200),
    st.builds(
        "{}://{}{}".format,
        st.sampled_from(["http", "https", "HTTPS", "ftp"]),
        st.text(min_size=1, max_size=80),
        st.text(max_size=20),
    ),
)


@given(URLS)
def test_any_url_gives_none_or_a_clean_name(url: str) -> None:
    """Whatever the URL, the name is None or a scheme://host:port without user info or path."""
    name = breaker_name(url)
    if name is None:
        return
    scheme, _, rest = name.partition("://")
    assert scheme in ("http", "https")
    assert "@" not in rest
    assert "/" not in rest
    safe = otelres.default_registry().guard(name).name
    assert len(safe) <= 200
    assert not any(ord(c) < 32 for c in safe)
