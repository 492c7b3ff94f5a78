"""Helpers of the concurrency limit tests: a fork with a bounded wait for the child's answer,
a bounded wait for a condition, and gates that hold requests inside an app until released.
"""

from __future__ import annotations

import asyncio
import os
import select
import signal
import threading
import time
import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

#: Bound on every wait for another thread, process or server to act.
WAIT = 10.0


def fork_and_read(work: Callable[[], object]) -> str:
    """Fork; the child runs ``work`` and writes its answer; the parent returns it (bounded wait)."""
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads: the point here
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read_end)
        code = 1
        try:
            try:
                line, code = str(work()), 0
            except BaseException as exc:
                line = f"error: {exc!r}"
            os.write(write_end, line.encode()[:4000])
        finally:
            os._exit(code)
    os.close(write_end)
    try:
        deadline = time.monotonic() + WAIT
        chunks = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([read_end], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                return "deadlock"
            chunk = os.read(read_end, 4096)
            if not chunk:
                return b"".join(chunks).decode()
            chunks.append(chunk)
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)


def eventually(check: Callable[[], bool], what: str) -> None:
    """Wait (bounded by WAIT) until ``check()`` is true: for what another thread does after the
    client saw its answer (a WSGI server closes the body after sending it).
    """
    deadline = time.monotonic() + WAIT
    while not check():
        assert time.monotonic() < deadline, f"not within {WAIT:g} s: {what}"
        time.sleep(0.005)


class Gate:
    """Holds requests inside an app until :meth:`open`; :meth:`wait_entered` waits until ``n`` more
    are held. Works from threads (WSGI) and from an event loop (ASGI, through its executor).
    """

    def __init__(self) -> None:
        self._entered = threading.Semaphore(0)
        self._open = threading.Event()

    def hold(self) -> None:
        """In a WSGI app: count in, then block until the gate opens."""
        self._entered.release()
        self._open.wait(WAIT)

    async def ahold(self) -> None:
        """In an ASGI app: count in, then wait (in the loop's executor) until the gate opens."""
        self._entered.release()
        await asyncio.get_running_loop().run_in_executor(None, self._open.wait, WAIT)

    def wait_entered(self, n: int) -> None:
        for _ in range(n):
            assert self._entered.acquire(timeout=WAIT), "a request did not reach the app"

    def open(self) -> None:
        self._open.set()
