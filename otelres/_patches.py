"""Patches: the one way a wrapt patch goes on and comes off, in one place.

Every wrapper otelres puts on someone else's code goes through :class:`Patches`:
the client instrumentations, the server's framework glue (Flask, Django,
Starlette) and telemetry's watch on OpenTelemetry's provider setters. It needs
only wrapt, so each of them can use it without importing the others.

OpenTelemetry's ``unwrap`` is no way to take one of ours off: it removes
whatever wrapper is on top, someone else's if it was put on after ours, and
turns a wrapped classmethod into a method bound to its class (a subclass's
``connect()`` then builds the base class). :meth:`Patches.restore` takes only
our wrapper out, wherever it sits in the chain, and puts back the very object
it found.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import wrapt

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Patches"]

#: What every wrapt wrapper is an instance of (``BaseObjectProxy`` from wrapt 2 on).
_PROXY: Any = getattr(wrapt, "BaseObjectProxy", wrapt.ObjectProxy)


def _wrapper_of(obj: object) -> object:
    """The wrapper function of a wrapt function wrapper (bound or not), else None."""
    return getattr(obj, "_self_wrapper", None) if isinstance(obj, _PROXY) else None


def _beneath(obj: object) -> object:
    """``obj`` without the wrapt wrappers around it."""
    while isinstance(obj, _PROXY):
        obj = obj.__wrapped__
    return obj


class _Patch(NamedTuple):
    owner: object
    attr: str
    #: What ``restore()`` puts back: the attribute as found (wrapped), or beneath its wrappers (kept).
    original: object
    #: Our wrapper; None for an attribute only kept.
    wrapper: Callable[..., Any] | None


class Patches:
    """The wrappers one instrumentor put on (and the attributes it keeps), undone
    exactly by :meth:`restore`.

    OpenTelemetry's ``unwrap`` replaces whatever wrapper is on top and turns a
    wrapped classmethod into a method bound to its class. Here every original is
    kept as it was found in the owner's ``__dict__``, and our wrapper is taken
    out of the chain wherever it sits, so that the other wrappers stay and
    otelres and OpenTelemetry's instrumentations can be installed and removed
    in any order.
    """

    def __init__(self) -> None:
        self._done: list[_Patch] = []

    @property
    def active(self) -> bool:
        """True from the first :meth:`wrap` or :meth:`keep` to :meth:`restore`: the
        classes handed to a driver obey it.
        """
        return bool(self._done)

    def wrap(self, owner: object, attr: str, wrapper: Callable[..., Any]) -> None:
        """Wrap ``owner.attr`` (``owner``: a module or a class) with the wrapt wrapper
        ``wrapper``, once: a second call does nothing, and an attribute the owner
        does not define itself is left alone.
        """
        if attr not in vars(owner):
            return
        original = vars(owner)[attr]
        node = original
        while isinstance(node, _PROXY):
            if _wrapper_of(node) is wrapper:
                return
            node = node.__wrapped__
        wrapt.wrap_function_wrapper(owner, attr, wrapper)
        self._done.append(_Patch(owner, attr, original, wrapper))

    def wrap_named(self, module: str, name: str, wrapper: Callable[..., Any]) -> None:
        """:meth:`wrap` the attribute that the dotted ``name`` reaches from the module
        named ``module`` (imported), as wrapt finds it: ``wrap_named("redis.client",
        "Redis.execute_command", fn)``.
        """
        owner, attr, _ = wrapt.resolve_path(module, name)
        self.wrap(owner, attr, wrapper)

    def keep(self, owner: object, attr: str) -> None:
        """Note ``owner.attr`` as it is beneath any wrappers, for :meth:`restore` to
        put back if whoever patches it next leaves something else there that is
        no wrapper (OpenTelemetry's uninstrument, which leaves a wrapped
        classmethod a method bound to its class).
        """
        if attr in vars(owner):
            self._done.append(_Patch(owner, attr, _beneath(vars(owner)[attr]), None))

    def restore(self) -> None:
        """Take every wrapper of ours out and put back what was kept, newest first."""
        while self._done:
            patch = self._done.pop()
            if patch.wrapper is None:
                _put_back(patch)
            else:
                _unwrap(patch)


def _unwrap(patch: _Patch) -> None:
    """Take our wrapper out of the chain of wrappers of an attribute, wherever it sits."""
    owner, attr, original, wrapper = patch
    current = vars(owner).get(attr)
    if _wrapper_of(current) is wrapper:
        setattr(owner, attr, original)
        return
    parent = current
    while isinstance(parent, _PROXY):
        child = parent.__wrapped__
        if _wrapper_of(child) is wrapper:
            parent.__wrapped__ = original
            return
        parent = child


def _put_back(patch: _Patch) -> None:
    """Put a kept attribute back, unless it is there or something wraps it (someone's to remove)."""
    owner, attr, original, _ = patch
    current = vars(owner).get(attr)
    if current is not original and not hasattr(current, "__wrapped__"):
        setattr(owner, attr, original)
