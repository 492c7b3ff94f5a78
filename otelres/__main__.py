"""The ``otelres`` command (also ``python -m otelres``)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the sub-command."""
    parser = argparse.ArgumentParser(prog="otelres", description="Resilience for a service's dependencies.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="a flaky upstream and a workload surviving it, live")
    demo.add_argument(
        "--duration", type=float, default=None, help="seconds to run (default: the whole script)"
    )
    demo.add_argument("--workers", type=int, default=4, help="concurrent callers (default 4)")
    args = parser.parse_args(argv)
    if args.command == "demo":
        if args.duration is not None and args.duration <= 0:
            parser.error(f"--duration must be > 0, not {args.duration}")
        if args.workers < 1:
            parser.error(f"--workers must be >= 1, not {args.workers}")
        from .demo import run_demo  # noqa: PLC0415 - the demo loads only when asked for

        run_demo(duration=args.duration, workers=args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
