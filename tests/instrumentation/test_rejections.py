"""What a call rejected inside a patched client raises: one class per library, both
``otelres.CircuitOpenError`` and the library's own error for an unreachable server,
which the middlewares' 503 mapping and ``otelres.degrade()`` still recognise.

The contracts (http_contract.py, tests/db/db_contract.py, tests/store/store_contract.py)
prove it against the real servers, library by library; here: the classes themselves,
a pickle read back by a fresh process, and the server side with a real flaky upstream.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import pickle
import sqlite3
import subprocess
import sys
from typing import TYPE_CHECKING, Any
from wsgiref.util import setup_testing_defaults

import asyncpg
import httpx
import psycopg
import psycopg2
import pytest
import redis
import requests

import otelres
from otelres import State, asgi, wsgi
from otelres.testing import forced_state

if TYPE_CHECKING:
    from collections.abc import Callable, MutableMapping

    from flaky_server import FlakyServer

#: library -> the library's own errors its rejection is an instance of.
LIBRARY_ERRORS: dict[str, tuple[type[BaseException], ...]] = {
    "requests": (requests.exceptions.ConnectionError, requests.RequestException, OSError),
    "httpx": (httpx.ConnectError, httpx.TransportError),
    "psycopg": (psycopg.OperationalError,),
    "psycopg2": (psycopg2.OperationalError,),
    "asyncpg": (
        asyncpg.exceptions.ConnectionDoesNotExistError,
        asyncpg.PostgresConnectionError,
        ConnectionError,
    ),
    "redis": (redis.exceptions.ConnectionError,),
    "sqlite3": (sqlite3.OperationalError,),
}


def rejection_class(library: str) -> type[otelres.CircuitOpenError]:
    """``otelres.instrumentation.<library>.CircuitOpenError``."""
    found: type[otelres.CircuitOpenError] = importlib.import_module(
        f"otelres.instrumentation.{library}"
    ).CircuitOpenError
    return found


# -- the classes ---------------------------------------------------------------------------


@pytest.mark.parametrize("library", sorted(LIBRARY_ERRORS))
def test_one_class_per_library_both_errors(library: str) -> None:
    """Each library's rejection class is one class, a CircuitOpenError and the library's errors."""
    cls = rejection_class(library)
    assert cls is rejection_class(library)
    assert issubclass(cls, otelres.CircuitOpenError)
    assert all(issubclass(cls, error) for error in LIBRARY_ERRORS[library])
    assert f"{cls.__module__}.{cls.__qualname__}" == f"otelres.instrumentation.{library}.CircuitOpenError"


@pytest.mark.parametrize("library", sorted(LIBRARY_ERRORS))
def test_figures_message_and_pickle_are_circuit_open_errors(library: str) -> None:
    """args stay (breaker, retry_after); str(), repr() and a pickled copy are CircuitOpenError's."""
    error = rejection_class(library)("svc://db:1/app", 2.5)
    assert error.args == ("svc://db:1/app", 2.5)
    assert (error.breaker, error.retry_after) == ("svc://db:1/app", 2.5)
    assert str(error) == str(otelres.CircuitOpenError("svc://db:1/app", 2.5))
    assert repr(error) == "CircuitOpenError('svc://db:1/app', 2.5)"
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes
    assert (type(copy), copy.args, str(copy)) == (type(error), error.args, str(error))


@pytest.mark.parametrize("library", sorted(LIBRARY_ERRORS))
def test_a_throttled_rejection_is_the_librarys_error_too(library: str) -> None:
    """The throttle's rejection (reason throttled) is made by the same class, reads its reason back,
    says so in its message, and survives a pickle."""
    error = rejection_class(library)("svc://db:1/app", 0.0, "throttled")
    assert error.args == ("svc://db:1/app", 0.0, "throttled")
    assert (error.breaker, error.retry_after, error.reason) == ("svc://db:1/app", 0.0, "throttled")
    assert "throttled" in str(error)
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes
    assert (type(copy), copy.args, copy.reason) == (type(error), error.args, "throttled")
    assert rejection_class(library)("b", 1.0, "circuit_open").args == ("b", 1.0)


def test_library_parts_are_initialised() -> None:
    """The library's own attributes are there, as its constructor sets them (no AttributeError)."""
    made = {library: rejection_class(library)("b", 1.0) for library in LIBRARY_ERRORS}
    assert (made["requests"].request, made["requests"].response) == (None, None)
    assert made["psycopg"].sqlstate is None
    assert made["psycopg"].diag.message_primary is None
    assert (made["psycopg2"].pgcode, made["psycopg2"].pgerror, made["psycopg2"].cursor) == (None, None, None)
    assert made["asyncpg"].sqlstate == "08003"  # asyncpg's connection_does_not_exist
    assert made["asyncpg"].errno is None
    plain = vars(redis.exceptions.ConnectionError("b"))  # error_type (NETWORK) since redis-py 7.2
    assert {name: getattr(made["redis"], name) for name in plain} == plain
    with pytest.raises(RuntimeError):
        _ = made["httpx"].request  # set by the integration on the way out, as httpx does


