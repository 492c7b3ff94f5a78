"""The public composition: deadline → retry (with budget) → breaker → attempt,
with an optional fallback, for sync and async callables alike.

The two drivers below are the only code that calls the protected function and
the only code that waits; every decision is :class:`otelres._flow.Flow`'s.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import random as _random
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any, TypeVar, cast, overload

from . import _hooks
from ._breaker import REJECTED, CircuitBreaker
from ._budget import RetryBudget
from ._errors import CircuitOpenError, ConfigError
from ._fallback import Fallback
from ._flow import DONE, RERAISE, Flow, testing_state
from ._policy import BreakerPolicy, BudgetPolicy, RetryPolicy

if TYPE_CHECKING:
    from types import TracebackType

    from ._clock import Clock

__all__ = ["Attempt", "Resilience", "resilient"]

_T = TypeVar("_T")
_F = TypeVar("_F", bound=Callable[..., Any])


class Resilience:
    """Retries, a circuit breaker, a retry budget and a fallback around calls to one dependency.

    ``name`` names the dependency (``https://api.example.com:443``,
    ``postgresql://db:5432/app`` or any label). Without ``breaker``, the
    breaker and its retry budget are the process-wide ones registered under
    ``name``, configured from ``OTELRES_*`` and the TOML file, so every call
    site naming the same dependency shares one circuit. Pass a
    :class:`BreakerPolicy` (or a ``clock``) for a private breaker, or a
    :class:`CircuitBreaker` to share one explicitly.

    Use it as a decorator (sync or async functions), or with :meth:`call` and
    :meth:`acall`.
    """

    __slots__ = (
        "acquire",
        "breaker",
        "budget",
        "clock",
        "discard",
        "enabled",
        "fallback",
        "fast",
        "in_flight",
        "now",
        "plain_results",
        "random",
        "record",
        "retry",
    )

    def __init__(
        self,
        name: str,
        *,
        retry: RetryPolicy | None = None,
        breaker: CircuitBreaker | BreakerPolicy | None = None,
        budget: RetryBudget | BudgetPolicy | None = None,
        fallback: Fallback[Any] | None = None,
        discard: Callable[[Any], object] | None = None,
        clock: Clock | None = None,
        random: Callable[[], float] | None = None,
    ) -> None:
        from ._registry import default_registry  # noqa: PLC0415 - the registry builds Resilience

        if not isinstance(name, str) or not name:
            raise ConfigError("name", name, "a non-empty string naming the dependency")
        registry = default_registry()
        target = registry.settings.for_target(name)
        if isinstance(breaker, CircuitBreaker):
            shared_budget = None
        elif breaker is not None or clock is not None:
            breaker = CircuitBreaker(name, breaker or target.breaker, clock=clock)
            shared_budget = None
        else:
            breaker, shared_budget = registry.entry(name)
        if isinstance(budget, RetryBudget):
            pass
        elif budget is not None or shared_budget is None:
            budget = RetryBudget(budget or target.budget)
        else:
            budget = shared_budget
        if fallback is not None and not isinstance(fallback, Fallback):
            raise ConfigError("fallback", fallback, "an otelres.Fallback (Fallback.value(x) wraps a value)")
        self.breaker = breaker
        self.budget = budget
        self.retry = retry if retry is not None else target.retry
        if not isinstance(self.retry, RetryPolicy):
            raise ConfigError("retry", self.retry, "an otelres.RetryPolicy")
        self.fallback = fallback
        self.discard = discard
        self.clock = breaker.clock
        self.random = random if random is not None else _random.random
        self.enabled = target.enabled
        # Bound once: the flow calls these on every call.
        self.acquire = breaker.acquire
        self.record = breaker.record
        self.now = self.clock.monotonic
        self.in_flight = budget.calls
        #: True when no policy looks at a call's result (the flow's fast path).
        self.plain_results = (
            breaker.policy.failure_result is None
            and self.retry.retry_on_result is None
            and (fallback is None or not fallback.caches)
        )
        #: True when the drivers may run a first attempt without a Flow.
        self.fast = self.enabled and self.plain_results and fallback is None

    def __repr__(self) -> str:
        return f"Resilience({self.breaker.name!r}, state={self.breaker.state.value})"

    @property
    def name(self) -> str:
        """The dependency's name (the breaker's)."""
        return self.breaker.name

    # -- drivers ---------------------------------------------------------------------

    def call(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> _T:
        """Call ``fn(*args, **kwargs)`` with retries, breaker and fallback."""
        return self.call_with(fn, args, kwargs)

    def call_with(
        self,
        fn: Callable[..., _T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        no_retry: str | None = None,
    ) -> _T:
        """:meth:`call` with the arguments as values; ``no_retry`` names why this call
        must not be retried (``not_idempotent``, ``not_replayable``): a retry that
        would have been made is then counted as suppressed for that reason.
        """
        if self.fast and not _hooks.call_listeners:
            # The first attempt without a Flow: admission and a plain success are
            # two breaker calls. Anything else hands over to the flow below.
            token = self.acquire()
            if token == REJECTED:
                raise self._rejected()
            started = self.now()
            in_flight = self.in_flight
            in_flight.append(None)
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - handed to the flow, which re-raises it
                first = exc
            else:
                self.record(token, False, started)  # noqa: FBT003 - hot path
                return result
            finally:
                in_flight.pop()
            return self._retry(fn, args, kwargs, no_retry, token, started, first)
        if not self.enabled:
            return fn(*args, **kwargs)
        return self._retry(fn, args, kwargs, no_retry, REJECTED, 0.0, None)

    def _rejected(self) -> CircuitOpenError:
        """The error of a call the fast path saw rejected (reported to event listeners)."""
        error = self.breaker.rejection()
        if _hooks.listeners:
            _hooks.emit_rejected(self.breaker.name, error.retry_after)
        return error

    def _retry(
        self,
        fn: Callable[..., _T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        no_retry: str | None,
        token: int,
        started: float,
        first: BaseException | None,
    ) -> _T:
        """The sync driver of :class:`Flow`, from the start or after a failed first attempt."""
        flow = Flow(self, args, kwargs, no_retry)
        try:
            step = None if first is None else flow.resume(token, started, first)
            while True:
                if step is None:
                    if not flow.admit():
                        if flow.outcome == "rejected":
                            raise flow.rejection
                        return flow.value  # type: ignore[no-any-return]
                    try:
                        result = fn(*args, **kwargs)
                    except BaseException as exc:
                        step = flow.failed(exc)
                        if step is RERAISE:
                            raise
                    else:
                        step = flow.returned(result)
                elif step is RERAISE:
                    raise first  # type: ignore[misc] # set whenever resume() ran
                if step is DONE:
                    return flow.value  # type: ignore[no-any-return]
                if testing_state.sleep:
                    self.clock.sleep(step)  # type: ignore[arg-type] # a delay, by elimination
                step = None
        finally:
            flow.close()

    async def acall(self, fn: Callable[..., Awaitable[_T]], /, *args: Any, **kwargs: Any) -> _T:
        """The async :meth:`call`: the same flow, awaiting ``fn`` and the delays."""
        return await self.acall_with(fn, args, kwargs)

    async def acall_with(
        self,
        fn: Callable[..., Awaitable[_T]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        no_retry: str | None = None,
    ) -> _T:
        """The async :meth:`call_with`."""
        if self.fast and not _hooks.call_listeners:
            token = self.acquire()
            if token == REJECTED:
                raise self._rejected()
            started = self.now()
            in_flight = self.in_flight
            in_flight.append(None)
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - handed to the flow, which re-raises it
                first = exc
            else:
                self.record(token, False, started)  # noqa: FBT003 - hot path
                return result
            finally:
                in_flight.pop()
            return await self._aretry(fn, args, kwargs, no_retry, token, started, first)
        if not self.enabled:
            return await fn(*args, **kwargs)
        return await self._aretry(fn, args, kwargs, no_retry, REJECTED, 0.0, None)

    async def _aretry(
        self,
        fn: Callable[..., Awaitable[_T]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        no_retry: str | None,
        token: int,
        started: float,
        first: BaseException | None,
    ) -> _T:
        """The async driver of :class:`Flow`: :meth:`_retry` with ``await``."""
        flow = Flow(self, args, kwargs, no_retry)
        try:
            step = None if first is None else flow.resume(token, started, first)
            while True:
                if step is None:
                    if not flow.admit():
                        if flow.outcome == "rejected":
                            raise flow.rejection
                        return flow.value  # type: ignore[no-any-return]
                    try:
                        result = await fn(*args, **kwargs)
                    except BaseException as exc:
                        step = flow.failed(exc)
                        if step is RERAISE:
                            raise
                    else:
                        step = flow.returned(result)
                elif step is RERAISE:
                    raise first  # type: ignore[misc]
                if step is DONE:
                    return flow.value  # type: ignore[no-any-return]
                if testing_state.sleep:
                    await self.clock.asleep(step)  # type: ignore[arg-type]
                step = None
        finally:
            flow.close()

    # -- context managers ------------------------------------------------------------

    def attempts(self) -> Iterator[Attempt]:
        """Retry a block instead of a function, through the flow of :meth:`call`.

        ::

            for attempt in res.attempts():
                with attempt:
                    do_something()

        An exception worth retrying is swallowed by the ``with`` and the loop
        goes on after the backoff; the last one propagates. A block has no
        result, so result predicates and fallbacks do not apply here.
        """
        with contextlib.closing(self._blocks()) as blocks:  # closed (the flow too) however the loop ends
            for item in blocks:
                if isinstance(item, Attempt):
                    yield item
                elif testing_state.sleep:
                    self.clock.sleep(item)

    async def aattempts(self) -> AsyncIterator[Attempt]:
        """The async :meth:`attempts`: ``async for attempt in res.aattempts(): with attempt: ...``."""
        with contextlib.closing(self._blocks()) as blocks:
            for item in blocks:
                if isinstance(item, Attempt):
                    yield item
                elif testing_state.sleep:
                    await self.clock.asleep(item)

    def _blocks(self) -> Generator[Attempt | float, None, None]:
        """The one loop behind both: yields each attempt, then the delay to wait
        before the next (the drivers above do the waiting, sync or async).
        """
        if not self.enabled:
            yield Attempt(None)
            return
        flow = Flow(self, (), {})
        try:
            while flow.admit():
                attempt = Attempt(flow)
                yield attempt
                step = attempt.step
                if step is DONE or step is RERAISE:
                    return
                yield step  # type: ignore[misc] # a delay, by elimination
            if flow.outcome == "rejected":
                raise flow.rejection
        finally:
            flow.close()

    # -- decorator -------------------------------------------------------------------

    def __call__(self, fn: _F) -> _F:
        """Decorate a sync or async function so that every call goes through this policy."""
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                return await self.acall_with(fn, args, kwargs)

            return cast("_F", async_wrapper)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return self.call_with(fn, args, kwargs)

        return cast("_F", wrapper)


@overload
def resilient(name: str, /, **options: Any) -> Resilience: ...
@overload
def resilient(name: str, fn: _F, /, **options: Any) -> _F: ...
def resilient(name: str, fn: Any = None, /, **options: Any) -> Any:
    """``@otelres.resilient("payments")``: a :class:`Resilience` used as a decorator.

    The options are :class:`Resilience`'s keyword arguments.
    """
    res = Resilience(name, **options)
    return res if fn is None else res(fn)


class Attempt:
    """One attempt of :meth:`Resilience.attempts`: a context manager around the block."""

    __slots__ = ("_flow", "number", "step")

    def __init__(self, flow: Flow | None) -> None:
        self._flow = flow
        self.number = flow.attempts if flow is not None else 1
        #: What the flow decided when the block ended (DONE, RERAISE or a delay).
        self.step: object = DONE

    def __enter__(self) -> Attempt:  # noqa: PYI034 - a slotted final helper; Self needs 3.11
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        flow = self._flow
        if flow is None:
            return False
        if exc is None:
            self.step = flow.returned(None)
            return False
        self.step = flow.failed(exc)
        # Swallow the exception only to retry; DONE here is a fallback, which a
        # block cannot return, so the exception goes on.
        return self.step is not DONE and self.step is not RERAISE
