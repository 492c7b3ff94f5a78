"""The operator's side of shared state: ``otelres breakers`` and ``otelres breaker ...``.

``breakers`` lists what the fleet of one service knows (its state of each
breaker, and what the live processes hold locally, so that a disagreement
shows); ``breaker force-open|disable|reset NAME`` sets a fleet state, which
every process follows at its next sync (within two intervals).

Where: ``--redis``, else the settings (``OTELRES_SHARED_STATE``, or
``shared_state.url`` in the ``OTELRES_CONFIG`` file), read by the same
:func:`otelres.load_settings` as the services', so that the command reaches
the keys the services write. Which service: ``--service``, else
``shared_state.service``, else ``OTEL_SERVICE_NAME`` (as the services decide).

Exit status: 0 done; 1 Redis did not answer or refused; 2 a bad command line
or configuration. No message ever shows a password: URLs are shown as
:func:`otelres._names.safe_name` makes them, and Redis's own error texts are
scrubbed of the URL's credentials.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import TYPE_CHECKING, TextIO
from urllib.parse import unquote, urlsplit

from ._errors import ConfigError
from ._names import MAX_LENGTH, safe_name

if TYPE_CHECKING:
    from ._fleet_store import BreakerReport, FleetStore

__all__ = ["COMMANDS", "add_parsers", "check_name", "run"]

#: The sub-commands this module serves (``__main__`` hands them over).
COMMANDS = ("breakers", "breaker")

#: What each ``breaker`` action sets (``reset`` closes).
ACTIONS = {"force-open": "forced_open", "disable": "disabled", "reset": "closed"}

#: Seconds to wait for Redis. Longer than a service's own round trip (at most
#: 0.5 s, which must never slow a call): an operator's command may cross a WAN,
#: and waiting a little beats a false "cannot reach".
TIMEOUT = 5.0

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_OK, _CANNOT_REACH, _USAGE = 0, 1, 2


class _UsageError(Exception):
    """A bad command line or configuration: the message, and exit status 2."""


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``breakers`` and ``breaker`` to the ``otelres`` command."""
    listing = commands.add_parser(
        "breakers",
        help="list each breaker's state across the fleet (shared state on Redis)",
        description=(
            "Each breaker the fleet of a service knows: its fleet state, episode (moves with every "
            "fleet transition), seconds left of the open period, the process holding the half-open "
            "lease, and how many live processes are in each local state."
        ),
    )
    _target_options(listing, None)
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(fleet_parser=listing)

    control = commands.add_parser(
        "breaker",
        help="force open, disable or reset a breaker in every process of the fleet",
        description=(
            "Set a breaker's fleet state; every process of the service follows at its next sync "
            "(within two shared_state.interval)."
        ),
    )
    # Given before the action (breaker --redis URL reset NAME) or after it: both work.
    _target_options(control, None)
    actions = control.add_subparsers(dest="action", required=True, metavar="{force-open,disable,reset}")
    helps = {
        "force-open": "reject every call until reset",
        "disable": "admit every call and trip on nothing until reset",
        "reset": "close the breaker (and end a force-open or disable)",
    }
    for action, text in helps.items():
        sub = actions.add_parser(action, help=text, description=f"{text[0].upper()}{text[1:]}, fleet-wide.")
        sub.add_argument("name", metavar="NAME", help="the breaker's name, as `otelres breakers` lists it")
        _target_options(sub, argparse.SUPPRESS)
        sub.set_defaults(fleet_parser=sub)


def _target_options(parser: argparse.ArgumentParser, default: str | None) -> None:
    """``--redis`` and ``--service``. A nested parser's default is SUPPRESS, so that
    it does not overwrite a value its parent parser already took.
    """
    parser.add_argument(
        "--redis",
        metavar="URL",
        default=default,
        help="redis://host:port/db (default: OTELRES_SHARED_STATE, or shared_state.url in the config file)",
    )
    parser.add_argument(
        "--service",
        metavar="NAME",
        default=default,
        help="the service whose breakers to see (default: shared_state.service, else OTEL_SERVICE_NAME)",
    )


