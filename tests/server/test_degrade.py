"""otelres._degrade.degrade: handler-level fallbacks, X-Degraded and fallback events."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any
from wsgiref.util import setup_testing_defaults

import pytest

import otelres
from otelres import _events, wsgi
from otelres._degrade import DEGRADED, degrade, degraded_parts, note_degraded
from otelres._errors import CircuitOpenError, ConfigError, RetryError
from otelres._events import Event, Listener

if TYPE_CHECKING:
    from otelres.testing import FakeClock


class Fallbacks(Listener):
    """Records every fallback event."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def on_event(self, event: Event) -> None:
        if event.kind == "fallback":
            self.seen.append((event.breaker, event.reason))


def open_circuit() -> CircuitOpenError:
    return CircuitOpenError("http://recs:80", 5.0)


def exhausted() -> RetryError:
    return RetryError("http://recs:80", 3, ConnectionError("refused"))


def test_sync_value_fallback_on_open_circuit() -> None:
    """An open circuit makes a sync function return the fallback value."""

    @degrade(["popular"])
    def recommendations(user_id: int) -> list[str]:
        raise open_circuit()

    assert recommendations(1) == ["popular"]


def test_sync_callable_fallback_gets_the_error() -> None:
    """A callable fallback is called with the error and its result returned."""

    @degrade(lambda exc: type(exc).__name__)
    def recommendations() -> str:
        raise exhausted()

    assert recommendations() == "RetryError"


def test_success_passes_through() -> None:
    """Without an error the function's own result comes back and nothing is noted."""
    listener = Fallbacks()
    _events.add_listener(listener)

    @degrade("fallback")
    def recommendations() -> str:
        return "fresh"

    assert recommendations() == "fresh"
    assert listener.seen == []


def test_other_exceptions_propagate_by_default() -> None:
    """An error other than an open circuit or exhausted retries is not replaced."""

    @degrade("fallback")
    def recommendations() -> str:
        raise ValueError("bug")

    with pytest.raises(ValueError, match="bug"):
        recommendations()


def test_custom_on_classes() -> None:
    """A custom exception class or tuple replaces the default ones."""

    @degrade("fallback", on=(KeyError, LookupError))
    def lookup() -> str:
        raise KeyError("x")

    @degrade("fallback", on=KeyError)
    def rejected() -> str:
        raise open_circuit()

    assert lookup() == "fallback"
    with pytest.raises(CircuitOpenError):
        rejected()


def test_custom_on_predicate() -> None:
    """A predicate on the error decides which errors fall back."""

    @degrade("fallback", on=lambda exc: "soft" in str(exc))
    def flaky(message: str) -> str:
        raise RuntimeError(message)

    assert flaky("soft failure") == "fallback"
    with pytest.raises(RuntimeError, match="hard"):
        flaky("hard failure")


def test_base_exceptions_never_swallowed() -> None:
    """KeyboardInterrupt and CancelledError pass through even when `on` names them."""

    @degrade("fallback", on=lambda _exc: True)
    def interrupted() -> str:
        raise KeyboardInterrupt

    @degrade("fallback", on=lambda _exc: True)
    async def cancelled() -> str:
        raise asyncio.CancelledError

    with pytest.raises(KeyboardInterrupt):
        interrupted()
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(cancelled())


def test_async_value_and_callable_fallbacks() -> None:
    """Async functions fall back to a value, a sync callable or an async callable."""

    async def later(exc: BaseException) -> str:
        await asyncio.sleep(0)
        return f"async {type(exc).__name__}"

    @degrade("value")
    async def by_value() -> str:
        raise open_circuit()

    @degrade(lambda _exc: "sync")
    async def by_sync() -> str:
        raise open_circuit()

    @degrade(later)
    async def by_async() -> str:
        raise exhausted()

    @degrade("value")
    async def bug() -> str:
        raise ValueError("bug")

    async def run() -> tuple[str, str, str]:
        return await by_value(), await by_sync(), await by_async()

    assert asyncio.run(run()) == ("value", "sync", "async RetryError")
    with pytest.raises(ValueError, match="bug"):
        asyncio.run(bug())


def test_async_fallback_for_sync_function_rejected() -> None:
    """An async fallback cannot serve a sync function: refused when decorating."""

    async def later(exc: BaseException) -> str:
        return "never"

    with pytest.raises(ConfigError):

        @degrade(later)
        def recommendations() -> str:
            return "fresh"


def test_invalid_on_rejected() -> None:
    """An `on` that is neither classes nor a predicate is refused."""
    with pytest.raises(ConfigError):
        degrade("x", on=42)


def test_listener_gets_the_fallback_with_breaker_name() -> None:
    """Listeners hear the fallback under the error's breaker and the error's type name."""
    listener = Fallbacks()
    _events.add_listener(listener)

    @degrade("fallback")
    def recommendations() -> str:
        raise open_circuit()

    recommendations()
    assert listener.seen == [("http://recs:80", "CircuitOpenError")]


def test_name_and_qualname_used_for_the_part() -> None:
    """An explicit name wins; without a breaker on the error the function's qualname names the part."""
    listener = Fallbacks()
    _events.add_listener(listener)

    @degrade("fallback", name="recommendations")
    def named() -> str:
        raise open_circuit()

    @degrade("fallback", on=KeyError)
    def unnamed() -> str:
        raise KeyError("x")

    named()
    unnamed()
    assert listener.seen == [
        ("recommendations", "CircuitOpenError"),
        ("test_name_and_qualname_used_for_the_part.<locals>.unnamed", "KeyError"),
    ]


