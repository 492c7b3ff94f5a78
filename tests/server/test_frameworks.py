"""The 503 mapping inside Flask, Django, Starlette and FastAPI (FrameworksInstrumentor)."""

from __future__ import annotations

import json
import logging
import warnings
from typing import TYPE_CHECKING, Any, ClassVar
from wsgiref.util import setup_testing_defaults

import django
import pytest
from django.conf import settings
from django.core.handlers.wsgi import WSGIHandler
from django.http import HttpResponse
from django.test import Client, override_settings
from django.urls import path
from fastapi import FastAPI
from flask import Flask
from starlette.applications import Starlette
from starlette.exceptions import StarletteDeprecationWarning
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from otelres import CircuitOpenError, asgi, wsgi
from otelres._errors import OtelresError
from otelres.instrumentation._rejections import rejection_class
from otelres.server._frameworks import FrameworksInstrumentor

with warnings.catch_warnings():
    # Starlette's test client would rather have httpx2; httpx is what is installed.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

if TYPE_CHECKING:
    from collections.abc import Iterator


def _fail(*args: Any) -> Any:
    raise CircuitOpenError("payments", 2.3)


def _fail_fastapi() -> None:
    raise CircuitOpenError("payments", 2.3)


class _URLs:
    urlpatterns: ClassVar[list[Any]] = [path("fail/", _fail)]


class OwnHandler:
    """A Django middleware whose process_exception answers a CircuitOpenError itself."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        return self.get_response(request)

    def process_exception(self, _request: Any, exception: Exception) -> Any:
        if isinstance(exception, CircuitOpenError):
            return HttpResponse("mine", status=418)
        return None


@pytest.fixture(scope="module", autouse=True)
def _django() -> None:
    if not settings.configured:
        settings.configure(
            DEBUG=False,
            ALLOWED_HOSTS=["testserver"],
            ROOT_URLCONF=_URLs,
            MIDDLEWARE=[],
            INSTALLED_APPS=[],
            LOGGING_CONFIG=None,
            USE_TZ=True,
        )
        django.setup()


@pytest.fixture
def instrumented() -> Iterator[FrameworksInstrumentor]:
    instrumentor = FrameworksInstrumentor()
    instrumentor.instrument()
    yield instrumentor
    instrumentor.uninstrument()


def _flask_app() -> Flask:
    app = Flask("frameworks")
    app.add_url_rule("/fail", view_func=_fail)
    return app


def _starlette_app(**kwargs: Any) -> Starlette:
    return Starlette(routes=[Route("/fail", _fail)], **kwargs)


def _fastapi_app() -> FastAPI:
    app = FastAPI()
    app.add_api_route("/fail", _fail_fastapi)
    return app


_DETAILS = {"error": "dependency unavailable", "dependency": "payments", "retry_after": 3}


def _check_503(
    status: int, headers: Any, body: bytes, caplog: pytest.LogCaptureFixture, *, details: bool = False
) -> None:
    assert status == 503
    assert headers["Retry-After"] == "3"
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == (_DETAILS if details else {"error": "dependency unavailable"})
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]  # not even Django's
    assert [r.name for r in caplog.records if r.levelno == logging.WARNING] == ["otelres.server"]


# --- Flask --------------------------------------------------------------------------------------


def test_flask_answers_503(instrumented: FrameworksInstrumentor, caplog: pytest.LogCaptureFixture) -> None:
    """A Flask view raising CircuitOpenError gives the middleware's 503, with no ERROR traceback."""
    response = _flask_app().test_client().get("/fail")
    _check_503(response.status_code, response.headers, response.data, caplog)


@pytest.mark.parametrize("show_details", [False, True])
def test_flask_body_follows_the_middlewares_show_details(
    show_details: bool, instrumented: FrameworksInstrumentor, caplog: pytest.LogCaptureFixture
) -> None:
    """Under a ResilienceMiddleware, Flask's 503 names the dependency only if it shows details."""
    app = _flask_app()
    app.wsgi_app = wsgi.ResilienceMiddleware(app.wsgi_app, show_details=show_details)  # type: ignore[method-assign]
    response = app.test_client().get("/fail")
    _check_503(response.status_code, response.headers, response.data, caplog, details=show_details)