def test_pickled_rejections_read_back_by_a_fresh_process() -> None:
    """A process that never made a rejection class reads pickled rejections of every library back."""
    pickled = pickle.dumps([rejection_class(library)(library, 1.5) for library in sorted(LIBRARY_ERRORS)])
    script = (
        "import pickle, sys\n"
        "errors = pickle.loads(sys.stdin.buffer.read())\n"
        "print(*(f'{type(e).__module__}.{type(e).__name__} {e.breaker} {e.retry_after}' for e in errors))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], input=pickled, capture_output=True, check=True, timeout=60
    )
    expected = [f"otelres.instrumentation.{lib}.CircuitOpenError {lib} 1.5" for lib in sorted(LIBRARY_ERRORS)]
    assert done.stdout.decode().strip() == " ".join(expected)


def test_other_module_attributes_still_missing() -> None:
    """Only CircuitOpenError is made on access: another missing name still raises AttributeError."""
    module = importlib.import_module("otelres.instrumentation.requests")
    with pytest.raises(AttributeError, match="CircuitOpenErr0r"):
        _ = module.CircuitOpenErr0r


# -- the server side -------------------------------------------------------------------------


def call_wsgi(app: Any, path: str) -> tuple[str, dict[str, str], bytes]:
    environ: dict[str, Any] = {"PATH_INFO": path}
    setup_testing_defaults(environ)
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        seen["status"], seen["headers"] = status, dict(headers)
        return lambda _data: None

    body = b"".join(app(environ, start_response))
    return seen["status"], seen["headers"], body


async def call_asgi(app: Any, path: str) -> tuple[int, dict[str, str], bytes]:
    scope: MutableMapping[str, Any] = {"type": "http", "method": "GET", "path": path, "headers": []}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start, body = sent[0], b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body


def test_wsgi_middleware_answers_an_uncaught_requests_rejection_with_503(
    server: FlakyServer, instrument: Callable[..., None]
) -> None:
    """A view letting a requests rejection through gets the middleware's 503; one catching it answers."""
    instrument()

    def view(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ["PATH_INFO"] == "/catches":
            try:
                requests.get(server.url + "/price", timeout=5)
            except requests.RequestException:
                start_response("200 OK", [("Content-Type", "text/plain")])
                return [b"cached price"]
        requests.get(server.url + "/price", timeout=5)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"fresh price"]

    app = wsgi.ResilienceMiddleware(view)
    with forced_state(server.breaker, State.FORCED_OPEN):
        status, headers, body = call_wsgi(app, "/page")
        assert (status, json.loads(body)["error"]) == ("503 Service Unavailable", "dependency unavailable")
        assert int(headers["Retry-After"]) >= 1
        assert call_wsgi(app, "/catches")[::2] == ("200 OK", b"cached price")
    assert server.count() == 0


def test_asgi_middleware_answers_an_uncaught_httpx_rejection_with_503(
    server: FlakyServer, instrument: Callable[..., None]
) -> None:
    """An ASGI view whose httpx.AsyncClient call is rejected gets the middleware's 503 with Retry-After."""
    instrument()

    async def view(scope: Any, receive: Any, send: Any) -> None:
        async with httpx.AsyncClient() as client:
            await client.get(server.url + "/price")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"fresh price"})

    app = asgi.ResilienceMiddleware(view)
    with forced_state(server.breaker, State.FORCED_OPEN):
        status, headers, body = asyncio.run(call_asgi(app, "/page"))
    assert (status, json.loads(body)["error"]) == (503, "dependency unavailable")
    assert int(headers["retry-after"]) >= 1
    assert server.count() == 0


def test_degrade_falls_back_on_rejections_of_the_patched_clients(
    server: FlakyServer, instrument: Callable[..., None]
) -> None:
    """degrade()'s default on= recognises a rejection raised inside requests and inside httpx (async)."""
    instrument()

    @otelres.degrade("popular items")
    def recommendations() -> str:
        return requests.get(server.url + "/recommendations", timeout=5).text

    @otelres.degrade("popular items")
    async def arecommendations() -> str:
        async with httpx.AsyncClient() as client:
            return (await client.get(server.url + "/recommendations")).text

    with forced_state(server.breaker, State.FORCED_OPEN):
        assert recommendations() == "popular items"
        assert asyncio.run(arecommendations()) == "popular items"
    assert server.count() == 0
    assert recommendations() == "status 200\n"
