"""The demo's workload: an application's ordinary HTTP calls, with no otelres in sight.

Threads call ``requests.get()``; an asyncio task calls
``httpx.AsyncClient().get()``. Neither knows about otelres: the breaker and
the retries come from ``otelres.instrument()`` alone. Each tallies what the
application saw (a status code, or the exception's name).
"""

from __future__ import annotations

import asyncio
import collections
import importlib.util
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["CLIENTS", "Seen", "Workload", "available_clients"]

#: The client libraries the workload uses, when installed.
CLIENTS = ("requests", "httpx")

#: How long one call may take, each attempt (a reset or a 503 comes back at once).
TIMEOUT = 2.0


def available_clients() -> list[str]:
    """The workload's client libraries that are installed."""
    return [name for name in CLIENTS if importlib.util.find_spec(name) is not None]


class Seen:
    """What the application saw, per client: ``200``, ``503``, ``ConnectionError`` and so on."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)

    def add(self, client: str, what: str) -> None:
        """Count one call's result."""
        with self._lock:
            self.counts[client][what] += 1

    def summary(self) -> str:
        """``requests.get() 700 x 200, 12 x 503, 5 ConnectionError; …``, most frequent first."""
        with self._lock:
            parts = []
            for client, counts in self.counts.items():
                label = "requests.get()" if client == "requests" else "httpx.AsyncClient().get()"
                seen = ", ".join(
                    f"{n} x {what}" if what.isdigit() else f"{n} {what}" for what, n in counts.most_common()
                )
                parts.append(f"{label} {seen}")
        return "; ".join(parts) if parts else "no calls"


def _requests_worker(url: str, stop: threading.Event, pause: float, seen: Seen) -> None:
    import requests  # noqa: PLC0415 - an optional library, loaded only for the demo

    while not stop.is_set():
        try:
            response = requests.get(url, timeout=TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - the application's view: whatever reached it
            seen.add("requests", type(exc).__name__)
        else:
            seen.add("requests", str(response.status_code))
        stop.wait(pause)


async def _httpx_task(url: str, stop: threading.Event, pause: float, seen: Seen) -> None:
    import httpx  # noqa: PLC0415 - an optional library, loaded only for the demo

    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        while not stop.is_set():
            try:
                response = await client.get(url)
            except Exception as exc:  # noqa: BLE001
                seen.add("httpx", type(exc).__name__)
            else:
                seen.add("httpx", str(response.status_code))
            await asyncio.sleep(pause)


def _httpx_worker(url: str, stop: threading.Event, pause: float, seen: Seen) -> None:
    asyncio.run(_httpx_task(url, stop, pause, seen))


class Workload:
    """``workers`` threads with requests and one asyncio task with httpx, together
    about ``rate`` calls per second against ``url``.
    """

    def __init__(self, url: str, *, workers: int, rate: float, clients: list[str]) -> None:
        self.seen = Seen()
        self._stop = threading.Event()
        callers = (workers if "requests" in clients else 0) + (1 if "httpx" in clients else 0)
        pause = max(callers, 1) / rate
        self._threads: list[threading.Thread] = []
        if "requests" in clients:
            self._threads += [
                self._thread(f"demo-requests-{i}", _requests_worker, url, pause) for i in range(workers)
            ]
        if "httpx" in clients:
            self._threads.append(self._thread("demo-httpx", _httpx_worker, url, pause))

    def _thread(
        self, name: str, target: Callable[[str, threading.Event, float, Seen], None], url: str, pause: float
    ) -> threading.Thread:
        return threading.Thread(
            target=target, args=(url, self._stop, pause, self.seen), name=name, daemon=True
        )

    def start(self) -> None:
        """Start calling."""
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop calling and wait (at most ``timeout`` s) for the calls in flight."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            if thread.ident is not None:
                thread.join(timeout=max(deadline - time.monotonic(), 0.0))
