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

import contextlib
import contextvars
import copy
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
    from collections.abc import Collection

    #: The Resilience of a call's server, why it must not be retried, and whether
    #: redis-py's retry loop makes one attempt.
    _Plan = tuple[Any, str | None, bool]

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


#: pool -> (the retry it had, its breaker name, whether the application retries itself)
_pools: weakref.WeakKeyDictionary[Any, tuple[object, str, bool]] = weakref.WeakKeyDictionary()


def _describe(client: Any) -> tuple[str, bool] | None:
    """The breaker name of a client's pool and whether the application retries itself."""
    pool = getattr(client, "connection_pool", None)
    if pool is None:
        return None
    retry = pool.connection_kwargs.get("retry")
    known = None
    with contextlib.suppress(TypeError):  # an unhashable pool of a subclass
        known = _pools.get(pool)
    if known is None or known[0] is not retry:
        # Redis and Pipeline share the defaults: the base class of the two says them.
        client_class = next((c for c in type(client).__mro__ if c.__name__ == "Redis"), type(client))
        known = (retry, breaker_name(pool), _client_retries(pool, client_class))
        with contextlib.suppress(TypeError):  # an unhashable pool of a subclass
            _pools[pool] = known
    return known[1], known[2]


def _command(name: object) -> str:
    return (name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)).upper()


def _plan(instance: Any, args: tuple[Any, ...]) -> _Plan | None:
    """The Resilience of a command's server, why it must not be retried, and
    whether redis-py's retry loop makes one attempt; None to pass it through.
    """
    if not args or not should_wrap():
        return None
    described = _describe(instance)
    if described is None:
        return None
    name, client_retries = described
    if client_retries:
        reason: str | None = "client_retry"
    else:
        command = _command(args[0])
        if command in _CONTAINERS and len(args) > 1:
            command = f"{command} {_command(args[1])}"  # CONFIG GET sent as two words
        reason = None if command in READ_COMMANDS else "not_idempotent"
    return default_registry().guard(name, _PROFILE), reason, not client_retries


def _pipeline_plan(instance: Any) -> _Plan | None:
    stack = instance.command_stack
    if not stack or not should_wrap():
        return None
    described = _describe(instance)
    if described is None:
        return None
    name, client_retries = described
    if client_retries:
        reason = "client_retry"
    elif all(_command(args[0]) in READ_COMMANDS for args, _ in stack if args):
        reason = "not_replayable"
    else:
        reason = "not_idempotent"
    return default_registry().guard(name, _PROFILE), reason, not client_retries


def _run(plan: _Plan, wrapped: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    res, reason, one = plan
    return call_inside(res, reason, wrapped, args, kwargs, also=_one_attempt if one else None)


async def _arun(plan: _Plan, wrapped: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    res, reason, one = plan
    return await acall_inside(res, reason, wrapped, args, kwargs, also=_one_attempt if one else None)


def _execute(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    plan = _plan(instance, args)
    return wrapped(*args, **kwargs) if plan is None else _run(plan, wrapped, args, kwargs)


async def _aexecute(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    plan = _plan(instance, args)
    return await (wrapped(*args, **kwargs) if plan is None else _arun(plan, wrapped, args, kwargs))


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
    if not _one_attempt.get() or instance.get_retries() == 0:
        return wrapped(*args, **kwargs)
    return wrapped.__func__(_once(instance), *args, **kwargs)


def _once(retry: Any) -> Any:
    """A copy of a redis-py Retry that makes no retries (the Retry itself may be
    shared by every connection of a pool, and by other calls).
    """
    try:
        once = object.__new__(type(retry))
        once.__dict__.update(retry.__dict__)  # copy.copy, without its generic machinery
    except (AttributeError, TypeError):  # pragma: no cover - a Retry with __slots__
        once = copy.copy(retry)
    once.update_retries(0)
    return once


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
        _pools.clear()
