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

__all__ = ["MAX_LENGTH", "safe_name", "without_userinfo"]

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


#: What may stand before the first ``/`` of a URL's rest when that is a host: names,
#: addresses, ``[v6]``, percent-escapes, several ``host:port`` separated by commas.
_HOSTS = re.compile(
    r"(?:\[[0-9A-Fa-f:.]+\]|[\w.%~-]+)(?::\d*)?(?:,(?:\[[0-9A-Fa-f:.]+\]|[\w.%~-]+)(?::\d*)?)*"
)


def without_userinfo(rest: str) -> str:
    """``user:p@ss/w#rd@host:5432/db`` -> ``host:5432/db``.

    A host never holds an ``@``, so everything up to the last ``@`` is user
    information (a password may hold a raw ``@``, ``/`` or ``#``), the cautious
    reading, except where the ``@`` plainly belongs to a path: the authority
    (up to the first ``/``, ``?`` or ``#``) is a host with no ``@``, and no
    ``:`` (the user:password separator) stands between it and the last ``@``
    (``host:443/u/a@b``). An empty authority (``sqlite:///a@b.db``) holds
    nothing to strip.
    """
    at = rest.rfind("@")
    if at < 0:
        return rest
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if not authority:
        return rest
    if "@" not in authority and _HOSTS.fullmatch(authority) and ":" not in rest[len(authority) : at]:
        return rest
    return rest[at + 1 :]


#: ``key=value`` words of a keyword DSN (``host=db password=x``) whose key looks secret.
_SECRET_WORD = re.compile(
    r"(?i)\b[\w.-]*(?:pass|pwd|secret|token|key|auth|sig|credential)[\w.-]*\s*=\s*(?:'[^']*'|\S+)"
)
#: ``user:password@`` at the start of a name without a scheme (``app:S3CRET@db:5432/app``).
_BARE_USERINFO = re.compile(r"^[^\s/@:]*:[^\s]*@")


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
        name = _SECRET_WORD.sub("", name)
        if _BARE_USERINFO.match(name):
            name = name[name.rfind("@") + 1 :]
        return _bounded(" ".join(name.split()))
    rest = without_userinfo(rest)
    rest, _, _fragment = rest.partition("#")
    rest, qsep, query = rest.partition("?")
    host, slash, path = rest.partition("/")
    query = _without_secret_params(query) if qsep else ""
    made = f"{scheme.lower()}://{_lower_host(host)}{slash}{path}" + (f"?{query}" if query else "")
    return _bounded(made)
