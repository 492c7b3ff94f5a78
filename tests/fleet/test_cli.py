"""The operator's command line for shared state (``otelres breakers``, ``otelres breaker
force-open|disable|reset``) against a real redis-server: what it lists, what it sets and
that processes follow, where the URL and the service come from, and its errors (no
traceback, never a password). The main cases run the command as a real subprocess.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from otelres import BreakerPolicy, CircuitBreaker, SharedState, State
from otelres.__main__ import main
from otelres._breaker import REJECTED
from otelres._cli_fleet import _error_text
from otelres._fleet import Fleet, redis_client
from otelres._fleet_store import FleetStore
from otelres.testing import FakeClock

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

# The real-server helpers of the store tests (tests/ is not a package).
_path = str(Path(__file__).resolve().parent.parent / "store")
if _path not in sys.path:
    sys.path.append(_path)
store_servers: Any = importlib.import_module("store_servers")

SERVICE = "checkout"
API = "https://api.example.com:443"
DB = "postgresql://db:5432/app"
SECRET = "hunter2-s3cr3t"  # noqa: S105 - the password no output may show


@pytest.fixture(autouse=True)
def _no_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No OTEL_* variable (the service name falls back on them); OTELRES_* are gone already."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Any]:
    """A redis-server of this test's own on 127.0.0.1."""
    with store_servers.RedisServer(tmp_path) as server:
        yield server


@pytest.fixture
def url(redis_server: Any) -> str:
    return f"redis://127.0.0.1:{redis_server.port}/0"


@pytest.fixture
def member(url: str) -> Iterator[Callable[..., tuple[Fleet, CircuitBreaker]]]:
    """A fleet member (no thread: the test drives ``sync_once``) using one breaker, made
    by ``member(name)``; stopped and disconnected after the test.
    """
    made: list[Fleet] = []

    def make(
        name: str = API, *, service: str = SERVICE, at: str | None = None, clock: FakeClock | None = None
    ) -> tuple[Fleet, CircuitBreaker]:
        breaker = CircuitBreaker(name, BreakerPolicy(), clock=clock)
        fleet = Fleet(SharedState(at or url, 1.0, service), breakers=lambda: [breaker], clock=clock)
        made.append(fleet)
        return fleet, breaker

    yield make
    for fleet in made:
        fleet.stop()
        if fleet._store is not None:
            fleet._store.client.close()


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m otelres ARGS`` in a real process, with no OTEL_* or OTELRES_* but ``env``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OTELRES_"))}
    return subprocess.run(
        [sys.executable, "-m", "otelres", *args],
        capture_output=True,
        text=True,
        env={**clean, **(env or {})},
        timeout=60,
        check=False,
    )


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The command in this process (for coverage and speed): status, stdout, stderr."""
    try:
        status = main(list(args))
    except SystemExit as exc:  # argparse's errors
        status = int(exc.code or 0)
    out, err = capsys.readouterr()
    return status, out, err


def report(url: str, service: str = SERVICE) -> dict[str, Any]:
    """What FleetStore.report() (the store's own view, not the command's) says, by name."""
    client = redis_client(url, 1.0)
    try:
        return {r.name: r for r in FleetStore(client, service).report()}
    finally:
        client.close()


def open_in_fleet(fleet: Fleet, breaker: CircuitBreaker) -> None:
    """Open the breaker in its process and publish the news, as the fleet's thread would."""
    fleet.listen()
    breaker.transition_to(State.OPEN)
    assert fleet.sync_once()


# -- otelres breakers -------------------------------------------------------------------------


