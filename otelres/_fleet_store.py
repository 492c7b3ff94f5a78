"""Breaker state shared by a fleet of processes, as it is kept in Redis.

One scripted round trip per process per interval (:meth:`FleetStore.sync`)
publishes the process's windows and news and reads back the fleet's view; the
call path never touches Redis. Keys, all under ``otelres:{service}:`` and all
expiring, so that a dead process's counts vanish by themselves:

- ``procs``: a sorted set of the live processes, scored by their last sync
  (Redis's clock: the fleet's hosts need not agree on the time); a process
  silent for ``ttl`` is pruned by the next sync of any other;
- ``p:{process}``: per breaker, that process's state and window
  (``state calls failures slow``);
- ``s:{breaker}``: the sums over the live processes' rows (the windows of the
  closed ones, and how many are in each local state), kept by adding each
  row's change and subtracting a pruned process's rows, so that a sync costs
  Redis in proportion to its own breakers, not to the size of the fleet;
- ``b:{breaker}``: the fleet's state of one breaker: ``state``, ``episode``
  (moves with every fleet transition), ``until`` (end of the open period),
  ``reopens``, and the half-open ``lease`` (the one process that probes for
  the fleet) with its expiry ``lease_until``;
- ``breakers``: the names, for ``python -m otelres breakers``.

The script decides every change of a fleet state, so two processes racing to
open one breaker make one open period, and exactly one process at a time holds
the lease.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["CONTROL_STATES", "BreakerReport", "FleetState", "FleetStore", "Published", "new_process_id"]

#: A day: how long a breaker's fleet state outlives the last process that used it.
KEEP_MS = 86_400_000

#: The states an operator can set from the command line (``reset`` sets ``closed``).
CONTROL_STATES = ("forced_open", "disabled", "closed")

# Events (what changed in this process since its last sync) and wants (the lease).
OPENED, REOPENED, CLOSED, NO_EVENT = "O", "R", "C", "-"
WANTS_LEASE, HOLDS_LEASE, NO_WANT = "L", "H", "-"

_FIELDS_OUT = 9  # per breaker, in its answer

_SYNC = """
local ns, proc = ARGV[1], ARGV[2]
local ttl, lease_ms, n = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local now = tonumber(ARGV[6])
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- s:{breaker} holds the sums over the live processes' rows (windows of closed ones, rows
-- per local state), kept by adding each row's change: a sync costs Redis in proportion to
-- its own breakers, not to the size of the fleet.
local function incr(key, field, by)
  -- Never by 0: Lua makes -1 * 0 a negative zero, which HINCRBY refuses as "-0".
  if by ~= 0 then redis.call('HINCRBY', key, field, by) end
end

local function apply(name, row, sign)
  local s, c, f, sl = string.match(row, '^(%S+) (%d+) (%d+) (%d+)$')
  if not s then return end
  local key = ns .. 's:' .. name
  if s == 'closed' then
    incr(key, 'calls', sign * tonumber(c))
    incr(key, 'failures', sign * tonumber(f))
    incr(key, 'slow', sign * tonumber(sl))
  end
  incr(key, 'n', sign)
  incr(key, 'x:' .. s, sign)
  redis.call('PEXPIRE', key, KEEP)
end

-- Made again from the live rows: the sums claim more rows than there are live processes
-- (the rows of processes that died while no one synced expired before they were pruned).
local function rebuild(name, live_procs)
  redis.call('DEL', ns .. 's:' .. name)
  for _, other in ipairs(live_procs) do
    local row = redis.call('HGET', ns .. 'p:' .. other, name)
    if row then apply(name, row, 1) end
  end
end

local procs = ns .. 'procs'
-- Processes silent for ttl are gone: their rows leave the sums.
for _, dead in ipairs(redis.call('ZRANGEBYSCORE', procs, '-inf', now - ttl)) do
  if dead ~= proc then
    local rows = redis.call('HGETALL', ns .. 'p:' .. dead)
    for j = 1, #rows, 2 do apply(rows[j], rows[j + 1], -1) end
    redis.call('DEL', ns .. 'p:' .. dead)
    redis.call('ZREM', procs, dead)
  end