def test_flask_own_handler_wins(instrumented: FrameworksInstrumentor) -> None:
    """A Flask handler for CircuitOpenError, or for a base short of Exception, keeps its answer."""
    for registered in (CircuitOpenError, OtelresError):
        app = _flask_app()
        app.register_error_handler(registered, lambda _e: ("mine", 418))
        assert app.test_client().get("/fail").status_code == 418


def test_flask_exception_handler_does_not_win(instrumented: FrameworksInstrumentor) -> None:
    """A Flask catch-all handler for Exception does not replace the 503."""
    app = _flask_app()
    app.register_error_handler(Exception, lambda _e: ("oops", 500))
    assert app.test_client().get("/fail").status_code == 503


def test_flask_uninstrumented_is_500() -> None:
    """After uninstrument, Flask answers 500 again."""
    instrumentor = FrameworksInstrumentor()
    instrumentor.instrument()
    instrumentor.uninstrument()
    assert _flask_app().test_client().get("/fail").status_code == 500


# --- Django -------------------------------------------------------------------------------------


def test_django_answers_503(instrumented: FrameworksInstrumentor, caplog: pytest.LogCaptureFixture) -> None:
    """A Django view raising CircuitOpenError gives the middleware's 503, with no ERROR traceback."""
    response = Client().get("/fail/")
    _check_503(response.status_code, response.headers, response.content, caplog)


@pytest.mark.parametrize("show_details", [False, True])
def test_django_body_follows_the_middlewares_show_details(
    show_details: bool, instrumented: FrameworksInstrumentor, caplog: pytest.LogCaptureFixture
) -> None:
    """Under a ResilienceMiddleware, Django's 503 names the dependency only if it shows details."""
    app = wsgi.ResilienceMiddleware(WSGIHandler(), show_details=show_details)
    environ: dict[str, Any] = {"PATH_INFO": "/fail/", "HTTP_HOST": "testserver"}
    setup_testing_defaults(environ)
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        seen["status"], seen["headers"] = int(status[:3]), dict(headers)
        return lambda _data: None

    body = b"".join(app(environ, start_response))
    _check_503(seen["status"], seen["headers"], body, caplog, details=show_details)


def test_django_process_exception_wins(instrumented: FrameworksInstrumentor) -> None:
    """A Django middleware's process_exception answering CircuitOpenError keeps its answer."""
    with override_settings(MIDDLEWARE=[f"{__name__}.OwnHandler"]):
        response = Client().get("/fail/")
    assert response.status_code == 418
    assert response.content == b"mine"


def test_django_uninstrumented_is_500() -> None:
    """After uninstrument, Django answers 500 again."""
    instrumentor = FrameworksInstrumentor()
    instrumentor.instrument()
    instrumentor.uninstrument()
    assert Client(raise_request_exception=False).get("/fail/").status_code == 500


# --- Starlette and FastAPI ----------------------------------------------------------------------


@pytest.mark.parametrize("make", [_starlette_app, _fastapi_app], ids=["starlette", "fastapi"])
def test_asgi_frameworks_answer_503(
    make: Any, instrumented: FrameworksInstrumentor, caplog: pytest.LogCaptureFixture
) -> None:
    """A Starlette or FastAPI route raising CircuitOpenError gives the middleware's 503."""
    with TestClient(make()) as client:
        response = client.get("/fail")
    _check_503(response.status_code, response.headers, response.content, caplog)


@pytest.mark.parametrize("show_details", [False, True])
@pytest.mark.parametrize("make", [_starlette_app, _fastapi_app], ids=["starlette", "fastapi"])
def test_asgi_frameworks_body_follows_the_middlewares_show_details(
    make: Any, show_details: bool, instrumented: FrameworksInstrumentor, caplog: pytest.LogCaptureFixture
) -> None:
    """Under a ResilienceMiddleware the app added, the 503 names the dependency only if it shows details."""
    app = make()
    app.add_middleware(asgi.ResilienceMiddleware, show_details=show_details)
    with TestClient(app) as client:
        response = client.get("/fail")
    _check_503(response.status_code, response.headers, response.content, caplog, details=show_details)