def test_breakers_lists_fleet_state_and_where_processes_disagree(
    url: str, member: Callable[..., tuple[Fleet, CircuitBreaker]]
) -> None:
    """The table: each breaker the fleet knows (one opened, one only ever closed), its fleet
    state, episode and open time left, and the live processes per local state with the
    disagreement counted; a real subprocess.
    """
    first, api = member(API)
    second, _ = member(API)
    third, _ = member(DB)
    for fleet in (first, second, third):
        assert fleet.sync_once()
    open_in_fleet(first, api)  # the second has not synced since: it still says closed

    done = cli("breakers", "--redis", url, "--service", SERVICE)

    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    assert lines[0] == f"service {SERVICE} at {url}: 2 breakers"
    assert lines[1].split() == ["BREAKER", "STATE", "EPISODE", "OPEN", "LEFT", "LEASE", "PROCESSES"]
    api_row, db_row = lines[2], lines[3]
    assert api_row.startswith(API)
    assert api_row.split()[1:3] == ["open", "1"]
    assert api_row.endswith("closed 1, open 1 (1 disagree)")
    assert " s  -  " in api_row  # seconds left, then no lease holder
    assert db_row.startswith(DB)
    assert db_row.split()[1:] == ["closed", "0", "-", "-", "closed", "1"]


def test_breakers_json(url: str, member: Callable[..., tuple[Fleet, CircuitBreaker]]) -> None:
    """--json: the same facts for a script, with the open time left as a number; a real subprocess."""
    fleet, api = member(API)
    assert fleet.sync_once()
    open_in_fleet(fleet, api)

    done = cli("breakers", "--json", "--redis", url, "--service", SERVICE)

    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["service"] == SERVICE
    assert document["redis"] == url
    (entry,) = document["breakers"]
    left = entry.pop("open_seconds_left")
    assert 0 < left <= BreakerPolicy().open_seconds
    assert entry == {
        "name": API,
        "state": "open",
        "episode": 1,
        "lease": None,
        "processes": {"open": 1},
        "disagreeing": 0,
    }


def test_breakers_shows_the_lease_holder(
    url: str, member: Callable[..., tuple[Fleet, CircuitBreaker]], capsys: pytest.CaptureFixture[str]
) -> None:
    """Past the open period the process that holds the fleet's half-open lease is named
    (the member's clock runs a minute ahead of Redis's, so the lease is still valid
    when the command reads it; nothing sleeps).
    """
    clock = FakeClock(wall=time.time() + 60)
    fleet, api = member(API, clock=clock)
    open_in_fleet(fleet, api)
    clock.advance(BreakerPolicy().open_seconds + 0.1)
    assert api.acquire() == REJECTED  # a call waits for the lease: this process asks for it
    assert fleet.sync_once()
    assert fleet.views[API].lease

    status, out, _ = run(capsys, "breakers", "--json", "--redis", url, "--service", SERVICE)

    assert status == 0
    (entry,) = json.loads(out)["breakers"]
    assert entry["lease"] == fleet.process
    status, out, _ = run(capsys, "breakers", "--redis", url, "--service", SERVICE)
    assert fleet.process in out.splitlines()[2].split()


def test_breakers_of_an_unknown_service_says_none(
    url: str, member: Callable[..., tuple[Fleet, CircuitBreaker]], capsys: pytest.CaptureFixture[str]
) -> None:
    """Another service's breakers are not shown; an empty list hints at --service."""
    fleet, _ = member(API)
    assert fleet.sync_once()

    status, out, _ = run(capsys, "breakers", "--redis", url, "--service", "billing")

    assert status == 0
    assert out == (
        f"service billing at {url}: no breakers (no process of this service has synced with "
        "shared state yet; is the service name right? --service)\n"
    )
    status, out, _ = run(capsys, "breakers", "--json", "--redis", url, "--service", "billing")
    assert json.loads(out)["breakers"] == []


# -- otelres breaker force-open | disable | reset -------------------------------------------


