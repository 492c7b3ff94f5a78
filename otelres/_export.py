"""``otelres export DIR``: the files otelres ships for operating it, written out ready to use.

The package data under ``otelres/assets/`` (the Grafana dashboard, the Prometheus alert rules and
their promtool tests, the runbooks, Grafana and Alertmanager provisioning, the Kubernetes example
and the compose stack with the demo) are templates: each value a user chooses appears as a token,
``@OTELRES_JOB@`` say, that :func:`export` replaces in one pass. Nothing else is rewritten, so
what is exported is byte for byte what the repository tests, apart from the chosen values.
"""

from __future__ import annotations

import dataclasses
import re
import urllib.parse
from importlib import resources
from typing import TYPE_CHECKING

from . import __version__

if TYPE_CHECKING:
    import sys
    from collections.abc import Iterator, Mapping
    from pathlib import Path

    if sys.version_info >= (3, 11):
        from importlib.resources.abc import Traversable
    else:
        from importlib.abc import Traversable

__all__ = [
    "DEFAULT_JAEGER_URL",
    "DEFAULT_JOB",
    "TOKENS",
    "ExportError",
    "Exported",
    "OptionError",
    "asset_paths",
    "check_job",
    "check_url",
    "export",
    "render",
]

#: The directory of the shipped files inside the package.
ASSETS = "assets"

#: The Prometheus job of the application (its ``OTEL_SERVICE_NAME``): the scrape job of
#: prometheus.yml, the demo's service name in compose, the Kubernetes example's pod label (the
#: PodMonitor's jobLabel), the dashboard's initial job.
JOB = "@OTELRES_JOB@"
#: The Kubernetes object names of the example: the job, lower-cased, other characters made ``-``.
K8S_NAME = "@OTELRES_K8S_NAME@"
#: The dashboard's ``jaeger_url`` default: where its links open Jaeger's trace search.
JAEGER_URL = "@OTELRES_JAEGER_URL@"
#: What every ``runbook_url`` starts with; the alert's name and ``.md`` follow.
RUNBOOK_BASE = "@OTELRES_RUNBOOK_BASE@"
#: The otelres version the demo image installs: the one exporting.
VERSION = "@OTELRES_VERSION@"
TOKENS = (JOB, K8S_NAME, JAEGER_URL, RUNBOOK_BASE, VERSION)
TOKEN = re.compile(r"@OTELRES_[A-Z0-9_]+@")

DEFAULT_JOB = "otelres-demo"
DEFAULT_JAEGER_URL = "http://localhost:16686"

# A Kubernetes label value (the PodMonitor takes the job from a pod label): at most 63 letters,
# digits, '-', '_' or '.', starting and ending with a letter or digit. A valid Prometheus label
# value, and safe unquoted in PromQL strings, YAML and JSON.
_JOB = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?")
# The characters of an RFC 3986 URI; with percent-escapes well formed, below.
_URL_CHARS = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


class OptionError(ValueError):
    """An export option has a value it cannot take (the message names the option)."""


class ExportError(Exception):
    """The export cannot be done: files in the way, or the file system refused."""


@dataclasses.dataclass(frozen=True)
class Exported:
    """What :func:`export` wrote, and the values it filled in."""

    directory: Path
    files: tuple[Path, ...]
    job: str
    jaeger_url: str
    runbook_base: str


def check_job(value: str) -> str:
    """``value`` if it can be the job: a Kubernetes label value (see ``_JOB``)."""
    if not _JOB.fullmatch(value):
        raise OptionError(
            f"--job must be 1 to 63 letters, digits, '-', '_' or '.', starting and ending with a "
            f"letter or digit (a Prometheus job that is also a Kubernetes label value), not {value!r}"
        )
    return value


