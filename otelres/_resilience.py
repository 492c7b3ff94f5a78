"""The public composition: deadline → retry (with budget) → breaker → attempt,
with an optional fallback, for sync and async callables alike.

:func:`run` and :func:`arun` are the drivers: the only code that calls the
protected function and the only code that waits; every decision is
:class:`~otelres._flow.Flow`'s. Each is one loop: the loop's first admission is
unrolled so that a plain success allocates no Flow (admission and a success are
two breaker calls), and whatever else happens hands the call over to the Flow,
which the rest of the same loop drives. :meth:`Resilience.attempts` drives the
same Flow for a block. :class:`Resilience` is the public face of a
:class:`~otelres._flow.Guard`, which the registry composes.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast, overload

from . import _events
from ._breaker import REJECTED, State
from ._flow import (
    DONE,
    ENCLOSING,
    RERAISE,
    Enclosing,
    Flow,
    Guard,
    InnerFailure,
    enclosing,
    mark_no_retry,
    testing_state,
)
from ._registry import default_registry

if TYPE_CHECKING:
    import contextvars
    from types import TracebackType

    from ._breaker import CircuitBreaker
    from ._budget import RetryBudget
    from ._clock import Clock
    from ._fallback import Fallback
    from ._policy import BreakerPolicy, BudgetPolicy, RetryPolicy

__all__ = ["Attempt", "Resilience", "arun", "resilient", "run"]

_T = TypeVar("_T")
_F = TypeVar("_F", bound=Callable[..., Any])


def _judge_inside(
    guard: Guard, outer: Enclosing, exc: BaseException | None, result: Any, no_retry: str | None
) -> None:
    """Hand the enclosing attempt this call's verdict: a failure by this caller's own
    predicates is left in :data:`ENCLOSING` for it to record; a call that must not be
    repeated marks its error so that no enclosing layer repeats it.
    """
    if exc is not None and no_retry is not None:
        mark_no_retry(exc, no_retry)
    try:
        failed = guard.judge.judge(exc, result)
    except Exception:  # noqa: BLE001 - a predicate's bug is the cautious reading: a failure
        failed = True
    if failed and not isinstance(outer, InnerFailure):  # said once is enough
        ENCLOSING.set(InnerFailure(outer))


def _ride(
    guard: Guard,
    outer: Enclosing,
    fn: Callable[..., _T],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    no_retry: str | None,
) -> _T:
    """A call inside an attempt through the same breaker (a patched client inside a
    ``@resilient`` function naming its dependency): one attempt, under the enclosing
    attempt's permit (a second permit would be refused in half-open, and nothing would
    ever probe), counted once, by the enclosing attempt, with this call's verdict if
    it is a failure. An open breaker still rejects it.
    """
    if guard.breaker.state in _REJECTING:
        raise guard.rejected()
    try:
        result = fn(*args, **kwargs)
    except BaseException as exc:
        _judge_inside(guard, outer, exc, None, no_retry)
        raise
    _judge_inside(guard, outer, None, result, no_retry)
    return result


async def _aride(
    guard: Guard,
    outer: Enclosing,
    fn: Callable[..., Awaitable[_T]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    no_retry: str | None,
) -> _T:
    """The async :func:`_ride`."""
    if guard.breaker.state in _REJECTING:
        raise guard.rejected()
    try:
        result = await fn(*args, **kwargs)
    except BaseException as exc:
        _judge_inside(guard, outer, exc, None, no_retry)
        raise
    _judge_inside(guard, outer, None, result, no_retry)
    return result


_REJECTING = (State.OPEN, State.FORCED_OPEN)


def _passes(checks: tuple[Callable[[Any], object], ...], result: Any) -> bool:
    """Whether no result check flags ``result`` (an HTTP response's status, say): True keeps
    the fast path; False, or a check that raises, hands the result to the Flow, which judges
    it in full (a check that raises reads as a failure there).
    """
    try:
        return not any(check(result) for check in checks)
    except Exception:  # noqa: BLE001 - the Flow asks again
        return False


def run(  # noqa: PLR0915 - one loop in one frame: the hot path pays no extra call
    guard: Guard,
    fn: Callable[..., _T],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    no_retry: str | None = None,
) -> _T:
    """Call ``fn(*args, **kwargs)`` through ``guard``: the sync driver.

    ``no_retry`` names why this call must not be repeated (``not_idempotent``,
    ``not_replayable``): a retry that would have been made is then counted as
    suppressed for that reason. Inside another otelres call's attempt the call makes
    one attempt (one retry layer); through the same breaker it rides on that attempt.
    """
    outer = ENCLOSING.get()
    if outer is not None and outer.breaker is guard.breaker:
        return _ride(guard, outer, fn, args, kwargs, no_retry)
    listening = _events.call_listeners
    if guard.fast and (not listening or (not _events.eager_listeners and not guard.breaker.troubled())):
        # The first admission, without a Flow. Per-call listeners that start on demand
        # hear a plain success at its end; a call with more to say gets its Flow.
        token = guard.acquire()
        if token != REJECTED:
            started = guard.now()
            in_flight = guard.in_flight
            in_flight.append(None)
            entered = ENCLOSING.set(guard)
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - handed to the flow, which re-raises it
                first: BaseException | None = exc
            else:
                first = None
            finally:
                # A call through the same breaker inside this attempt may have judged it a failure.
                inner_failed = ENCLOSING.get() is not guard
                ENCLOSING.reset(entered)
                try:  # noqa: SIM105 - a try is free on 3.11+, suppress() is a call
                    in_flight.pop()
                except IndexError:  # begun before a fork, ended in the child (otelres._budget)
                    pass
            if (
                first is None
                and not (listening and inner_failed)
                and (not guard.result_checks or _passes(guard.result_checks, result))
            ):
                guard.record(token, inner_failed, started)
                if listening:
                    _events.plain_success(guard.name, guard.now() - started, listening)
                return result
            # Failed, returned what a check flags, or returned while a call inside judged it a
            # failure (with listeners: something to say): the Flow takes over.
            step: object = _RESUME
        elif not listening:
            raise guard.rejected()
        else:
            step = _REFUSED
        flow = Flow(guard, args, kwargs, no_retry, outer, resumed=True)
    elif not guard.enabled:
        return fn(*args, **kwargs)
    else:
        flow = Flow(guard, args, kwargs, no_retry, outer)
        step = None
    try:
        if step is _RESUME:
            # ``result`` is read only when the attempt returned (unset when it raised).
            step = flow.resume(token, started, first, inner_failed, result if first is None else None)
        elif step is _REFUSED:
            flow.refuse()
            return flow.end()  # type: ignore[no-any-return] # raises the rejection (a fast guard has no fallback)
        while True:
            if step is None:
                if not flow.admit():
                    return flow.end()  # type: ignore[no-any-return] # the fallback, or raises the rejection
                entered = ENCLOSING.set(guard)
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:  # noqa: BLE001 - judged below, outside this attempt
                    error: BaseException | None = exc
                else:
                    error = None
                finally:
                    inner_failed = ENCLOSING.get() is not guard
                    ENCLOSING.reset(entered)
                step = (
                    flow.returned(result, inner_failed) if error is None else flow.failed(error, inner_failed)
                )
            if step is RERAISE:
                raise flow.error  # type: ignore[misc] # the attempt's exception
            if step is DONE:
                return flow.value  # type: ignore[no-any-return]
            if testing_state.sleep:
                guard.clock.sleep(step)  # type: ignore[arg-type] # a delay, by elimination
            step = None
    finally:
        flow.close()


async def arun(  # noqa: PLR0915 - one loop in one frame: the hot path pays no extra call
    guard: Guard,
    fn: Callable[..., Awaitable[_T]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    no_retry: str | None = None,
) -> _T:
    """The async driver: :func:`run` awaiting ``fn`` and the delays, the same loop."""
    outer = ENCLOSING.get()
    if outer is not None and outer.breaker is guard.breaker:
        return await _aride(guard, outer, fn, args, kwargs, no_retry)
    listening = _events.call_listeners
    if guard.fast and (not listening or (not _events.eager_listeners and not guard.breaker.troubled())):
        # The first admission, without a Flow. Per-call listeners that start on demand
        # hear a plain success at its end; a call with more to say gets its Flow.
        token = guard.acquire()
        if token != REJECTED:
            started = guard.now()
            in_flight = guard.in_flight
            in_flight.append(None)
            entered = ENCLOSING.set(guard)
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - handed to the flow, which re-raises it
                first: BaseException | None = exc
            else:
                first = None
            finally:
                # A call through the same breaker inside this attempt may have judged it a failure.
                inner_failed = ENCLOSING.get() is not guard
                ENCLOSING.reset(entered)
                try:  # noqa: SIM105 - a try is free on 3.11+, suppress() is a call
                    in_flight.pop()
                except IndexError:  # begun before a fork, ended in the child (otelres._budget)
                    pass
            if (
                first is None
                and not (listening and inner_failed)
                and (not guard.result_checks or _passes(guard.result_checks, result))
            ):
                guard.record(token, inner_failed, started)
                if listening:
                    _events.plain_success(guard.name, guard.now() - started, listening)
                return result
            # Failed, returned what a check flags, or returned while a call inside judged it a
            # failure (with listeners: something to say): the Flow takes over.
            step: object = _RESUME
        elif not listening:
            raise guard.rejected()
        else:
            step = _REFUSED
        flow = Flow(guard, args, kwargs, no_retry, outer, resumed=True)
    elif not guard.enabled:
        return await fn(*args, **kwargs)
    else:
        flow = Flow(guard, args, kwargs, no_retry, outer)
        step = None
    try:
        if step is _RESUME:
            # ``result`` is read only when the attempt returned (unset when it raised).
            step = flow.resume(token, started, first, inner_failed, result if first is None else None)
        elif step is _REFUSED:
            flow.refuse()
            return flow.end()  # type: ignore[no-any-return] # raises the rejection (a fast guard has no fallback)
        while True:
            if step is None:
                if not flow.admit():
                    return flow.end()  # type: ignore[no-any-return] # the fallback, or raises the rejection
                entered = ENCLOSING.set(guard)
                try:
                    result = await fn(*args, **kwargs)
                except BaseException as exc:  # noqa: BLE001 - judged below, outside this attempt
                    error: BaseException | None = exc
                else:
                    error = None
                finally:
                    inner_failed = ENCLOSING.get() is not guard
                    ENCLOSING.reset(entered)
                step = (
                    flow.returned(result, inner_failed) if error is None else flow.failed(error, inner_failed)
                )
            if step is RERAISE:
                raise flow.error  # type: ignore[misc] # the attempt's exception
            if step is DONE:
                return flow.value  # type: ignore[no-any-return]
            if testing_state.sleep:
                await guard.clock.asleep(step)  # type: ignore[arg-type]
            step = None
    finally:
        flow.close()


#: The loop's first step after the unrolled first attempt failed: hand it to the Flow.
_RESUME: Final = object()
#: The loop's first step after the unrolled first admission was refused, with per-call
#: listeners to tell: the Flow reports the rejected call.
_REFUSED: Final = object()


class Resilience:
    """Retries, a circuit breaker, a retry budget and a fallback around calls to one dependency.

    ``name`` names the dependency (``https://api.example.com:443``,
    ``postgresql://db:5432/app`` or any label). Without ``breaker``, the
    breaker and its retry budget are the process-wide ones registered under
    ``name``, configured from ``OTELRES_*`` and the TOML file, so every call
    site naming the same dependency shares one circuit. Pass a
    :class:`BreakerPolicy` (or a ``clock``) for a private breaker, or a
    :class:`CircuitBreaker` to share one explicitly. The registry
    (:meth:`otelres.Registry.guard`) composes the parts.

    Use it as a decorator (sync or async functions), or with :meth:`call` and
    :meth:`acall`.
    """

    __slots__ = ("guard",)

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
        #: What every call goes through.
        self.guard: Guard = default_registry().guard(
            name,
            retry=retry,
            breaker=breaker,
            budget=budget,
            fallback=fallback,
            discard=discard,
            clock=clock,
            random=random,
        )

    def __repr__(self) -> str:
        return f"Resilience({self.guard.name!r}, state={self.guard.breaker.state.value})"

    @property
    def name(self) -> str:
        """The dependency's name (the breaker's)."""
        return self.guard.name

    @property
    def breaker(self) -> CircuitBreaker:
        """The dependency's circuit breaker."""
        return self.guard.breaker

    @property
    def budget(self) -> RetryBudget:
        """The dependency's retry budget."""
        return self.guard.budget

    @property
    def retry(self) -> RetryPolicy:
        """The retry policy of this call site."""
        return self.guard.retry

    @property
    def fallback(self) -> Fallback[Any] | None:
        """The fallback of this call site."""
        return self.guard.fallback

    # -- drivers ---------------------------------------------------------------------

    def call(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> _T:
        """Call ``fn(*args, **kwargs)`` with retries, breaker and fallback."""
        return run(self.guard, fn, args, kwargs)

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
        return run(self.guard, fn, args, kwargs, no_retry)

    async def acall(self, fn: Callable[..., Awaitable[_T]], /, *args: Any, **kwargs: Any) -> _T:
        """The async :meth:`call`: the same flow, awaiting ``fn`` and the delays."""
        return await arun(self.guard, fn, args, kwargs)

    async def acall_with(
        self,
        fn: Callable[..., Awaitable[_T]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        no_retry: str | None = None,
    ) -> _T:
        """The async :meth:`call_with`."""
        return await arun(self.guard, fn, args, kwargs, no_retry)

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
                    self.guard.clock.sleep(item)

    async def aattempts(self) -> AsyncIterator[Attempt]:
        """The async :meth:`attempts`: ``async for attempt in res.aattempts(): with attempt: ...``."""
        with contextlib.closing(self._blocks()) as blocks:
            for item in blocks:
                if isinstance(item, Attempt):
                    yield item
                elif testing_state.sleep:
                    await self.guard.clock.asleep(item)

    def _blocks(self) -> Generator[Attempt | float, None, None]:
        """The drivers' loop for a block: yields each attempt, then the delay to
        wait before the next (the two iterators above do the waiting).
        """
        guard = self.guard
        if not guard.enabled:
            yield Attempt(None)
            return
        # The span up front: the loop body may open spans of its own around each attempt,
        # and one started inside them would be detached out of order.
        flow = Flow(guard, (), {}, None, enclosing(), up_front=True)
        try:
            while flow.admit():
                attempt = Attempt(flow)
                yield attempt
                step = attempt.step
                if step is DONE or step is RERAISE:
                    return
                yield step  # type: ignore[misc] # a delay, by elimination
            flow.end()
        finally:
            flow.close()

    # -- decorator -------------------------------------------------------------------

    def __call__(self, fn: _F) -> _F:
        """Decorate a sync or async function so that every call goes through this policy."""
        guard = self.guard
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                return await arun(guard, fn, args, kwargs)

            return cast("_F", async_wrapper)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return run(guard, fn, args, kwargs)

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

    __slots__ = ("_entered", "_flow", "number", "step")

    def __init__(self, flow: Flow | None) -> None:
        self._flow = flow
        self.number = flow.attempts if flow is not None else 1
        #: What the flow decided when the block ended (DONE, RERAISE or a delay).
        self.step: object = DONE
        self._entered: contextvars.Token[Guard | InnerFailure | None] | None = None

    def __enter__(self) -> Attempt:  # noqa: PYI034 - a slotted final helper; Self needs 3.11
        if self._flow is not None:
            # Calls made in the block are inside this attempt (one retry layer).
            self._entered = ENCLOSING.set(self._flow.guard)
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
        inner_failed = False
        if self._entered is not None:
            inner_failed = ENCLOSING.get() is not flow.guard
            ENCLOSING.reset(self._entered)
            self._entered = None
        if exc is None:
            self.step = flow.returned(None, inner_failed)
            return False
        self.step = flow.failed(exc, inner_failed)
        # Swallow the exception only to retry; DONE here is a fallback, which a
        # block cannot return, so the exception goes on.
        return self.step is not DONE and self.step is not RERAISE