def test_force_open_disable_reset_reach_every_process(
    url: str, member: Callable[..., tuple[Fleet, CircuitBreaker]]
) -> None:
    """Each command sets the fleet state (FleetStore.report() sees it, with a new episode)
    and every member follows at its next sync; real subprocesses.
    """
    members = [member(API), member(API)]
    for fleet, _ in members:
        assert fleet.sync_once()

    for action, state, episode in [
        ("force-open", State.FORCED_OPEN, 1),
        ("disable", State.DISABLED, 2),
        ("reset", State.CLOSED, 3),
    ]:
        done = cli("breaker", action, API, "--redis", url, "--service", SERVICE)

        assert done.returncode == 0, done.stderr
        assert done.stdout == (
            f"{SERVICE}: {API} -> {state.value} (episode {episode}); every process follows within 2 s\n"
        )
        seen = report(url)[API]
        assert (seen.state, seen.episode) == (state.value, episode)
        for fleet, breaker in members:
            assert fleet.sync_once()
            assert breaker.state is state
    for fleet, _ in members:  # a process publishes its own state at its next sync
        assert fleet.sync_once()
    assert report(url)[API].processes == {"closed": 2}


def test_force_open_of_a_name_no_process_has_seen(
    url: str, member: Callable[..., tuple[Fleet, CircuitBreaker]], capsys: pytest.CaptureFixture[str]
) -> None:
    """Allowed (an operator may force a breaker ahead of the processes that will create it),
    and said; a process that creates it later starts forced open; a real subprocess.
    """
    done = cli("breaker", "force-open", API, "--redis", url, "--service", SERVICE)

    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        f"{SERVICE}: {API} -> forced_open (episode 1); every process follows within 2 s; "
        "not seen by any process yet: a process that creates it follows at its first sync\n"
    )
    status, out, _ = run(capsys, "breakers", "--redis", url, "--service", SERVICE)
    assert status == 0
    assert out.splitlines()[2].split() == [API, "forced_open", "1", "-", "-", "none", "live"]
    late, breaker = member(API)
    assert late.sync_once()
    assert breaker.state is State.FORCED_OPEN


def test_control_says_when_no_live_process_uses_it_and_suggests_a_case(
    url: str, member: Callable[..., tuple[Fleet, CircuitBreaker]], capsys: pytest.CaptureFixture[str]
) -> None:
    """A name only the fleet state knows is 'not used now'; a name differing only in case from
    a known one gets a 'did you mean'.
    """
    assert run(capsys, "breaker", "force-open", "Payments", "--redis", url, "--service", SERVICE)[0] == 0
    fleet, _ = member("payments")
    assert fleet.sync_once()

    status, out, _ = run(capsys, "breaker", "reset", "Payments", "--redis", url, "--service", SERVICE)

    assert status == 0
    assert out.endswith("no live process uses it now: one that does follows at its first sync\n")
    status, out, _ = run(capsys, "breaker", "reset", "PAYMENTS", "--redis", url, "--service", SERVICE)
    assert out.endswith("(did you mean 'payments'?)\n")


def test_breaker_options_before_or_after_the_action(
    url: str, member: Callable[..., tuple[Fleet, CircuitBreaker]], capsys: pytest.CaptureFixture[str]
) -> None:
    """``breaker --redis URL reset NAME`` and ``breaker reset NAME --redis URL`` alike."""
    fleet, _ = member(API)
    assert fleet.sync_once()
    status, out, _ = run(capsys, "breaker", "--redis", url, "--service", SERVICE, "disable", API)
    assert (status, out.split(" (")[0]) == (0, f"{SERVICE}: {API} -> disabled")
    status, out, _ = run(capsys, "breaker", "reset", "--service", SERVICE, API, "--redis", url)
    assert (status, out.split(" (")[0]) == (0, f"{SERVICE}: {API} -> closed")


