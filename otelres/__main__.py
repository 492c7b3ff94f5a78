"""The ``otelres`` command (also ``python -m otelres``)."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from . import __version__, _cli_fleet


def _parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The command's parser and the demo's (which reports the demo's bad values)."""
    parser = argparse.ArgumentParser(prog="otelres", description="Resilience for a service's dependencies.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="a flaky upstream and plain requests/httpx calls surviving it, live",
        description=(
            "A flaky HTTP upstream on loopback (healthy, degrading, down, recovering) and an "
            "application's plain requests.get() and httpx.AsyncClient().get() calls, made resilient "
            "by otelres.instrument() alone; a live view of the breaker and the retries. With "
            "OTEL_EXPORTER_OTLP_ENDPOINT set, traces go there (Jaeger: http://localhost:4318)."
        ),
    )
    demo.add_argument(
        "--duration", type=float, default=None, help="seconds to run (default: the whole 30 s script)"
    )
    demo.add_argument("--workers", type=int, default=4, help="threads calling requests.get() (default 4)")
    demo.add_argument(
        "--prometheus-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve Prometheus metrics at http://127.0.0.1:PORT/metrics",
    )
    _cli_fleet.add_parsers(commands)
    _add_export(commands)
    return parser, demo


def _add_export(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from . import _export  # noqa: PLC0415 - light, but loaded with its command only

    export = commands.add_parser(
        "export",
        help="write the dashboard, alert rules, runbooks, Grafana, Kubernetes and compose files to DIR",
        description=(
            "Write the files otelres ships for operating it into DIR, ready to use: the Grafana "
            "dashboard and provisioning, the Prometheus alert rules with their promtool tests and "
            "runbooks, Alertmanager and Prometheus configurations, a Kubernetes example and a compose "
            "stack with the demo (docker compose up --build in DIR). Existing files are left alone "
            "unless --force."
        ),
    )
    export.add_argument("directory", metavar="DIR", help="where to write (created if missing)")
    export.add_argument(
        "--job",
        default=_export.DEFAULT_JOB,
        metavar="NAME",
        help=(
            "the Prometheus job of your service, which should be its OTEL_SERVICE_NAME: the scrape "
            "job, the Kubernetes example's names, the dashboard's initial job "
            f"(default {_export.DEFAULT_JOB}, the demo's)"
        ),
    )
    export.add_argument(
        "--jaeger-url",
        default=_export.DEFAULT_JAEGER_URL,
        metavar="URL",
        help=f"where the dashboard's trace links open Jaeger (default {_export.DEFAULT_JAEGER_URL})",
    )
    export.add_argument(
        "--runbook-base",
        default=None,
        metavar="URL",
        help=(
            "where you publish the runbooks: each alert's runbook_url is URL/<alert>.md (default: the "
            "runbooks written to DIR/runbooks, as file:// URLs)"
        ),
    )
    export.add_argument("--force", action="store_true", help="overwrite files that exist")
    export.set_defaults(usage=export)  # reports a bad option with the export's usage


def _run_export(args: argparse.Namespace) -> int:
    from . import _export  # noqa: PLC0415 - see _add_export

    directory = Path(args.directory)
    try:
        done = _export.export(
            directory,
            job=args.job,
            jaeger_url=args.jaeger_url,
            runbook_base=args.runbook_base,
            force=args.force,
        )
    except _export.OptionError as exc:
        args.usage.error(str(exc))
    except _export.ExportError as exc:
        print(f"otelres export: {exc}", file=sys.stderr)
        return 1
    print(f"otelres export: wrote {len(done.files)} files to {directory}")
    for path in done.files:
        print(f"  {path.relative_to(directory).as_posix()}")
    print(f"job {done.job}, Jaeger {done.jaeger_url}, runbooks {done.runbook_base}<alert>.md")
    if args.runbook_base is None:
        print("  (publish runbooks/ where your team reads it and export again with --runbook-base URL)")
    print(f"Try it: cd {directory} && docker compose up --build  (Grafana: http://localhost:3000)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the sub-command."""
    parser, demo = _parser()
    args = parser.parse_args(argv)
    if args.command in _cli_fleet.COMMANDS:
        return _cli_fleet.run(args)
    if args.command == "export":
        return _run_export(args)
    if args.command == "demo":
        duration, port = args.duration, args.prometheus_port
        if duration is not None and not duration > 0:
            demo.error(f"--duration must be > 0 (seconds), not {duration}")
        if duration is not None and not math.isfinite(duration):
            demo.error(f"--duration must be a finite number of seconds, not {duration}")
        if args.workers < 1:
            demo.error(f"--workers must be >= 1, not {args.workers}")
        if port is not None and not 1 <= port <= 65535:
            demo.error(f"--prometheus-port must be between 1 and 65535, not {port}")
        from .demo import DemoError, run_demo  # noqa: PLC0415 - the demo loads only when asked for

        try:
            totals = run_demo(duration=duration, workers=args.workers, prometheus_port=port)
        except DemoError as exc:
            print(f"otelres demo: {exc}", file=sys.stderr)
            return 1
        if totals.get("interrupted"):
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