def check_name(name: str) -> str:
    """The breaker name to act on, or :class:`ValueError` saying why none can be.

    A process publishes its breakers under :func:`safe_name`'s form, so a name
    that function would change matches nothing. Only a change of case (a URL's
    scheme and host are lower-cased) is taken as meant, and the published form
    is used; anything else is refused rather than quietly rewritten, since it
    either could never be published (control characters, over 200 characters)
    or held something that never is (user information, a secret query
    parameter, a fragment, extra spaces). The raw name is never echoed: it may
    hold a password.
    """
    if not name.strip():
        raise ValueError("a breaker name is needed")
    if _CONTROL.search(name):
        raise ValueError("a breaker name holds no control characters")
    if len(name) > MAX_LENGTH:
        raise ValueError(
            f"a breaker name is at most {MAX_LENGTH} characters (a longer one is published as its "
            "start and a digest): copy the name from `otelres breakers`"
        )
    made = safe_name(name)
    if made == name or made.lower() == name.lower():
        return made
    raise ValueError(
        "a breaker name holds no user information, secret query parameters, fragment or extra "
        f"spaces; processes publish this one as {made!r}: use that name"
    )


def run(args: argparse.Namespace, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run ``breakers`` or ``breaker ...``; returns the exit status."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    parser: argparse.ArgumentParser = args.fleet_parser
    try:
        name = check_name(args.name) if args.command == "breaker" else ""
    except ValueError as exc:
        parser.error(str(exc))  # exits with status 2, after the usage
    try:
        url, service, interval = _where(args)
    except _UsageError as exc:
        parser.error(str(exc))
    except ConfigError as exc:  # never a password: the settings show URLs made safe
        err.write(f"otelres: {exc}\n")
        return _USAGE
    try:
        store = _store(url, service)  # no round trip yet: redis-py connects at the first command
    except ConfigError as exc:  # a bad URL, or redis-py missing
        err.write(f"otelres: {exc}\n")
        return _USAGE
    from redis.exceptions import ConnectionError as RedisConnectionError  # noqa: PLC0415
    from redis.exceptions import RedisError  # noqa: PLC0415
    from redis.exceptions import TimeoutError as RedisTimeoutError  # noqa: PLC0415

    shown = safe_name(url)
    try:
        if args.command == "breakers":
            _list(store, service, shown, as_json=args.json, out=out)
        else:
            _control(store, service, name, ACTIONS[args.action], interval, out=out)
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        err.write(f"otelres: cannot reach Redis at {shown} ({_error_text(exc, url)})\n")
        return _CANNOT_REACH
    except RedisError as exc:
        err.write(f"otelres: Redis at {shown} refused ({_error_text(exc, url)})\n")
        return _CANNOT_REACH
    finally:
        store.client.close()
    return _OK


def _where(args: argparse.Namespace) -> tuple[str, str, float]:
    """The Redis URL, the service and the sync interval, as the services' settings
    give them, with ``--redis`` and ``--service`` over them (validated alike).
    """
    from ._config import load_settings  # noqa: PLC0415 - the settings load only when needed
    from ._fleet import service_name  # noqa: PLC0415

    overrides: dict[str, object] = {}
    flags = {"shared_state.url": "--redis", "shared_state.service": "--service"}
    if args.redis is not None:
        overrides["shared_state.url"] = args.redis
    if args.service is not None:
        if not args.service.strip() or _CONTROL.search(args.service):
            raise _UsageError("--service must be a service name (not blank, no control characters)")
        overrides["shared_state.service"] = args.service
    try:
        shared = load_settings(overrides=overrides).shared_state
    except ConfigError as exc:
        # Named by the key the value came in under: here, ours for --redis and --service.
        if exc.key in overrides:
            raise ConfigError(flags[exc.key], exc.value, exc.allowed) from None
        raise
    if shared is None:
        raise _UsageError(
            "no Redis URL: set OTELRES_SHARED_STATE=redis://host:port/db (or shared_state.url in the "
            "OTELRES_CONFIG file), or pass --redis redis://host:port/db"
        )
    return shared.url, shared.service or service_name(), shared.interval


def _store(url: str, service: str) -> FleetStore:
    from ._fleet import redis_client  # noqa: PLC0415
    from ._fleet_store import FleetStore  # noqa: PLC0415

    return FleetStore(redis_client(url, TIMEOUT), service)


def _list(store: FleetStore, service: str, shown: str, *, as_json: bool, out: TextIO) -> None:
    reports = store.report()
    if as_json:
        document = {
            "service": service,
            "redis": shown,
            "breakers": [
                {
                    "name": r.name,
                    "state": r.state,
                    "episode": r.episode,
                    "open_seconds_left": r.remaining,
                    "lease": r.lease or None,
                    "processes": dict(sorted(r.processes.items())),
                    "disagreeing": _disagreeing(r),
                }
                for r in reports
            ],
        }
        out.write(json.dumps(document, indent=2) + "\n")
        return
    head = f"service {_printable(service)} at {shown}"
    if not reports:
        out.write(
            f"{head}: no breakers (no process of this service has synced with shared state yet; "
            "is the service name right? --service)\n"
        )
        return
    out.write(f"{head}: {len(reports)} breaker{'s' if len(reports) != 1 else ''}\n")
    rows = [("BREAKER", "STATE", "EPISODE", "OPEN LEFT", "LEASE", "PROCESSES")]
    rows += [
        (
            _printable(r.name),
            r.state,
            str(r.episode),
            f"{r.remaining:.1f} s" if r.state == "open" and r.remaining > 0 else "-",
            _printable(r.lease) or "-",
            _processes(r),
        )
        for r in reports
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    right = {2, 3}  # numbers line up on the right
    for row in rows:
        cells = [
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row[:-1], widths, strict=True))
        ]
        out.write("  ".join([*cells, row[-1]]).rstrip() + "\n")