end
local member = redis.call('ZSCORE', procs, proc)
redis.call('ZADD', procs, now, proc)
redis.call('PEXPIRE', procs, KEEP)
local live = redis.call('ZCARD', procs)
local mine = ns .. 'p:' .. proc
local old = {}
local rows = redis.call('HGETALL', mine)
for j = 1, #rows, 2 do old[rows[j]] = rows[j + 1] end
-- A member with no row left: it was evicted (its counts may still be in the sums).
local lost_row = member and #rows == 0 and n > 0

local out = {now, live}
for i = 0, n - 1 do
  local a = 7 + i * 12
  local name, lstate = ARGV[a], ARGV[a + 1]
  local event, want, left = ARGV[a + 5], ARGV[a + 6], tonumber(ARGV[a + 7])
  local open_ms, backoff, max_ms = tonumber(ARGV[a + 8]), tonumber(ARGV[a + 9]), tonumber(ARGV[a + 10])
  local seen_episode = tonumber(ARGV[a + 11])
  local row = lstate .. ' ' .. ARGV[a + 2] .. ' ' .. ARGV[a + 3] .. ' ' .. ARGV[a + 4]
  local before = old[name]
  old[name] = nil
  local sums_key = ns .. 's:' .. name
  if lost_row or (before and redis.call('HEXISTS', sums_key, 'n') == 0) then
    -- This process's row or the sums were lost (evicted): made again from the live rows.
    redis.call('HSET', mine, name, row)
    rebuild(name, redis.call('ZRANGE', procs, 0, -1))
  elseif before ~= row then
    if before then apply(name, before, -1) end
    apply(name, row, 1)
    redis.call('HSET', mine, name, row)
  end
  local key = ns .. 'b:' .. name
  local f = redis.call('HMGET', key, 'state', 'episode', 'until', 'reopens', 'lease', 'lease_until')
  local exists = f[1] ~= false
  local state, episode = f[1] or 'closed', tonumber(f[2]) or 0
  local until_, reopens = tonumber(f[3]) or 0, tonumber(f[4]) or 0
  local lease, lease_until = f[5] or '', tonumber(f[6]) or 0
  local changed = false
  if not exists and lstate == 'open' then
    event = 'O' -- flushed, or new to the fleet while open here: this process's open period stands
  end
  -- A trip reported against the closed period this process last followed (or any, before
  -- it followed one): news from before an operator's reset does not reopen the fleet.
  local current = not exists or seen_episode < 0 or seen_episode == episode
  if event == 'O' and state == 'closed' and current then
    state, episode, reopens, until_, lease, changed = 'open', episode + 1, 0, now + left, '', true
  elseif event == 'R' and ((state == 'closed' and current) or (state == 'open' and lease == proc)) then
    if state == 'open' then reopens = reopens + 1 else reopens = 0 end
    local wait = math.floor(math.min(max_ms, open_ms * backoff ^ math.min(reopens, 64)))
    state, episode, until_, lease, changed = 'open', episode + 1, now + wait, '', true
  elseif event == 'C' and state == 'open' and (lease == proc or (now >= until_ and lease_until <= now)) then
    -- the lease holder's probe, or one made alone (Redis was unreachable) once the period is over
    state, reopens, lease, changed = 'closed', 0, '', true
  end
  local granted = 0 -- this process's lease: milliseconds of it left
  if state == 'open' and now >= until_ then
    if lease == proc and (want == 'H' or (want == 'L' and lease_until > now)) then
      if want == 'H' then lease_until, changed = now + lease_ms, true end
      granted = lease_until - now
    elseif want == 'L' and (lease == '' or lease_until <= now) then
      -- A holder whose lease ran out unused (no call came to probe with) steps aside for
      -- one lease period, so that a process with traffic probes; then it may take it again.
      if lease ~= proc or lease_until + lease_ms <= now then
        lease, lease_until, granted, changed = proc, now + lease_ms, lease_ms, true
      end
    end
  end
  if changed then
    redis.call('HSET', key, 'state', state, 'episode', episode, 'until', until_, 'reopens', reopens,
      'lease', lease, 'lease_until', lease_until, 'at', now)
  end
  if changed or exists then
    redis.call('PEXPIRE', key, KEEP)
    redis.call('SADD', ns .. 'breakers', name)
  end
  local fields = {'calls', 'failures', 'slow', 'n', 'x:' .. state, 'x:half_open'}
  local sums = redis.call('HMGET', sums_key, unpack(fields))
  local n_rows = tonumber(sums[4]) or 0
  if n_rows > live or n_rows < 0 or (tonumber(sums[1]) or 0) < 0 or (tonumber(sums[2]) or 0) < 0 then
    rebuild(name, redis.call('ZRANGE', procs, 0, -1))
    sums = redis.call('HMGET', sums_key, unpack(fields))
  end
  redis.call('PEXPIRE', sums_key, KEEP)
  local calls, failures, slow = tonumber(sums[1]) or 0, tonumber(sums[2]) or 0, tonumber(sums[3]) or 0
  if lstate == 'closed' then
    calls = calls - tonumber(ARGV[a + 2])
    failures = failures - tonumber(ARGV[a + 3])
    slow = slow - tonumber(ARGV[a + 4])
  end
  local seen = tonumber(sums[4]) or 0
  local agree = tonumber(sums[5]) or 0
  if state == 'open' then agree = agree + (tonumber(sums[6]) or 0) end
  if not exists and not changed then state = '' end
  table.insert(out, state)
  table.insert(out, episode)
  table.insert(out, math.max(0, until_ - now))
  table.insert(out, granted)
  table.insert(out, math.max(0, calls))
  table.insert(out, math.max(0, failures))
  table.insert(out, math.max(0, slow))
  table.insert(out, math.max(0, seen))
  table.insert(out, math.max(0, seen - agree))