def test_degraded_noted_outside_request_is_harmless() -> None:
    """Outside a request there is no X-Degraded set to note into; the fallback still works."""

    @degrade("fallback")
    def recommendations() -> str:
        raise open_circuit()

    assert DEGRADED.get() is None
    assert recommendations() == "fallback"


class CountingSet(set[str]):
    """A degraded set that counts how often a part is noted into it."""

    def __init__(self) -> None:
        super().__init__()
        self.adds = 0

    def add(self, element: str) -> None:
        self.adds += 1
        super().add(element)


def test_a_degraded_part_is_noted_once() -> None:
    """degrade() notes its part in the request's set exactly once, with a middleware and a listener about."""
    wsgi.ResilienceMiddleware(lambda _environ, _start: [])
    _events.add_listener(Fallbacks())

    @degrade("fallback")
    def recommendations() -> str:
        raise open_circuit()

    parts = CountingSet()
    token = DEGRADED.set(parts)
    try:
        assert recommendations() == "fallback"
    finally:
        DEGRADED.reset(token)
    assert parts == {"http://recs:80"}
    assert parts.adds == 1


def test_degraded_parts_opens_a_fresh_set_and_restores_the_previous_one() -> None:
    """degraded_parts() gives its block its own set and puts the outer one back on exit, also on error."""
    assert DEGRADED.get() is None
    with degraded_parts() as outer:
        note_degraded("reviews")
        with pytest.raises(KeyError), degraded_parts() as inner:
            note_degraded("pricing")
            raise KeyError("x")
        assert DEGRADED.get() is outer
    assert DEGRADED.get() is None
    assert outer == {"reviews"}
    assert inner == {"pricing"}


def test_only_names_given_to_degrade_are_chosen() -> None:
    """degrade(name=...) notes a chosen name; a breaker's name (from the error, or a core fallback's
    note) and a function's name are parts, never chosen ones."""

    @degrade("a", name="recommendations")
    def named() -> str:
        raise open_circuit()

    @degrade("b")
    def unnamed() -> str:
        raise exhausted()

    @degrade("c")
    def plain() -> str:
        raise ConnectionError("refused")

    with degraded_parts() as parts:
        assert (named(), unnamed(), plain()) == ("a", "b", "c")
        note_degraded("https://pricing:443")
    assert parts == {"recommendations", "http://recs:80", "https://pricing:443", plain.__qualname__}
    assert parts.chosen == {"recommendations"}


def _call_wsgi(app: Any) -> tuple[str, list[tuple[str, str]], bytes]:
    environ: dict[str, Any] = {"PATH_INFO": "/product"}
    setup_testing_defaults(environ)
    captured: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        captured["status"], captured["headers"] = status, headers
        return lambda _data: None

    body = b"".join(app(environ, start_response))
    return captured["status"], captured["headers"], body


@pytest.mark.parametrize(
    ("show_details", "header"), [(False, "recommendations"), (True, "http://recs:80,recommendations")]
)
def test_wsgi_response_names_degraded_part(show_details: bool, header: str) -> None:
    """Inside a ResilienceMiddleware request the fallback answers 200 with X-Degraded: the chosen
    names only, or every part (the breaker's name too) with show_details."""

    @degrade(["popular"], name="recommendations")
    def recommendations() -> list[str]:
        raise open_circuit()

    @degrade("n/a")
    def pricing() -> str:
        raise exhausted()

    def product_page(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = f"{recommendations()} {pricing()}".encode()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]

    status, headers, body = _call_wsgi(wsgi.ResilienceMiddleware(product_page, show_details=show_details))
    assert status.startswith("200")
    assert ("X-Degraded", header) in headers
    assert body == b"['popular'] n/a"


def test_wsgi_response_without_fallback_has_no_header() -> None:
    """A request whose parts all succeed carries no X-Degraded header."""

    @degrade("fallback")
    def recommendations() -> str:
        return "fresh"

    def page(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = recommendations().encode()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]

    status, headers, _ = _call_wsgi(wsgi.ResilienceMiddleware(page))
    assert status.startswith("200")
    assert all(name != "X-Degraded" for name, _ in headers)


def test_exhausted_retries_fall_back_by_default(clock: FakeClock) -> None:
    """With the default on=, the error a Resilience re-raises after its last attempt (a
    ConnectionError, not a RetryError) gives the fallback instead of a 500."""
    res = otelres.Resilience("http://recs:80", clock=clock)

    @degrade(["popular"])
    def recommendations() -> list[str]:
        return res.call(refused)

    assert recommendations() == ["popular"]


def test_a_handlers_own_bug_still_propagates() -> None:
    """With the default on=, a KeyError or TypeError of the handler's own is not hidden by the fallback."""

    @degrade(["popular"])
    def recommendations() -> list[str]:
        return {}["missing"]  # type: ignore[no-any-return]

    with pytest.raises(KeyError):
        recommendations()


def refused() -> list[str]:
    raise ConnectionRefusedError("refused")