def test_starlette_own_handler_wins(instrumented: FrameworksInstrumentor) -> None:
    """A Starlette handler passed for CircuitOpenError keeps its answer."""

    async def mine(request: Any, exc: Exception) -> PlainTextResponse:
        return PlainTextResponse("mine", status_code=418)

    with TestClient(_starlette_app(exception_handlers={CircuitOpenError: mine})) as client:
        assert client.get("/fail").status_code == 418


def test_fastapi_own_handler_wins(instrumented: FrameworksInstrumentor) -> None:
    """A FastAPI handler registered with @app.exception_handler(CircuitOpenError) keeps its answer."""
    app = _fastapi_app()

    @app.exception_handler(CircuitOpenError)
    async def mine(request: Any, exc: Exception) -> PlainTextResponse:
        return PlainTextResponse("mine", status_code=418)

    with TestClient(app) as client:
        assert client.get("/fail").status_code == 418


@pytest.mark.parametrize("make", [_starlette_app, _fastapi_app], ids=["starlette", "fastapi"])
def test_asgi_uninstrumented_is_500(make: Any) -> None:
    """After uninstrument, Starlette and FastAPI answer 500 again, even for an app built while on."""
    instrumentor = FrameworksInstrumentor()
    instrumentor.instrument()
    built = TestClient(make(), raise_server_exceptions=False)
    built.get("/")  # builds the middleware stack while instrumented
    instrumentor.uninstrument()
    with built, TestClient(make(), raise_server_exceptions=False) as fresh:
        assert built.get("/fail").status_code == 500
        assert fresh.get("/fail").status_code == 500


# --- the instrumentor ---------------------------------------------------------------------------


def test_instrument_twice_patches_once() -> None:
    """Instrumenting twice wraps each framework once, and uninstrument removes every wrapper."""
    import django.core.handlers.exception as django_exception  # noqa: PLC0415

    targets = [
        (Flask, "handle_user_exception"),
        (django_exception, "response_for_exception"),
        (ExceptionMiddleware, "__init__"),
    ]
    FrameworksInstrumentor().instrument()
    FrameworksInstrumentor().instrument()
    try:
        for owner, name in targets:
            patched = vars(owner)[name]
            assert hasattr(patched, "__wrapped__")
            assert not hasattr(patched.__wrapped__, "__wrapped__")
    finally:
        FrameworksInstrumentor().uninstrument()
    for owner, name in targets:
        assert not hasattr(vars(owner)[name], "__wrapped__")


def _fail_as_httpx_client() -> None:
    """A rejection as the patched httpx client raises it: CircuitOpenError and httpx.ConnectError."""
    rejection = rejection_class("httpx")
    raise rejection("payments", 2.3)


@pytest.mark.parametrize("framework", ["starlette", "fastapi"])
def test_asgi_apps_handler_for_the_client_error_wins_like_flask(
    instrumented: FrameworksInstrumentor, framework: str
) -> None:
    """An app handler for httpx.HTTPError answers a patched client's rejection (it is an
    httpx.ConnectError too), as Flask's handler for requests.RequestException does; without one
    the 503 mapping answers."""
    import httpx  # noqa: PLC0415 - the client library of this test only

    async def mine(request: Any, exc: Exception) -> PlainTextResponse:
        return PlainTextResponse("cached", status_code=200)

    async def route(request: Any) -> Any:
        _fail_as_httpx_client()

    if framework == "starlette":
        app: Any = Starlette(routes=[Route("/fail", route)], exception_handlers={httpx.HTTPError: mine})
        bare: Any = Starlette(routes=[Route("/fail", route)])
    else:
        app = FastAPI()
        app.add_api_route("/fail", _fail_as_httpx_client)
        app.add_exception_handler(httpx.HTTPError, mine)
        bare = FastAPI()
        bare.add_api_route("/fail", _fail_as_httpx_client)
    with TestClient(app) as client:
        response = client.get("/fail")
        assert (response.status_code, response.text) == (200, "cached")
    with TestClient(bare) as client:
        assert client.get("/fail").status_code == 503
