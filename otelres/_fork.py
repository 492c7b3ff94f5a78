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

Objects and modules that only need fresh locks (and, optionally, a method
``_after_fork_in_child``) say so once with :func:`renew`, which holds them
weakly: no hook list grows with every object made.

What a child keeps: configuration, breakers with their windows and states,
fallback values. What it never keeps: locks, calls or retries in flight,
probe permits handed to threads that are gone, background threads.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["at_fork", "forks_seen", "renew"]

_before: list[Callable[[], None]] = []
_after_in_parent: list[Callable[[], None]] = []
_after_in_child: list[Callable[[], None]] = []
_forks = 0
#: id(owner) -> (a weak reference to it, the names of its lock attributes), for :func:`renew`.
_renewed: dict[int, tuple[weakref.ref[Any], tuple[str, ...]]] = {}
#: A fresh lock of each kind (the lock types cannot be instantiated before Python 3.13).
_FRESH: dict[type, Callable[[], object]] = {
    type(threading.Lock()): threading.Lock,
    type(threading.RLock()): threading.RLock,
}


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


def renew(owner: object, *locks: str) -> None:
    """In a child forked while ``owner`` lives, give each attribute named in ``locks``
    a fresh lock of its kind (``Lock`` or ``RLock``), then call the owner's
    ``_after_fork_in_child()`` if it has one. ``owner`` is an object, or a module
    for module-level locks (``renew(sys.modules[__name__], "_lock")``).

    Why replace rather than hold the locks across the fork as the breakers do:
    these guard short bookkeeping (listener tuples, caches, counters) whose worst
    half-made state is harmless, and holding dozens of locks at every fork would
    make a fork wait on any thread inside any of them. ``owner`` is held weakly
    (it needs ``__weakref__`` when slotted): the registry costs nothing after the
    owner is gone.
    """
    key = id(owner)
    entry = _renewed.get(key)
    if entry is not None and entry[0]() is owner:  # a second call for the same owner adds to the first
        _renewed[key] = (entry[0], entry[1] + locks)
        return

    def forget(ref: weakref.ref[Any]) -> None:
        entry = _renewed.get(key)
        if entry is not None and entry[0] is ref:
            del _renewed[key]

    _renewed[key] = (weakref.ref(owner, forget), locks)


def _renew_all() -> None:
    # The child has one thread: the registry cannot change while it is read.
    for ref, locks in list(_renewed.values()):
        owner = ref()
        if owner is None:
            continue
        try:
            for name in locks:
                setattr(owner, name, _FRESH.get(type(getattr(owner, name)), threading.Lock)())
            after = getattr(owner, "_after_fork_in_child", None)
            if after is not None:
                after()
        except Exception:  # noqa: BLE001, S112 - as _run: one owner's bug must not stop the others
            continue


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
    _renew_all()  # first: the hooks below may take these locks
    _run(_after_in_child)


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork()
    os.register_at_fork(
        before=_run_before, after_in_parent=_run_after_in_parent, after_in_child=_run_after_in_child
    )