def test_a_scheme_and_host_in_capitals_act_on_the_published_name(
    url: str, member: Callable[..., tuple[Fleet, CircuitBreaker]], capsys: pytest.CaptureFixture[str]
) -> None:
    """Processes publish a URL name with its scheme and host lower-cased: typed otherwise, it
    means the same breaker, and the command says which.
    """
    fleet, breaker = member(API)
    assert fleet.sync_once()

    status, out, _ = run(
        capsys, "breaker", "force-open", "HTTPS://API.Example.com:443", "--redis", url, "--service", SERVICE
    )

    assert status == 0
    assert out.startswith(f"{SERVICE}: {API} -> forced_open (episode 1);")
    assert "not seen" not in out
    assert fleet.sync_once()
    assert breaker.state is State.FORCED_OPEN


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("api\x1b[2J", "no control characters"),
        ("x" * 201, "at most 200 characters"),
        (f"https://ops:{SECRET}@api.example.com:443", f"publish this one as '{API}'"),
        (f"{API}/?token={SECRET}", f"publish this one as '{API}/'"),
        ("  api  ", "publish this one as 'api'"),
        ("   ", "a breaker name is needed"),
    ],
)
def test_names_no_process_could_publish_are_refused(
    url: str, capsys: pytest.CaptureFixture[str], name: str, says: str
) -> None:
    """A name that safe_name would change other than in case never matches a breaker:
    refused (status 2) with the reason, never echoing the raw name (it may hold a password),
    and nothing is written.
    """
    status, out, err = run(capsys, "breaker", "force-open", name, "--redis", url, "--service", SERVICE)

    assert status == 2
    assert out == ""
    assert says in err
    assert SECRET not in err
    assert "\x1b" not in err
    assert report(url) == {}


# -- where: URL and service ------------------------------------------------------------------


