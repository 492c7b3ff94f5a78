"""redis: a breaker and retries per server and database around
``Redis.execute_command`` (sync and asyncio) and ``Pipeline.execute``.

- One breaker per ``redis://host:port/db`` (``rediss://`` over TLS,
  ``redis+unix:///path/db`` over a unix socket, ``redis+sentinel://service/db``
  for a Sentinel-managed pool), read from the connection pool, never with the
  user name or password.
- Breaker failures: redis-py's ``ConnectionError`` and ``TimeoutError`` (and
  their kin: a server loading its data set, a failed authentication) and any
  ``OSError``. ``ResponseError`` (a wrong type, a script error) and the other
  errors of a command are the caller's and count as successes.
- Retried: the idempotent read commands of :data:`READ_COMMANDS` on a
  connection error or a timeout. A write is never retried (its reply may have
  been lost after the server applied it): the retry that would have been made
  is counted as suppressed, ``not_idempotent``.
- A pipeline (``Pipeline.execute``) is one call through the breaker: an open
  circuit fails it fast, a dropped connection counts against the breaker, but
  it is never retried (redis-py empties the pipeline as it runs it:
  ``not_replayable``, or ``not_idempotent`` when it holds a write). The
  commands a pipeline sends at once while it WATCHes keys, and Pub/Sub, pass
  through; ``RedisCluster`` is not patched.
- A call rejected by an open circuit raises :data:`CircuitOpenError`, an
  :class:`otelres.CircuitOpenError` that is also
  ``redis.exceptions.ConnectionError`` (sync and asyncio alike): the
  application's ``except redis.ConnectionError`` catches it.

redis-py has a retry loop of its own (``Retry``: since redis-py 6 a client
retries connection errors and timeouts by default, up to 10 times in redis-py
8, writes included). Two loops would multiply the attempts (3 x 11 for one
call against a dead server) and redis-py's would resend writes. So, within a call otelres wraps,
redis-py's default ``Retry`` makes exactly one attempt (its failure callback
still runs, so the broken connection leaves the pool), and otelres is the one
retry layer, configured like any other target
(``[targets."redis://cache:6379/0".retry]``). A ``Retry`` the application
configured itself (a different policy, or ``retry_on_error``) is left alone:
otelres then keeps the breaker but does not retry that client's calls
(suppressed as ``client_retry``), so the attempts are never multiplied either
way. Outside wrapped calls (the commands otelres passes through), redis-py's
retries are untouched.
"""

from __future__ import annotations

import contextvars
import copy
import functools
import inspect
import os
import weakref
from typing import TYPE_CHECKING, Any

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from otelres._registry import default_registry

from ._common import Patches, acall_inside, call_inside, ensure_telemetry, should_wrap
from ._rejections import module_getattr
from ._stores import store_profile

if TYPE_CHECKING:
    from collections.abc import Callable, Collection

    from otelres._config import Settings
    from otelres._flow import Guard
    from otelres._registry import Registry

    #: The guard of a call's server, why it must not be retried, and whether
    #: redis-py's retry loop makes one attempt.
    _Plan = tuple[Guard, str | None, bool]
    #: A redis-py Retry (weakly), a copy of its attributes (None: not kept), and a copy
    #: of it that makes no retries (None: it makes none anyway).
    _Once = tuple[Callable[[], Any], dict[str, Any] | None, Any]

__all__ = ["READ_COMMANDS", "RedisInstrumentor", "breaker_name"]

