"""The example product pages in examples/, each under its real server (Flask and Django
under gunicorn, FastAPI under uvicorn) in its own process, against four real upstream
services on loopback: probes, the fallback, the 503 mapping, request deadlines, load."""

from __future__ import annotations

import http.server
import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator
    from email.message import Message

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("details", "reviews", "pricing", "recommendations")
STARTUP_SECONDS = 30.0


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base's signature
        pass

    def do_GET(self) -> None:
        upstream = self.server.upstream
        status, delay = upstream.hit(self.path)
        if delay:
            time.sleep(delay)
        body = json.dumps({"service": upstream.name, "path": self.path}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the apps open a connection a call: the default 5 drops SYNs under load
    upstream: Upstream

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that gave up (a deadline) is expected: no traceback."""


class Upstream:
    """One upstream service: answers ``status`` after ``delay`` seconds; counts what it saw."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.status = 200
        self.delay = 0.0
        self._lock = threading.Lock()
        self._paths: list[str] = []
        self._server = _HTTPServer(("127.0.0.1", 0), _Handler)
        self._server.upstream = self
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def hit(self, path: str) -> tuple[int, float]:
        with self._lock:
            self._paths.append(path)
            return self.status, self.delay

    def count(self, prefix: str = "/") -> int:
        with self._lock:
            return sum(1 for path in self._paths if path.startswith(prefix))

    def reset(self) -> None:
        with self._lock:
            self.status, self.delay = 200, 0.0
            self._paths.clear()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def get(url: str, headers: dict[str, str] | None = None, timeout: float = 10.0) -> tuple[int, Message, str]:
    """A plain urllib GET (never patched by otelres): status, headers (any case), body."""
    request = urllib.request.Request(url, headers=headers or {})  # noqa: S310 - loopback http
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers, exc.read().decode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def command(framework: str, port: int) -> list[str]:
    if framework == "fastapi":
        server = ["uvicorn", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
        return [sys.executable, "-m", *server, "examples.fastapi_app:app"]
    target = "examples.flask_app:app" if framework == "flask" else "examples.django_app:application"
    gunicorn = ["gunicorn", "-w", "2", "-k", "gthread", "--threads", "8", "-b", f"127.0.0.1:{port}"]
    return [sys.executable, "-m", *gunicorn, target]


class App:
    """An example app running in its own server process."""

    def __init__(self, framework: str, upstreams: dict[str, Upstream], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTELRES_", "OTEL_"))}
        env |= {f"{name.upper()}_URL": upstream.url for name, upstream in upstreams.items()}
        # Small breakers, so that a test can open one in a few requests.
        env |= {"OTELRES_BREAKER_MINIMUM_CALLS": "4", "OTELRES_BREAKER_CONSECUTIVE_FAILURES": "3"}
        self._stderr = log.open("wb")
        self.process = subprocess.Popen(
            command(framework, self.port), cwd=ROOT, env=env, stdout=self._stderr, stderr=self._stderr
        )

    def wait_ready(self) -> None:
        limit = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < limit:
            if self.process.poll() is not None:
                pytest.fail(f"the server exited ({self.process.returncode}):\n{self.output()}")
            try:
                if get(self.url + "/livez", timeout=1.0)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        pytest.fail(f"the server did not answer /livez within {STARTUP_SECONDS} s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int | None:
        self.process.terminate()
        try:
            return self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
            return None
        finally:
            self._stderr.close()


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, Upstream]]:
    """The four upstream services of the product page, on loopback."""
    started = {name: Upstream(name) for name in SERVICES}
    yield started
    for upstream in started.values():
        upstream.close()


@pytest.fixture(autouse=True)
def _healthy(upstreams: dict[str, Upstream]) -> None:
    for upstream in upstreams.values():
        upstream.reset()


@pytest.fixture(scope="module", params=["flask", "django", "fastapi"])
def app(
    request: pytest.FixtureRequest, upstreams: dict[str, Upstream], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[App]:
    """One example app under its real server, stopped (and checked to exit) afterwards."""
    server = "uvicorn" if request.param == "fastapi" else "gunicorn"
    if importlib.util.find_spec(server) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{server} is not installed (pip install --group test)")
        pytest.skip(f"{server} is not installed")
    running = App(request.param, upstreams, tmp_path_factory.mktemp(request.param) / "server.log")
    try:
        running.wait_ready()
        yield running
    finally:
        code = running.stop()
    assert code is not None, f"the {request.param} server did not exit on SIGTERM"


def wait_for_readyz(app: App, status: int, verdict: str) -> dict:
    limit = time.monotonic() + 6.0
    while True:
        code, _, body = get(app.url + "/readyz")
        report = json.loads(body)
        if (code, report["status"]) == (status, verdict) or time.monotonic() > limit:
            assert (code, report["status"]) == (status, verdict), report
            return report
        time.sleep(0.1)


def test_probes(app: App, upstreams: dict[str, Upstream]) -> None:
    """/livez answers 200; /readyz is ok, degraded without recommendations, 503 fail without details,
    and says the overall status only (no check, breaker or upstream address)."""
    assert get(app.url + "/livez")[0] == 200
    assert wait_for_readyz(app, 200, "ok") == {"status": "ok"}
    upstreams["recommendations"].status = 503
    assert wait_for_readyz(app, 200, "degraded") == {"status": "degraded"}
    upstreams["details"].status = 503
    assert wait_for_readyz(app, 503, "fail") == {"status": "fail"}
    limit = time.monotonic() + 6.0
    while (verbose := get(app.url + "/readyz?verbose"))[0] != 503 and time.monotonic() < limit:
        time.sleep(0.1)  # each gunicorn worker has its own readiness (and cache)
    assert (verbose[0], verbose[2]) == (503, "readyz check failed\n")


def test_product_page_falls_back_without_recommendations(app: App, upstreams: dict[str, Upstream]) -> None:
    """With recommendations down the page answers 200 with popular items and X-Degraded naming them."""
    status, _, body = get(app.url + "/product/42")
    assert status == 200, body
    assert json.loads(body)["recommendations"]["service"] == "recommendations"
    upstreams["recommendations"].status = 503
    status, headers, body = get(app.url + "/product/42")
    assert status == 200, body
    page = json.loads(body)
    assert page["recommendations"] == ["popular items"]
    assert page["pricing"]["service"] == "pricing"
    assert headers.get("X-Degraded") == "recommendations"


def test_concurrent_requests_while_recommendations_are_down(app: App, upstreams: dict[str, Upstream]) -> None:
    """100 concurrent requests with recommendations down: every one answered 200, none a 500."""
    upstreams["recommendations"].status = 503
    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda i: get(f"{app.url}/product/{i}", timeout=10.0), range(100)))
    failed = [(status, body) for status, _, body in results if status != 200]
    assert not failed, f"{len(failed)} of 100 not answered 200, e.g. {failed[:2]}"
    assert all("popular items" in body for _, _, body in results)


def test_deadline_bounds_a_slow_upstream(app: App, upstreams: dict[str, Upstream]) -> None:
    """X-Request-Timeout: 1 against a pricing service slower than that ends in time, after 1 or 2 attempts."""
    upstreams["pricing"].delay = 1.5
    started = time.monotonic()
    status, _, body = get(app.url + "/product/7", headers={"X-Request-Timeout": "1"})
    elapsed = time.monotonic() - started
    assert elapsed < 3.0, elapsed
    assert status == 504, body
    assert 1 <= upstreams["pricing"].count("/pricing/") <= 2


def test_open_circuit_answers_503_with_retry_after(app: App, upstreams: dict[str, Upstream]) -> None:
    """Once pricing's breaker opens the page answers 503 with Retry-After: no 500, no ERROR traceback."""
    upstreams["pricing"].status = 503
    seen = []
    for _ in range(30):
        status, headers, body = get(app.url + "/product/9")
        seen.append(status)
        if status == 503:
            break
    assert status == 503, seen
    assert int(headers["Retry-After"]) >= 1
    assert json.loads(body) == {"error": "dependency unavailable"}
    assert "127.0.0.1" not in str(headers)
    assert 500 not in seen
    output = app.output()
    assert "Traceback" not in output
    assert "ERROR" not in output
