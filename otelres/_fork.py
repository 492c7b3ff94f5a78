"""What a process forked from one that used otelres keeps, and what it starts afresh.

Pre-fork servers (gunicorn, uvicorn ``--workers``, multiprocessing's ``fork``)
copy the parent's memory, but only the thread that called ``fork()``: a lock
another thread held at that instant stays held forever in the child, and
counts of calls in flight belong to threads the child does not have. Each
stateful module registers its hooks here once; :func:`os.register_at_fork`
runs them around every ``fork()``:

- ``before``: in the parent, just before the fork (take the locks, so that no
  other thread is half-way through an update the child would copy);
- ``after_in_parent``: in the parent, just after (release them);
- ``after_in_child``: in the child (fresh locks, empty in-flight counts).

What a child keeps: configuration, breakers with their windows and states,
fallback values. What it never keeps: locks, calls or retries in flight,
probe permits handed to threads that are gone, background threads.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["at_fork", "forks_seen"]

_before: list[Callable[[], None]] = []
_after_in_parent: list[Callable[[], None]] = []
_after_in_child: list[Callable[[], None]] = []
_forks = 0


def at_fork(
    *,
    before: Callable[[], None] | None = None,
    after_in_parent: Callable[[], None] | None = None,
    after_in_child: Callable[[], None] | None = None,
) -> None:
    """Register hooks to run around every ``fork()`` (``before`` hooks run in
    reverse order of registration, the others in order, as ``os.register_at_fork``).
    """
    if before is not None:
        _before.append(before)
    if after_in_parent is not None:
        _after_in_parent.append(after_in_parent)
    if after_in_child is not None:
        _after_in_child.append(after_in_child)


def forks_seen() -> int:
    """How many times this process has been the child of a fork (tests read it)."""
    return _forks


def _run(hooks: list[Callable[[], None]]) -> None:
    # One hook's bug must not keep the others from running (a lock left held,
    # a count left in flight): each is run on its own.
    for hook in hooks:
        try:
            hook()
        except Exception:  # noqa: BLE001, S112 - nothing to report to around a fork
            continue


def _run_before() -> None:
    _run(_before[::-1])


def _run_after_in_parent() -> None:
    _run(_after_in_parent)


def _run_after_in_child() -> None:
    global _forks  # noqa: PLW0603 - one counter for the whole process
    _forks += 1
    _run(_after_in_child)


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork()
    os.register_at_fork(
        before=_run_before, after_in_parent=_run_after_in_parent, after_in_child=_run_after_in_child
    )
