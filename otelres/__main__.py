"""The ``otelres`` command (also ``python -m otelres``)."""

from __future__ import annotations

import argparse
import math
import sys

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
    return parser, demo


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the sub-command."""
    parser, demo = _parser()
    args = parser.parse_args(argv)
    if args.command in _cli_fleet.COMMANDS:
        return _cli_fleet.run(args)
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
