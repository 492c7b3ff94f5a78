"""Breaker state shared across processes (opt-in: ``OTELRES_SHARED_STATE=redis://...``).

Every process still decides each call from its own breaker, with no Redis
round trip on the call path. A background thread per process (:class:`Fleet`)
syncs once per interval, and at once after a transition of its own, in one
scripted round trip (:mod:`otelres._fleet_store`):

- it publishes each breaker's window and news (opened, probe failed, probe
  succeeded), and takes the other processes' combined window into the trip
  rule: the fleet trips together, after far fewer failing calls in total than
  independent breakers need;
- it follows the fleet's state (open, closed, forced open, disabled): a
  transition in one process reaches every process within an interval;
- a half-open period needs the fleet's lease: exactly one process probes for
  the fleet per open period, and its verdict closes (or reopens) every one.

When Redis is down, slow or flushed, each process goes on deciding alone,
exactly as without shared state: the thread's round trip has a short timeout,
no call waits for it, one warning is logged per outage, and it reconnects by
itself.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import threading
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from opentelemetry.instrumentation.utils import suppress_instrumentation

from . import _breaker, _fork
from ._breaker import CircuitBreaker, FleetView, State, Transition
from ._errors import ConfigError
from ._fleet_store import (
    CLOSED,
    HOLDS_LEASE,
    NO_EVENT,
    NO_WANT,
    OPENED,
    REOPENED,
    WANTS_LEASE,
    FleetState,
    FleetStore,
    Published,
    new_process_id,
)
from ._names import safe_name
from ._policy import SharedState

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from ._clock import Clock

__all__ = ["Fleet", "SharedState", "current", "redis_client", "service_name", "start", "stop"]

_log = logging.getLogger("otelres")

_OPEN, _HALF_OPEN, _CLOSED = State.OPEN, State.HALF_OPEN, State.CLOSED


def service_name(env: Mapping[str, str] | None = None) -> str:
    """The service the fleet is namespaced by: ``OTEL_SERVICE_NAME``, else
    ``service.name`` in ``OTEL_RESOURCE_ATTRIBUTES``, else ``unknown_service``
    (the OpenTelemetry SDK's default).
    """
    env = os.environ if env is None else env
    name = env.get("OTEL_SERVICE_NAME", "").strip()
    if not name:
        for item in env.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
            key, _, value = item.partition("=")
            if key.strip() == "service.name" and value.strip():
                name = unquote(value.strip())
    return name or "unknown_service"


def redis_client(url: str, timeout: float) -> Any:
    """A redis-py client that fails fast and never retries: the fleet's thread
    tries again at its next interval anyway.
    """
    try:
        import redis  # noqa: PLC0415 - only with shared state on
        from redis.backoff import NoBackoff  # noqa: PLC0415
        from redis.retry import Retry  # noqa: PLC0415
    except ImportError:
        raise ConfigError(
            "shared_state.url", safe_name(url), "redis-py installed (pip install 'otelres[redis]')"
        ) from None
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )


def _registry_breakers() -> list[CircuitBreaker]:
    from ._registry import default_registry  # noqa: PLC0415 - the registry imports the core first

    return default_registry().breakers()


@dataclasses.dataclass(slots=True)
class _Seen:
    """What this process last knew of one breaker's fleet state."""

    state: str = ""
    episode: int = -1


class Fleet:
    """One process's member of the fleet: the sync, the thread, the outage handling.

    :meth:`sync_once` is one round (tests drive it directly); :meth:`start`
    runs it on a daemon thread every ``interval`` seconds and at once after a
    transition of this process's own.
    """

    def __init__(
        self,
        config: SharedState,
        *,
        breakers: Callable[[], list[CircuitBreaker]] = _registry_breakers,
        clock: Clock | None = None,
    ) -> None:
        self.config = config
        self.service = config.service or service_name()
        self.process = new_process_id()
        self._store: FleetStore | None = None
        self._breakers = breakers
        # The fleet's clock is Redis's; a test's FakeClock replaces it (its wall()).
        self._clock = clock
        self._events: dict[str, str] = {}
        self._events_lock = threading.Lock()
        self._seen: dict[str, _Seen] = {}
        self._following = threading.local()
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._fresh = True  # the next good sync is the first (news from an outage is in _events)
        #: Whether the last sync reached Redis (the ``otelres.shared_state.connected`` gauge).
        self.connected = False
        #: Live processes in the fleet, as the last sync saw them.
        self.processes = 0
        #: The fleet's view of each breaker, as the last sync saw it.
        self.views: dict[str, FleetState] = {}
        self.outages = 0

    # -- the round ------------------------------------------------------------------

    def sync_once(self) -> bool:
        """Publish, read, follow: one round trip. False when Redis did not answer."""
        breakers = self._unique_breakers()
        # Each breaker is read before the news is taken: a move between the two is in
        # this round's news, and its changed seq keeps a stale answer from undoing it.
        read = [(b, b.clock.monotonic(), b.fleet_view()) for b in breakers]
        with self._events_lock:  # no transition of another thread's falls between the two
            events, self._events = self._events, {}
        published = [self._published(b, view, events.get(b.name, NO_EVENT)) for b, _, view in read]
        try:
            store = self._store if self._store is not None else self._connect()
            with suppress_instrumentation():  # neither otelres nor OpenTelemetry wraps this traffic
                processes, views = store.sync(
                    self.process,
                    published,
                    ttl=self.config.ttl,
                    lease=self.config.ttl,
                    now=None if self._clock is None else self._clock.wall(),
                )
        except Exception as exc:  # noqa: BLE001 - any failure of Redis means: decide alone
            with self._events_lock:
                for name, event in events.items():
                    self._events.setdefault(name, event)
            self._alone(breakers, exc)
            return False
        if not self.connected:
            if self.outages:
                _log.warning(
                    "otelres: shared state is back (%s); breakers follow the fleet again", self._where
                )
            self.connected = True
        self._fresh = False
        self.processes = processes
        self.views = views
        for b, before, view in read:
            self._follow(b, views[b.name], view.seq, before)
        return True

    def _published(self, breaker: CircuitBreaker, view: FleetView, event: str) -> Published:
        """What this process tells the fleet of one breaker."""
        state = view.state
        if self._fresh and event == NO_EVENT and state is _OPEN:
            event = OPENED  # opened while alone: the fleet hears of it now
        # Only a process with traffic asks for the lease (a call was refused for want of
        # it); a holder renews it only while a probe is in flight, so one that got no
        # call to probe with gives way when it runs out.
        if state is _OPEN and (view.wanted or view.leased):
            want = WANTS_LEASE
        elif state is _HALF_OPEN and view.leased:
            want = HOLDS_LEASE if view.probing else WANTS_LEASE
        else:
            want = NO_WANT
        seen = self._seen.get(breaker.name)
        p = breaker.policy
        return Published(
            breaker.name,
            state.value,
            view.stats.window_calls,
            view.stats.window_failures,
            view.stats.window_slow,
            event,
            want,
            breaker.retry_after(),
            p.open_seconds,
            p.open_backoff,
            p.max_open_seconds,
            -1 if seen is None else seen.episode,
        )

    def _follow(self, breaker: CircuitBreaker, view: FleetState, seq: int, before: float) -> None:
        closed_fleet = view.state in ("", "closed")
        # The lease's end on this breaker's clock, counted from before the round trip:
        # never later than Redis's, so no two processes probe in one open period.
        lease_until = before + view.lease_remaining if view.lease else 0.0
        self._following.active = True  # the moves this makes are not news (on_transition)
        try:
            breaker.fleet_update(view.others if closed_fleet else None, gate=True, lease_until=lease_until)
            if not view.state:
                return  # the fleet has no state for it: this process's stands
            seen = self._seen.setdefault(breaker.name, _Seen())
            if (view.state, view.episode) == (seen.state, seen.episode):
                return
            if breaker.follow(State(view.state), view.remaining, seq):
                seen.state, seen.episode = view.state, view.episode
        finally:
            self._following.active = False

    def _alone(self, breakers: list[CircuitBreaker], exc: Exception) -> None:
        """Redis did not answer: every breaker decides alone until it does."""
        for b in breakers:
            b.fleet_update(None, gate=False, lease_until=0.0)
        self._store = None  # a new client next time (Redis may have moved or restarted)
        if self.connected or not self.outages:
            self.outages += 1
            _log.warning(
                "otelres: shared state unreachable (%s: %s); each process decides alone until it is back",
                self._where,
                f"{type(exc).__name__}: {str(exc)[:200]}",
            )
        self.connected = False

    @property
    def _where(self) -> str:
        return safe_name(self.config.url)

    def _connect(self) -> FleetStore:
        self._store = FleetStore(redis_client(self.config.url, self.config.timeout), self.service)
        return self._store

    def _unique_breakers(self) -> list[CircuitBreaker]:
        seen: dict[str, CircuitBreaker] = {}
        for b in self._breakers():
            seen.setdefault(b.name, b)
        return list(seen.values())

    # -- news from this process -----------------------------------------------------------

    def on_transition(self, breaker: CircuitBreaker, transition: Transition) -> None:
        """A breaker moved: note what the fleet must hear, and sync at once.

        Moves made by following the fleet (in this thread, right now) are not
        news, nor are those of breakers this member does not publish.
        """
        if getattr(self._following, "active", False) or not any(b is breaker for b in self._breakers()):
            return
        came, went = transition.from_state, transition.to_state
        if went is _OPEN:
            event = REOPENED if came is _HALF_OPEN else OPENED
        elif went is _CLOSED and came is _HALF_OPEN:
            event = CLOSED
        else:
            return
        with self._events_lock:
            self._events[transition.breaker] = event
        self._wake.set()

    # -- the thread -------------------------------------------------------------------------

    def listen(self) -> None:
        """Hear this process's transitions (:meth:`start` does; tests driving
        :meth:`sync_once` by hand call it alone).
        """
        if self.on_transition not in _breaker.transition_hooks:
            _breaker.transition_hooks.append(self.on_transition)

    def start(self) -> None:
        """Run the rounds on a daemon thread and listen for this process's transitions."""
        self.listen()
        self._thread = threading.Thread(target=self._run, name="otelres-shared-state", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread; every breaker decides alone again."""
        self._stopped.set()
        self._wake.set()
        if self.on_transition in _breaker.transition_hooks:
            _breaker.transition_hooks.remove(self.on_transition)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread() and thread.is_alive():
            thread.join(timeout=2 * self.config.timeout + 1)
        for b in self._unique_breakers():
            b.fleet_update(None, gate=False, lease_until=0.0)
        self.connected = False

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                self.sync_once()
            except Exception:  # noqa: BLE001 - a bug here must not end sharing for the process
                _log.exception("otelres: shared state sync failed; trying again next interval")
            self._wake.wait(self.config.interval)
            self._wake.clear()


_current: Fleet | None = None
_lock = threading.Lock()
_fork.renew(sys.modules[__name__], "_lock")


def current() -> Fleet | None:
    """The process's fleet member, if shared state is on."""
    return _current


def start(config: SharedState) -> Fleet:
    """Turn shared state on for this process (replacing a previous configuration)."""
    global _current  # noqa: PLW0603 - one fleet member per process
    with _lock:
        if _current is not None:
            if _current.config == config:
                return _current
            _current.stop()
        fleet = Fleet(config)
        fleet.start()
        _current = fleet
        return fleet


def stop() -> None:
    """Turn shared state off for this process."""
    global _current  # noqa: PLW0603
    with _lock:
        if _current is not None:
            _current.stop()
            _current = None


def _after_fork_in_child() -> None:
    """A forked child is a new member: a new id, a new client, a thread of its own
    (the parent's does not exist here); what the parent's thread knew stays behind.
    Called by :func:`otelres._fork.renew` once ``_lock`` is a fresh lock.
    """
    global _current  # noqa: PLW0603
    parent = _current
    if parent is None:
        return
    if parent.on_transition in _breaker.transition_hooks:
        _breaker.transition_hooks.remove(parent.on_transition)
    _current = None
    if not parent._stopped.is_set():
        fleet = Fleet(parent.config, breakers=parent._breakers, clock=parent._clock)
        fleet.start()
        _current = fleet