def check_url(option: str, value: str) -> str:
    """``value`` if it is an absolute http(s) URL without user, password, query or fragment."""

    def refuse(why: str, *, show: bool = True) -> OptionError:
        shown = f", not {value!r}" if show else ""
        return OptionError(f"{option} must be an absolute http:// or https:// URL ({why}){shown}")

    if not _URL_CHARS.fullmatch(value) or _BAD_ESCAPE.search(value):
        raise refuse("URL characters only, no spaces or quotes")
    parts = urllib.parse.urlsplit(value)
    if parts.scheme.lower() not in {"http", "https"}:
        raise refuse("scheme http or https")
    try:
        port = parts.port  # a bad port raises here
    except ValueError:
        port = -1
    if parts.username is not None or parts.password is not None:
        raise refuse("no user or password in it", show=False)  # never echo a password
    if not parts.hostname or port in {-1, 0}:
        raise refuse("a host, and a port from 1 to 65535 if any")
    if parts.query or parts.fragment or value.endswith(("?", "#")):
        raise refuse("no query or fragment")
    return value


def _k8s_name(job: str) -> str:
    """A Kubernetes object name (RFC 1123 label) for the job."""
    return re.sub(r"[^a-z0-9]+", "-", job.lower()).strip("-")


def _assets() -> Traversable:
    return resources.files("otelres").joinpath(ASSETS)


def _walk(folder: Traversable, prefix: str) -> Iterator[tuple[str, Traversable]]:
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name == "__pycache__" or entry.name.startswith("."):
            continue
        path = f"{prefix}{entry.name}"
        if entry.is_dir():
            yield from _walk(entry, path + "/")
        else:
            yield path, entry


def asset_paths() -> list[str]:
    """The shipped files, as paths relative to the assets directory (``/``-separated, sorted)."""
    return [path for path, _ in _walk(_assets(), "")]


def render(template: str, values: Mapping[str, str]) -> str:
    """``template`` with every token replaced by its value, in one pass (values are not rescanned)."""

    def value(match: re.Match[str]) -> str:
        token = match.group(0)
        if token not in values:
            raise ExportError(f"unknown token {token} in otelres's assets")
        return values[token]

    return TOKEN.sub(value, template)


def export(
    directory: Path,
    *,
    job: str = DEFAULT_JOB,
    jaeger_url: str = DEFAULT_JAEGER_URL,
    runbook_base: str | None = None,
    force: bool = False,
) -> Exported:
    """Write the shipped files into ``directory`` with the values filled in.

    ``runbook_base`` None links the alerts to the runbooks written here, as ``file://`` URLs.
    Refuses (:class:`ExportError`, nothing written) when a file to write exists, unless ``force``;
    a bad value is an :class:`OptionError`.
    """
    job = check_job(job)
    jaeger_url = check_url("--jaeger-url", jaeger_url).rstrip("/")
    if directory.exists() and not directory.is_dir():
        raise ExportError(f"{directory} exists and is not a directory")
    if runbook_base is None:
        runbook_base = (directory.resolve() / "runbooks").as_uri()
    else:
        runbook_base = check_url("--runbook-base", runbook_base)
    runbook_base = runbook_base.rstrip("/") + "/"
    values = {
        JOB: job,
        K8S_NAME: _k8s_name(job),
        JAEGER_URL: jaeger_url,
        RUNBOOK_BASE: runbook_base,
        VERSION: __version__,
    }
    files = [(directory.joinpath(*path.split("/")), entry) for path, entry in _walk(_assets(), "")]
    in_the_way = [target for target, _ in files if target.exists() or target.is_symlink()]
    if in_the_way and not force:
        listed = ", ".join(str(target) for target in in_the_way[:3])
        more = f" and {len(in_the_way) - 3} more" if len(in_the_way) > 3 else ""
        raise ExportError(f"{listed}{more} already exist: pass --force to overwrite")
    written: list[Path] = []
    try:
        for target, entry in files:
            text = render(entry.read_bytes().decode("utf-8"), values)
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_symlink() or target.is_file():
                target.unlink()  # replace a link, never write through it
            target.write_bytes(text.encode("utf-8"))
            written.append(target)
    except OSError as exc:
        raise ExportError(f"cannot write {exc.filename or directory}: {exc.strerror or exc}") from exc
    return Exported(directory, tuple(written), job, jaeger_url, runbook_base)
