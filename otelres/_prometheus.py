"""Prometheus pull when a service runs as several processes: a port of its own for each.

``gunicorn -w 4`` and ``uvicorn --workers 4`` run the application in several
processes, and the SDK's ``prometheus`` exporter binds
``OTEL_EXPORTER_PROMETHEUS_PORT`` in each of them: the second one dies with
"Address already in use". Here each process serves its own metrics on the
first free port from that one upwards, within ``OTELRES_PROMETHEUS_PORTS``
ports, and Prometheus scrapes the range: every process is a target of its own,
so its calls are counted once, under its own ``instance``. The metrics are read
by opentelemetry-exporter-prometheus's :class:`PrometheusMetricReader` and
served by prometheus_client's ``start_http_server``: nothing is aggregated here.

A process forked from one that serves (gunicorn ``--preload``) has the
listening socket but not the thread that answered on it: it closes its copy and
serves on a port of its own (see :mod:`otelres._fork`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
from typing import TYPE_CHECKING, Any

from . import _fork
from ._errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["DEFAULT_PORT", "metric_reader", "serving"]

_log = logging.getLogger("otelres")

#: The specification's defaults for ``OTEL_EXPORTER_PROMETHEUS_HOST`` and ``_PORT``.
DEFAULT_HOST = "localhost"
DEFAULT_PORT = 9464


@dataclasses.dataclass
class _Serving:
    """Where this process serves its metrics, and what it needs to serve them again after a fork."""

    host: str
    first: int
    ports: int
    reader: Any
    #: The port served, None when none could be had.
    port: int | None = None
    #: Why no port could be had (the last error), when so.
    error: OSError | None = None
    #: prometheus_client's server (to close its socket in a forked child).
    server: Any = None


_serving: _Serving | None = None


def serving() -> tuple[str, int | None, OSError | None]:
    """(host, port served or None, the error that kept it from serving) of this process;
    ``("", None, None)`` when otelres serves no Prometheus metrics here.
    """
    current = _serving
    if current is None:
        return "", None, None
    return current.host, current.port, current.error


def _first_port(env: Mapping[str, str]) -> int:
    raw = (env.get("OTEL_EXPORTER_PROMETHEUS_PORT") or "").strip() or str(DEFAULT_PORT)
    if not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= 65535):
        raise ConfigError("OTEL_EXPORTER_PROMETHEUS_PORT", raw, "a TCP port, 1-65535")
    return int(raw)


def metric_reader(env: Mapping[str, str], ports: int) -> Any:
    """A :class:`PrometheusMetricReader` whose metrics this process serves on the first free
    port of ``ports`` from ``OTEL_EXPORTER_PROMETHEUS_PORT`` (9464) upwards, on
    ``OTEL_EXPORTER_PROMETHEUS_HOST`` (localhost). With every port taken it serves none and
    warns: a worker never dies for want of a metrics port.
    """
    global _serving  # noqa: PLW0603 - one metrics server per process
    from opentelemetry.exporter.prometheus import PrometheusMetricReader  # noqa: PLC0415 - only when asked for

    host = (env.get("OTEL_EXPORTER_PROMETHEUS_HOST") or "").strip() or DEFAULT_HOST
    first = _first_port(env)
    reader = PrometheusMetricReader()
    _serving = _Serving(host, first, ports, reader)
    _serve(_serving)
    return reader


def _serve(current: _Serving) -> None:
    """Serve on the first free port of the range; log the one served, or warn that none was."""
    from prometheus_client import start_http_server  # noqa: PLC0415 - with the reader

    last = min(current.first + current.ports, 65536) - 1
    for port in range(current.first, last + 1):
        try:
            started = start_http_server(port, addr=current.host)
        except OSError as exc:
            current.error = exc
            if exc.errno == errno.EADDRINUSE:
                continue
            break  # not a busy port (an unknown host, a port below 1024): the next would fail alike
        current.port, current.error = port, None
        # start_http_server returns (server, thread) since prometheus_client 0.17.
        current.server = started[0] if isinstance(started, tuple) else None
        _log.info(
            "otelres: process %d serves Prometheus metrics at http://%s:%d/metrics",
            os.getpid(),
            current.host,
            port,
        )
        return
    reason = current.error.strerror if current.error is not None else "no port to try"
    _log.warning(
        "otelres: process %d serves no Prometheus metrics: no port of %s:%d-%d could be had (%s); "
        "OTELRES_PROMETHEUS_PORTS=%d ports are tried, one per process",
        os.getpid(),
        current.host,
        current.first,
        last,
        reason,
        current.ports,
    )


def _after_fork_in_child() -> None:
    """Serve this process's own metrics: the parent's server thread is not here."""
    current = _serving
    if current is None:
        return
    if current.server is not None:
        with contextlib.suppress(OSError):
            current.server.server_close()  # this process's copy of the parent's socket only
    current.server, current.port, current.error = None, None, None
    # The exporter makes ``target_info`` from the resource at its first scrape and keeps it;
    # the SDK gives a forked child's provider a service.instance.id of its own, so the
    # parent's copy goes (read again at the child's first scrape).
    collector = getattr(current.reader, "_collector", None)
    if getattr(collector, "_target_info", None) is not None:
        collector._target_info = None  # type: ignore[union-attr] # checked just above
    _serve(current)


_fork.at_fork(after_in_child=_after_fork_in_child)