def test_url_service_and_interval_from_the_settings(
    url: str, member: Callable[..., tuple[Fleet, CircuitBreaker]], tmp_path: Path
) -> None:
    """OTELRES_SHARED_STATE (or the TOML file) and its service and interval; then
    OTEL_SERVICE_NAME; --redis and --service win over both; real subprocesses.
    """
    fleet, _ = member(API, service="billing")
    assert fleet.sync_once()
    env = {
        "OTELRES_SHARED_STATE": url,
        "OTELRES_SHARED_STATE_SERVICE": "billing",
        "OTELRES_SHARED_STATE_INTERVAL": "0.25",
    }
    done = cli("breaker", "reset", API, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"billing: {API} -> closed (episode 1); every process follows within 0.5 s")

    config = tmp_path / "otelres.toml"
    config.write_text(f'[shared_state]\nurl = "{url}"\ninterval = 3\n', encoding="utf-8")
    done = cli("breakers", env={"OTELRES_CONFIG": str(config), "OTEL_SERVICE_NAME": "billing"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"service billing at {url}: 1 breaker\n")

    elsewhere = "redis://127.0.0.1:1/0"  # nothing listens there: --redis must win
    done = cli("breakers", "--redis", url, "--service", "billing", env={"OTELRES_SHARED_STATE": elsewhere})
    assert done.returncode == 0, done.stderr
    assert API in done.stdout


def test_no_url_anywhere_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """No --redis, no OTELRES_SHARED_STATE, no file: status 2 and how to give one."""
    for argv in (["breakers"], ["breaker", "force-open", API]):
        status, out, err = run(capsys, *argv)
        assert status == 2
        assert out == ""
        assert "no Redis URL: set OTELRES_SHARED_STATE=redis://host:port/db" in err
        assert "or pass --redis redis://host:port/db" in err


@pytest.mark.parametrize(
    ("argv", "env", "says"),
    [
        (
            ["--redis", f"http://:{SECRET}@cache:6379/0"],
            {},
            "otelres: invalid value for --redis: 'http://cache:6379/0' (allowed: ",
        ),
        (
            [],
            {"OTELRES_SHARED_STATE": f"redis://:{SECRET}@cache:port/0"},
            "otelres: invalid value for OTELRES_SHARED_STATE: 'redis://cache:port/0' (allowed: ",
        ),
        (["--redis", "redis://cache:6379/0", "--service", " "], {}, "--service must be a service name"),
    ],
)
def test_bad_settings_are_usage_errors_without_the_password(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    env: dict[str, str],
    says: str,
) -> None:
    """A bad URL is the settings' own ConfigError, named after where it came from (--redis
    or the variable), the URL made safe; status 2.
    """
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    status, out, err = run(capsys, "breakers", *argv)
    assert status == 2
    assert out == ""
    assert says in err
    assert SECRET not in err


# -- Redis unreachable or refusing -----------------------------------------------------------


def test_unreachable_redis_is_one_line_and_status_1(capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing listening: one line naming the URL made safe and the error, no traceback,
    no password; a real subprocess, for the listing and a control alike (and once in this
    process, where the same handler runs).
    """
    port = store_servers.free_port()
    status, out, err = run(capsys, "breakers", "--redis", f"redis://:{SECRET}@127.0.0.1:{port}/0")
    assert (status, out) == (1, "")
    assert err.startswith(f"otelres: cannot reach Redis at redis://127.0.0.1:{port}/0 (ConnectionError: ")
    for argv in (["breakers"], ["breaker", "force-open", API]):
        done = cli(*argv, "--redis", f"redis://:{SECRET}@127.0.0.1:{port}/0")

        assert done.returncode == 1
        assert done.stdout == ""
        assert done.stderr.startswith(
            f"otelres: cannot reach Redis at redis://127.0.0.1:{port}/0 (ConnectionError: "
        )
        assert done.stderr.endswith(")\n")
        assert done.stderr.count("\n") == 1
        assert "Traceback" not in done.stderr
        assert SECRET not in done.stderr


def test_a_password_in_the_url_is_never_printed(
    redis_server: Any, member: Callable[..., tuple[Fleet, CircuitBreaker]]
) -> None:
    """Against a Redis that requires it: the listing, JSON and a control work and never show
    the password; a wrong one is a one-line 'cannot reach' (AuthenticationError) without it.
    """
    store_servers.resp(redis_server.port, "CONFIG", "SET", "requirepass", SECRET)
    with_password = f"redis://:{SECRET}@127.0.0.1:{redis_server.port}/0"
    fleet, _ = member(API, at=with_password)
    assert fleet.sync_once()
    shown = f"redis://127.0.0.1:{redis_server.port}/0"

    for argv in (["breakers"], ["breakers", "--json"], ["breaker", "force-open", API]):
        done = cli(*argv, "--redis", with_password, "--service", SERVICE)
        assert done.returncode == 0, done.stderr
        assert SECRET not in done.stdout + done.stderr
    assert shown in cli("breakers", "--redis", with_password, "--service", SERVICE).stdout

    wrong = f"redis://:not-{SECRET}@127.0.0.1:{redis_server.port}/0"
    done = cli("breakers", "--redis", wrong, "--service", SERVICE)
    assert done.returncode == 1
    assert done.stderr.startswith(f"otelres: cannot reach Redis at {shown} (AuthenticationError: ")
    assert SECRET not in done.stderr
    assert "Traceback" not in done.stderr


def test_redis_errors_other_than_connecting_are_one_line(
    url: str, redis_server: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Redis that answers with an error (here: the fleet's set holds the wrong type) is
    reported in one line with status 1, not a traceback.
    """
    store_servers.resp(redis_server.port, "SET", f"otelres:{SERVICE}:breakers", "not a set")

    status, out, err = run(capsys, "breakers", "--redis", url, "--service", SERVICE)

    assert status == 1
    assert out == ""
    assert err.startswith(f"otelres: Redis at {url} refused (ResponseError: WRONGTYPE")
    assert err.count("\n") == 1


def test_redis_error_texts_are_scrubbed_of_the_password() -> None:
    """Whatever redis-py's message quotes, the password (as written or percent-decoded) is
    taken out, and the text is one line of printable characters.
    """
    encoded = "p%40ss%2Fw0rd"
    message = f"auth failed for p@ss/w0rd and {encoded}\nsecond line \x1b[2J"
    text = _error_text(RuntimeError(message), f"redis://ops:{encoded}@cache:6379/0")
    assert text == "RuntimeError: auth failed for *** and *** second line \\x1b[2J"
