"""Secrets out of what a health report shows: URL credentials and query strings,
``password=``/``token:``-style pairs, ``Authorization`` and ``Bearer`` values.

A check's error message is written by a driver that knows nothing of where it
ends up (it may repeat the DSN or URL it was given, password included); a
health body is read by whoever can reach the probe. Everything a report carries about
an error goes through :func:`describe`, and so through :func:`sanitize`.
"""

from __future__ import annotations

import re

from otelres._names import without_userinfo

__all__ = ["describe", "sanitize"]

#: The longest error a report carries (after sanitizing).
_MAX_ERROR = 500

_SENSITIVE_NAME = (
    r"[\w.-]*(?:passw(?:or)?d|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|credentials?)[\w.-]*"
)
_URL_QUERY = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s?#\"'<>]*)\?[^\s#\"'<>]*")
#: A URL as an error message writes it: up to whitespace or a quote (a password may hold
#: a raw ``/``, ``@`` or ``#``, so its user information is found as breaker names' is).
_URL_TOKEN = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<rest>[^\s\"'<>]+)")


def _mask_userinfo(match: re.Match[str]) -> str:
    rest = match["rest"]
    bare = without_userinfo(rest)
    return match["scheme"] + rest if bare == rest else f"{match['scheme']}***@{bare}"


_BARE_USERINFO = re.compile(r"(?<![\w/.-])[^\s:/@\"'<>]+:[^\s/@\"'<>]+@(?=[\w\[])")
_AUTHORIZATION = re.compile(
    r"(?P<head>\b(?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?)(?:(?:bearer|basic|digest|token)\s+)?[^\s\"',;]+",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(?P<head>\b(?:bearer|basic)\s+)(?!\*\*\*)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
_KEY_VALUE = re.compile(
    rf"(?P<head>(?<![\w.-]){_SENSITIVE_NAME}[\"']?\s*[=:]\s*)(?P<value>\"[^\"]*\"|'[^']*'|[^\s&;,\"'<>)}}\]]+)",
    re.IGNORECASE,
)


def sanitize(text: str) -> str:
    """``text`` without secrets: URL userinfo (``user:pass@`` becomes ``***@``), URL
    query strings, ``password=...``/``token: ...``-style pairs (quoted or not) and
    ``Authorization``/``Bearer`` credentials.
    """
    text = _URL_TOKEN.sub(_mask_userinfo, text)
    text = _URL_QUERY.sub(r"\g<head>?***", text)
    text = _BARE_USERINFO.sub("***@", text)
    text = _AUTHORIZATION.sub(r"\g<head>***", text)
    text = _BEARER.sub(r"\g<head>***", text)
    return _KEY_VALUE.sub(r"\g<head>***", text)


def describe(exc: BaseException) -> str:
    """The sanitized one-line error a report carries for ``exc``."""
    text = sanitize(" ".join(f"{type(exc).__name__}: {exc}".split()))
    return text if len(text) <= _MAX_ERROR else text[: _MAX_ERROR - 3] + "..."