#: Commands that only read: one more attempt cannot change what the server holds.
READ_COMMANDS = frozenset(
    {
        # keys and strings
        "GET", "MGET", "GETRANGE", "SUBSTR", "STRLEN", "GETBIT", "BITCOUNT", "BITPOS", "BITFIELD_RO", "LCS",
        "EXISTS", "TYPE", "TTL", "PTTL", "EXPIRETIME", "PEXPIRETIME", "KEYS", "SCAN", "RANDOMKEY", "DUMP",
        "OBJECT", "OBJECT ENCODING", "OBJECT FREQ", "OBJECT IDLETIME", "OBJECT REFCOUNT", "MEMORY USAGE",
        "SORT_RO",
        # hashes
        "HGET", "HMGET", "HGETALL", "HKEYS", "HVALS", "HLEN", "HEXISTS", "HSTRLEN", "HSCAN", "HRANDFIELD",
        "HTTL", "HPTTL", "HEXPIRETIME", "HPEXPIRETIME",
        # lists
        "LRANGE", "LLEN", "LINDEX", "LPOS",
        # sets
        "SMEMBERS", "SISMEMBER", "SMISMEMBER", "SCARD", "SRANDMEMBER", "SSCAN", "SINTER", "SINTERCARD",
        "SUNION", "SDIFF",
        # sorted sets
        "ZRANGE", "ZRANGEBYSCORE", "ZRANGEBYLEX", "ZREVRANGE", "ZREVRANGEBYSCORE", "ZREVRANGEBYLEX",
        "ZSCORE", "ZMSCORE", "ZRANK", "ZREVRANK", "ZCARD", "ZCOUNT", "ZLEXCOUNT", "ZSCAN", "ZRANDMEMBER",
        "ZINTER", "ZINTERCARD", "ZUNION", "ZDIFF",
        # streams, geo, HyperLogLog
        "XRANGE", "XREVRANGE", "XLEN", "XREAD", "XINFO STREAM", "XINFO GROUPS", "XINFO CONSUMERS",
        "XPENDING", "GEOPOS", "GEODIST", "GEOHASH", "GEORADIUS_RO", "GEORADIUSBYMEMBER_RO", "GEOSEARCH",
        "PFCOUNT",
        # scripts and functions declared read-only
        "EVAL_RO", "EVALSHA_RO", "FCALL_RO", "SCRIPT EXISTS",
        # the server
        "PING", "ECHO", "TIME", "DBSIZE", "INFO", "LASTSAVE", "ROLE", "CONFIG GET", "CLIENT ID",
        "CLIENT INFO", "CLIENT LIST", "CLIENT GETNAME", "COMMAND", "COMMAND COUNT", "COMMAND INFO",
        "COMMAND DOCS", "PUBSUB CHANNELS", "PUBSUB NUMSUB", "PUBSUB NUMPAT",
    }
)  # fmt: skip

#: The first words of the two-word reads (``CONFIG GET``), which redis-py may send as one.
_CONTAINERS = frozenset(command.partition(" ")[0] for command in READ_COMMANDS if " " in command)

#: Set while a wrapped call runs with redis-py's default Retry: it makes one attempt.
_one_attempt: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "otelres_redis_one_attempt", default=False
)

_errors: dict[str, tuple[type[BaseException], ...]] = {}


def _error_classes() -> dict[str, tuple[type[BaseException], ...]]:
    """redis-py's error classes, looked up once redis is in use."""
    if not _errors:
        from redis import exceptions  # noqa: PLC0415 - imported only once redis is in use

        transport = (exceptions.ConnectionError, exceptions.TimeoutError, ConnectionError, TimeoutError)
        _errors["failure"] = (exceptions.ConnectionError, exceptions.TimeoutError, OSError)
        _errors["retry"] = transport
        _errors["final"] = tuple(
            cls
            for cls in (
                getattr(exceptions, "AuthenticationError", None),
                getattr(exceptions, "AuthorizationError", None),
            )
            if cls is not None
        )
        _errors["timeout"] = (exceptions.TimeoutError, TimeoutError)
    return _errors


def _is_failure(exc: BaseException) -> bool:
    return isinstance(exc, _error_classes()["failure"])


def _is_retryable(exc: BaseException) -> bool:
    errors = _error_classes()
    # A wrong password is not a blip: it fails again the same way.
    return isinstance(exc, errors["retry"]) and not isinstance(exc, errors["final"])


def _reason(exc: BaseException | None, result: object) -> str:
    return "timeout" if isinstance(exc, _error_classes()["timeout"]) else "connect"