end
-- Breakers this process no longer has leave its row and the sums.
for name, before in pairs(old) do
  apply(name, before, -1)
  redis.call('HDEL', mine, name)
end
redis.call('PEXPIRE', mine, KEEP)
redis.call('PEXPIRE', ns .. 'breakers', KEEP)
return out
""".replace("KEEP", str(KEEP_MS))

_CONTROL = """
local key = ARGV[1] .. 'b:' .. ARGV[2]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local episode = (tonumber(redis.call('HGET', key, 'episode')) or 0) + 1
redis.call('HSET', key, 'state', ARGV[3], 'episode', episode, 'until', now, 'reopens', 0,
  'lease', '', 'lease_until', 0, 'at', now)
redis.call('PEXPIRE', key, KEEP)
redis.call('SADD', ARGV[1] .. 'breakers', ARGV[2])
redis.call('PEXPIRE', ARGV[1] .. 'breakers', KEEP)
return episode
""".replace("KEEP", str(KEEP_MS))


def new_process_id() -> str:
    """A fresh id for this process in the fleet (a forked child takes a new one)."""
    return uuid.uuid4().hex[:16]


@dataclasses.dataclass(frozen=True, slots=True)
class Published:
    """What one process publishes about one breaker in a sync."""

    name: str
    state: str
    calls: int
    failures: int
    slow: int
    event: str = NO_EVENT
    want: str = NO_WANT
    #: Seconds left of this process's open period (an opened breaker's news).
    remaining: float = 0.0
    open_seconds: float = 0.0
    open_backoff: float = 1.0
    max_open_seconds: float = 0.0
    #: The fleet episode this process last followed (-1: none yet): news about an older
    #: one (a trip or a failed probe from before an operator's reset) is not taken.
    episode: int = -1


@dataclasses.dataclass(frozen=True, slots=True)
class FleetState:
    """The fleet's view of one breaker, as one sync returned it.

    ``state`` is empty when the fleet has none (nothing opened it, or Redis was
    flushed): then the process decides alone. ``others`` is the other
    processes' combined window (calls, failures, slow) while they are closed;
    ``processes`` how many live processes use the breaker, ``disagreeing`` how
    many of them are in another state than the fleet's.
    """

    state: str
    episode: int
    remaining: float
    lease: bool
    others: tuple[int, int, int]
    processes: int
    disagreeing: int
    #: Seconds of this process's lease left, as Redis counts (0.0 without one).
    lease_remaining: float = 0.0


@dataclasses.dataclass(frozen=True, slots=True)
class BreakerReport:
    """One breaker as ``python -m otelres breakers`` lists it."""

    name: str
    state: str
    episode: int
    remaining: float
    lease: str
    processes: dict[str, int]


class FleetStore:
    """The Redis side of shared state: one client, the scripts, the key names."""

    def __init__(self, client: Any, service: str) -> None:
        self.client = client
        self.namespace = f"otelres:{service}:"
        self._sync = client.register_script(_SYNC)
        self._control = client.register_script(_CONTROL)

    def sync(
        self,
        process: str,
        breakers: Sequence[Published],
        *,
        ttl: float,
        lease: float,
        now: float | None = None,
    ) -> tuple[int, dict[str, FleetState]]:
        """Publish this process's breakers and read the fleet's view of each, in one
        round trip; returns the number of live processes and the views by name.

        Time is Redis's (the fleet's hosts need not agree on it), or ``now``
        (seconds since the epoch) when a test drives the clock.
        """
        now_ms = 0 if now is None else int(now * 1000)
        args: list[Any] = [
            self.namespace,
            process,
            int(ttl * 1000),
            int(lease * 1000),
            len(breakers),
            now_ms,
        ]
        for b in breakers:
            args += [
                b.name,
                b.state,
                b.calls,
                b.failures,
                b.slow,
                b.event,
                b.want,
                int(b.remaining * 1000),
                int(b.open_seconds * 1000),
                b.open_backoff,
                int(b.max_open_seconds * 1000),
                b.episode,
            ]
        out = self._sync(args=args)
        views = {}
        for i, b in enumerate(breakers):
            row = out[2 + i * _FIELDS_OUT : 2 + (i + 1) * _FIELDS_OUT]
            state = row[0].decode() if isinstance(row[0], bytes) else str(row[0])
            views[b.name] = FleetState(
                state=state,
                episode=int(row[1]),
                remaining=int(row[2]) / 1000,
                lease=int(row[3]) > 0,
                others=(int(row[4]), int(row[5]), int(row[6])),
                processes=int(row[7]),
                disagreeing=int(row[8]),
                lease_remaining=int(row[3]) / 1000,
            )
        return int(out[1]), views

    def control(self, breaker: str, state: str) -> int:
        """Set a breaker's fleet state by hand (``forced_open``, ``disabled``, or
        ``closed`` to reset it); every process follows within two intervals.
        Returns the new episode.
        """
        if state not in CONTROL_STATES:
            msg = f"state must be one of {', '.join(CONTROL_STATES)}, not {state!r}"
            raise ValueError(msg)
        return int(self._control(args=[self.namespace, breaker, state]))

    def report(self) -> list[BreakerReport]:
        """Every breaker the fleet knows or a live process uses, with how many live
        processes are in each local state.
        """
        ns = self.namespace
        client = self.client
        live = [p.decode() for p in client.zrange(ns + "procs", 0, -1)]
        now_s, now_us = client.time()
        now = now_s * 1000 + now_us // 1000
        reports = []
        rows = {p: client.hgetall(f"{ns}p:{p}") for p in live}
        # Those with a fleet state, and those live processes use that never opened (closed).
        names = {n.decode() for n in client.smembers(ns + "breakers")}
        names.update(name.decode() for row in rows.values() for name in row)
        for name in sorted(names):
            fields = {k.decode(): v.decode() for k, v in client.hgetall(f"{ns}b:{name}").items()}
            counts: dict[str, int] = {}
            for row in rows.values():
                value = row.get(name.encode())
                if value is not None:
                    local = value.decode().split(" ", 1)[0]
                    counts[local] = counts.get(local, 0) + 1
            lease = fields.get("lease", "")
            if lease and float(fields.get("lease_until", "0")) <= now:
                lease = ""
            reports.append(
                BreakerReport(
                    name=name,
                    state=fields.get("state", "closed"),
                    episode=int(float(fields.get("episode", "0"))),
                    remaining=max(0.0, float(fields.get("until", "0")) - now) / 1000,
                    lease=lease,
                    processes=counts,
                )
            )
        return reports