def _disagreeing(report: BreakerReport) -> int:
    """Live processes in another state than the fleet's (half-open counts as open:
    the lease holder probes for the fleet), as the sync counts them.
    """
    agree = {report.state, "half_open"} if report.state == "open" else {report.state}
    return sum(n for state, n in report.processes.items() if state not in agree)


def _processes(report: BreakerReport) -> str:
    if not report.processes:
        return "none live"
    counts = sorted(report.processes.items(), key=lambda item: (-item[1], item[0]))
    text = ", ".join(f"{_printable(state)} {n}" for state, n in counts)
    differ = _disagreeing(report)
    return f"{text} ({differ} disagree)" if differ else text


def _control(store: FleetStore, service: str, name: str, state: str, interval: float, *, out: TextIO) -> None:
    known = {r.name: r for r in store.report()}
    episode = store.control(name, state)
    line = (
        f"{_printable(service)}: {_printable(name)} -> {state} (episode {episode}); "
        f"every process follows within {2 * interval:g} s"
    )
    found = known.get(name)
    if found is None:
        line += "; not seen by any process yet: a process that creates it follows at its first sync"
        # Prefer a name live processes use: that is the breaker the operator sees misbehave.
        near = sorted(
            (n for n in known if n.lower() == name.lower()), key=lambda n: (not known[n].processes, n)
        )
        if near:
            line += f" (did you mean {_printable(near[0])!r}?)"
    elif not found.processes:
        line += "; no live process uses it now: one that does follows at its first sync"
    out.write(line + "\n")


def _printable(text: str) -> str:
    """Text from Redis as a terminal may show it: anything unprintable escaped."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _error_text(exc: BaseException, url: str) -> str:
    """``Type: message`` on one line, with the URL's password taken out (redis-py's
    messages name the host, but nothing promises they never quote more).
    """
    text = " ".join(str(exc).split())
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    secrets = {password, unquote(password)} if password else set()
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    text = _printable(text)
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