#: A rejection raises :data:`CircuitOpenError`.
_PROFILE = store_profile(
    "redis", library="redis", is_failure=_is_failure, is_retryable=_is_retryable, reason=_reason
)
_patches = Patches()


#: ``CircuitOpenError``: what a redis-py call rejected by an open circuit raises, an
#: :class:`otelres.CircuitOpenError` that is also ``redis.exceptions.ConnectionError``.
__getattr__ = module_getattr("redis", __name__)


def breaker_name(pool: Any) -> str:
    """The breaker name of a redis-py connection pool (sync or asyncio)."""
    kwargs = pool.connection_kwargs
    db = kwargs.get("db") or 0
    service = getattr(pool, "service_name", None)
    if service:
        return f"redis+sentinel://{service}/{db}"
    path = kwargs.get("path")
    if path:
        return f"redis+unix://{os.path.abspath(os.fsdecode(path))}/{db}"  # noqa: PTH100 - no I/O
    scheme = "rediss" if "SSL" in getattr(pool.connection_class, "__name__", "") else "redis"
    host = str(kwargs.get("host") or "localhost").lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{kwargs.get('port') or 6379}/{db}"


def _default_retry(client_class: type) -> object:
    """The ``retry`` a client class uses when the application passes none."""
    try:
        return inspect.signature(client_class).parameters["retry"].default
    except (KeyError, TypeError, ValueError):  # pragma: no cover - a redis-py without the argument
        return None


def _client_retries(pool: Any, client_class: type) -> bool:
    """Whether the application configured redis-py's own retries for this pool
    (a Retry other than redis-py's default, or errors to retry on).
    """
    kwargs = pool.connection_kwargs
    retry = kwargs.get("retry")
    if kwargs.get("retry_on_error"):
        return True
    if retry is None or retry.get_retries() == 0:
        return False
    return bool(retry != _default_retry(client_class))


class _Pool:
    """What the commands of one connection pool share: worked out on the pool's
    first command and again when its ``retry`` is replaced; the guard again when
    the registry or its settings are.
    """

    __slots__ = ("client_retries", "guard", "name", "ref", "registry", "retry", "settings")

    #: The guard of :attr:`name`, set by :func:`_plan` before any command reads it.
    guard: Guard

    def __init__(self, ref: Callable[[], Any], retry: Any, name: str, client_retries: bool) -> None:
        self.ref = ref  # the pool, weakly (its id is the key)
        self.retry = retry  # the Retry it had
        self.name = name
        self.client_retries = client_retries  # the application retries itself
        self.registry: Registry | None = None  # what the guard came from
        self.settings: Settings | None = None


#: id(pool) -> what its commands share; an entry goes with its pool, and when full
#: (somebody's pools that cannot go) the map is emptied.
_pools: dict[int, _Pool] = {}
_MAX_POOLS = 1024


def _forget(key: int, ref: weakref.ref[Any]) -> None:
    """A pool went: its entry goes too (unless a newer one took its place)."""
    record = _pools.get(key)
    if record is not None and record.ref is ref:
        _pools.pop(key, None)


def _learn(client: Any, pool: Any, retry: Any) -> _Pool:
    """Work out a pool's breaker name and whether the application retries itself."""
    # Redis and Pipeline share the defaults: the base class of the two says them.
    client_class = next((c for c in type(client).__mro__ if c.__name__ == "Redis"), type(client))
    name, client_retries = breaker_name(pool), _client_retries(pool, client_class)
    key = id(pool)
    try:
        ref: Callable[[], Any] = weakref.ref(pool, functools.partial(_forget, key))
    except TypeError:  # a pool that cannot be weakly referenced: worked out on every command
        return _Pool(_NOT_KEPT, retry, name, client_retries)
    record = _Pool(ref, retry, name, client_retries)
    if len(_pools) >= _MAX_POOLS:
        _pools.clear()
    _pools[key] = record
    return record


