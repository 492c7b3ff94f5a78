"""Breaker names, made safe where they are made.

A breaker's name reaches metric labels, spans, logs, readiness reports and
(with ``show_details``) HTTP headers. Whoever writes it (an integration from a
URL or DSN, or a user: ``Resilience("postgresql://app:S3CRET@db:5432/app")``),
:func:`safe_name` runs once, in the registry, before anything else sees it:

- user information is removed (everything up to the last ``@`` of the
  authority, so a password holding a raw ``@``, ``/`` or ``#`` goes too), and
  with it any fragment;
- query parameters whose names look secret (``password``, ``token``, ``key``,
  ``secret``, ``sig``...) are removed, the others kept;
- scheme and host are lower-cased; control characters are dropped;
- the result is at most :data:`MAX_LENGTH` characters: a longer name keeps its
  start and ends with a short digest, so two long names stay apart.
"""

from __future__ import annotations

import hashlib
import re

__all__ = ["MAX_LENGTH", "safe_name"]

#: The longest breaker name (a label value, a header value): 200 characters.
MAX_LENGTH = 200

_SECRET_KEY = re.compile(
    r"pass|pwd|secret|token|key|auth|sig|credential|session|cookie|private", re.IGNORECASE
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: A percent-escape (kept as written) or a run of anything else (lower-cased).
_ESCAPE_OR_TEXT = re.compile(r"%[0-9A-Fa-f]{2}|[^%]+|%")


def _lower_host(host: str) -> str:
    """Lower case, but percent-escapes as written (a Unix socket's ``%2Fvar%2Frun``)."""
    return _ESCAPE_OR_TEXT.sub(
        lambda m: m.group(0) if m.group(0).startswith("%") else m.group(0).lower(), host
    )


def _without_userinfo(rest: str) -> str:
    """``user:p@ss/w#rd@host:5432/db`` -> ``host:5432/db``.

    The authority ends at the first ``/``, ``?`` or ``#`` after its last ``@``:
    a host never holds an ``@``, so whatever comes before the last one (up to
    the start of a path that has no ``@`` of its own) is user information.
    """
    at = rest.rfind("@")
    if at < 0:
        return rest
    # An '@' inside the path or query (after the host) is not user information: look for
    # the host after the last '@' and check that what precedes it has no path of its own.
    head, host = rest[:at], rest[at + 1 :]
    if "/" in head.partition(":")[0] and "/" not in host.partition("?")[0]:
        # "host/path@x": the '@' belongs to the path (the first segment has no ':' and a '/').
        return rest
    return host


def _without_secret_params(query: str) -> str:
    kept = [part for part in query.split("&") if part and not _SECRET_KEY.search(part.partition("=")[0])]
    return "&".join(kept)


def _bounded(name: str) -> str:
    if len(name) <= MAX_LENGTH:
        return name
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{name[: MAX_LENGTH - 13]}~{digest}"


def safe_name(name: str) -> str:
    """The name as it may be published (see the module docstring)."""
    name = _CONTROL.sub("", name).strip()
    scheme, sep, rest = name.partition("://")
    if not sep:
        return _bounded(name)
    rest = _without_userinfo(rest)
    rest, _, _fragment = rest.partition("#")
    rest, qsep, query = rest.partition("?")
    host, slash, path = rest.partition("/")
    query = _without_secret_params(query) if qsep else ""
    made = f"{scheme.lower()}://{_lower_host(host)}{slash}{path}" + (f"?{query}" if query else "")
    return _bounded(made)