def _pool(client: Any) -> _Pool | None:
    """What a client's commands share (its pool's), with the current guard; None
    for a client without a connection pool.
    """
    try:
        pool = client.connection_pool
    except AttributeError:
        return None
    if pool is None:
        return None
    retry = pool.connection_kwargs.get("retry")
    record = _pools.get(id(pool))
    if record is None or record.ref() is not pool or record.retry is not retry:
        record = _learn(client, pool, retry)
    registry = default_registry()
    if record.registry is not registry or not registry.fresh(record.guard, record.settings):
        settings = registry.settings  # read first: a guard made under newer ones is renewed next time
        record.guard = registry.guard(record.name, _PROFILE)
        record.registry, record.settings = registry, settings
    return record


def _command(name: object) -> str:
    return (name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)).upper()


#: A one-word command as redis-py sends it (a str) -> why it must not be retried (None:
#: a read); bounded, emptied when full. Two-word reads (CONFIG GET) are not learned.
_reasons: dict[str, str | None] = {}
_MAX_REASONS = 512
_UNLEARNED = "unlearned"


def _learn_reason(args: tuple[Any, ...]) -> str | None:
    """Why a command must not be retried: ``not_idempotent`` for a write; None for a read."""
    first = args[0]
    command = _command(first)
    two_words = command in _CONTAINERS
    if two_words and len(args) > 1:
        command = f"{command} {_command(args[1])}"  # CONFIG GET sent as two words
    reason = None if command in READ_COMMANDS else "not_idempotent"
    if first.__class__ is str and not two_words:
        if len(_reasons) >= _MAX_REASONS:
            _reasons.clear()
        _reasons[first] = reason
    return reason


def _plan(instance: Any, args: tuple[Any, ...]) -> _Plan | None:
    """The guard of a command's server, why it must not be retried, and whether
    redis-py's retry loop makes one attempt; None to pass it through.
    """
    if not args or not should_wrap():
        return None
    record = _pool(instance)
    if record is None:
        return None
    if record.client_retries:
        return record.guard, "client_retry", False
    first = args[0]
    reason = _reasons.get(first, _UNLEARNED) if first.__class__ is str else _UNLEARNED
    if reason is _UNLEARNED:
        reason = _learn_reason(args)
    return record.guard, reason, True


def _pipeline_plan(instance: Any) -> _Plan | None:
    stack = instance.command_stack
    if not stack or not should_wrap():
        return None
    record = _pool(instance)
    if record is None:
        return None
    if record.client_retries:
        reason = "client_retry"
    elif all(_command(args[0]) in READ_COMMANDS for args, _ in stack if args):
        reason = "not_replayable"
    else:
        reason = "not_idempotent"
    return record.guard, reason, not record.client_retries


def _run(plan: _Plan, wrapped: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    guard, reason, one = plan
    return call_inside(guard, reason, wrapped, args, kwargs, also=_one_attempt if one else None)


async def _arun(plan: _Plan, wrapped: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    guard, reason, one = plan
    return await acall_inside(guard, reason, wrapped, args, kwargs, also=_one_attempt if one else None)


def _execute(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    plan = _plan(instance, args)
    if plan is None:
        return wrapped(*args, **kwargs)
    guard, reason, one = plan  # not _run(): a call less on every command
    return call_inside(guard, reason, wrapped, args, kwargs, also=_one_attempt if one else None)


async def _aexecute(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    plan = _plan(instance, args)
    if plan is None:
        return await wrapped(*args, **kwargs)
    guard, reason, one = plan
    return await acall_inside(guard, reason, wrapped, args, kwargs, also=_one_attempt if one else None)


def _pipeline(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    plan = _pipeline_plan(instance)
    return wrapped(*args, **kwargs) if plan is None else _run(plan, wrapped, args, kwargs)


async def _apipeline(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    plan = _pipeline_plan(instance)
    return await (wrapped(*args, **kwargs) if plan is None else _arun(plan, wrapped, args, kwargs))


def _call_with_retry(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """redis-py's ``Retry.call_with_retry`` (sync and asyncio): one attempt within
    a wrapped call that otelres retries, as configured anywhere else.
    """
    global _last_once  # noqa: PLW0603 - a one-entry cache in front of _onces
    if not _one_attempt.get():
        return wrapped(*args, **kwargs)
    # A command's connection retries twice with its Retry (connect, then the command),
    # and the pool hands the same connection to the next command: the last one first.
    found = _last_once
    # The copy stands while the Retry holds what it was copied from (update_retries,
    # update_supported_errors or a new backoff make a new copy).
    if found[0]() is not instance or found[1] != instance.__dict__:
        kept = _onces.get(id(instance))
        if kept is None or kept[0]() is not instance or kept[1] != instance.__dict__:
            kept = _once(instance)
        _last_once = found = kept
    once = found[2]
    return wrapped(*args, **kwargs) if once is None else wrapped.__func__(once, *args, **kwargs)


#: id(Retry) -> :func:`_once` of it. redis-py gives each connection a copy of the pool's
#: Retry: an entry goes with its Retry, and when full (Retries that cannot go) the map is emptied.
_onces: dict[int, _Once] = {}
_MAX_ONCES = 1024


def _forget_once(key: int, ref: weakref.ref[Any]) -> None:
    """A Retry went: its entry goes too (unless a newer one took its place)."""
    found = _onces.get(key)
    if found is not None and found[0] is ref:
        _onces.pop(key, None)


def _once(retry: Any) -> _Once:
    """A redis-py Retry (weakly), a copy of its attributes, and a copy of it that
    makes no retries (None if it makes none anyway). The Retry itself may be shared
    (by every connection of a pool in some redis-py versions, and by other calls):
    never changed.
    """
    if retry.get_retries() == 0:
        once = None
    else:
        try:
            once = object.__new__(type(retry))
            once.__dict__.update(retry.__dict__)  # copy.copy, without its generic machinery
        except (AttributeError, TypeError):  # pragma: no cover - a Retry with __slots__
            once = copy.copy(retry)
        once.update_retries(0)
    key = id(retry)
    try:
        found = (weakref.ref(retry, functools.partial(_forget_once, key)), dict(retry.__dict__), once)
    except (AttributeError, TypeError):  # pragma: no cover - __slots__: copied on every call
        return _NOT_KEPT, None, once
    if len(_onces) >= _MAX_ONCES:
        _onces.clear()
    _onces[key] = found
    return found


def _not_kept() -> None:
    return None


#: In place of a weak reference to a Retry that is not kept: it never matches.
_NOT_KEPT: Callable[[], Any] = _not_kept
#: The :func:`_once` that :func:`_call_with_retry` used last.
_last_once: _Once = (_NOT_KEPT, None, None)


def _forget_all() -> None:
    """Forget every pool, Retry and command (uninstrumented)."""
    global _last_once  # noqa: PLW0603
    _pools.clear()
    _onces.clear()
    _reasons.clear()
    _last_once = (_NOT_KEPT, None, None)


class RedisInstrumentor(BaseInstrumentor):  # type: ignore[misc] # untyped base
    """Breakers and retries for redis-py (``Redis.execute_command`` and
    ``Pipeline.execute``, sync and asyncio).
    """

    def instrumentation_dependencies(self) -> Collection[str]:
        """The redis-py versions this patches."""
        return ("redis >= 6.3",)  # Retry.get_retries, update_retries; tested at its floor

    def _instrument(self, **kwargs: Any) -> None:
        ensure_telemetry()
        _patches.wrap_named("redis.client", "Redis.execute_command", _execute)
        _patches.wrap_named("redis.client", "Pipeline.execute", _pipeline)
        _patches.wrap_named("redis.asyncio.client", "Redis.execute_command", _aexecute)
        _patches.wrap_named("redis.asyncio.client", "Pipeline.execute", _apipeline)
        _patches.wrap_named("redis.retry", "Retry.call_with_retry", _call_with_retry)
        _patches.wrap_named("redis.asyncio.retry", "Retry.call_with_retry", _call_with_retry)

    def _uninstrument(self, **kwargs: Any) -> None:
        _patches.restore()
        _forget_all()
