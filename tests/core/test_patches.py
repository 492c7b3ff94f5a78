"""The one way patches go on and come off (``Patches``), on plain classes and modules."""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest
import wrapt
from opentelemetry.instrumentation.utils import unwrap

from otelres._patches import Patches


def ours(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return ("ours", wrapped(*args, **kwargs))


def theirs(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return ("theirs", wrapped(*args, **kwargs))


def make_class() -> type:
    class Client:
        def send(self, value: object) -> object:
            return value

        @classmethod
        def connect(cls) -> type:
            return cls

    return Client


def test_restore_puts_back_the_very_objects() -> None:
    """restore() puts back the objects wrap() found, on a class and on a module."""
    cls = make_class()
    module = types.ModuleType("fake_driver")
    module.connect = lambda: "connected"  # type: ignore[attr-defined]
    places = [(cls, "send"), (cls, "connect"), (module, "connect")]
    found = [vars(owner)[attr] for owner, attr in places]
    patches = Patches()
    patches.wrap(cls, "send", ours)
    patches.wrap(cls, "connect", ours)
    patches.wrap(module, "connect", ours)
    assert patches.active
    assert cls().send(1) == ("ours", 1)
    assert module.connect() == ("ours", "connected")
    patches.restore()
    assert not patches.active
    assert all(vars(owner)[attr] is obj for (owner, attr), obj in zip(places, found, strict=True))


def test_wrap_twice_wraps_once() -> None:
    """The same wrapper is put on an attribute once, by one Patches or by another."""
    cls = make_class()
    first, second = Patches(), Patches()
    first.wrap(cls, "send", ours)
    first.wrap(cls, "send", ours)
    second.wrap(cls, "send", ours)
    assert cls().send(1) == ("ours", 1)
    assert not second.active
    first.restore()
    assert cls().send(1) == 1


def test_attribute_of_a_base_class_is_left_alone() -> None:
    """An attribute the owner only inherits is not wrapped (its base's owner would be)."""
    sub = type("Sub", (make_class(),), {})
    patches = Patches()
    patches.wrap(sub, "send", ours)
    assert "send" not in vars(sub)
    assert not patches.active


@pytest.mark.parametrize("ours_first", [True, False])
def test_restore_takes_out_only_ours(ours_first: bool) -> None:
    """Under or over someone else's wrapper, restore() takes out ours and leaves theirs working."""
    cls = make_class()
    original = vars(cls)["connect"]
    patches = Patches()
    if ours_first:
        patches.wrap(cls, "connect", ours)
        wrapt.wrap_function_wrapper(cls, "connect", theirs)
        assert cls.connect() == ("theirs", ("ours", cls))
    else:
        wrapt.wrap_function_wrapper(cls, "connect", theirs)
        patches.wrap(cls, "connect", ours)
        assert cls.connect() == ("ours", ("theirs", cls))
    patches.restore()
    sub = type("Sub", (cls,), {})
    assert sub.connect() == ("theirs", sub)
    assert vars(cls)["connect"].__wrapped__ is original


def test_wrap_named_resolves_the_owner(monkeypatch: pytest.MonkeyPatch) -> None:
    """wrap_named("module", "Class.attr") wraps the class's attribute, as wrapt resolves it."""
    module = types.ModuleType("fake_driver")
    cls = make_class()
    module.Client = cls  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_driver", module)
    patches = Patches()
    patches.wrap_named("fake_driver", "Client.send", ours)
    assert cls().send(2) == ("ours", 2)
    patches.restore()
    assert cls().send(2) == 2


def test_keep_repairs_a_classmethod_that_unwrap_left_bound() -> None:
    """A kept classmethod comes back after OpenTelemetry's unwrap left it a method bound to its class."""
    cls = make_class()
    original = vars(cls)["connect"]
    kept = Patches()
    kept.keep(cls, "connect")
    wrapt.wrap_function_wrapper(cls, "connect", theirs)
    unwrap(cls, "connect")
    sub = type("Sub", (cls,), {})
    assert sub.connect() is cls  # what unwrap leaves: the subclass builds its base
    kept.restore()
    assert vars(cls)["connect"] is original
    assert sub.connect() is sub


def test_keep_leaves_a_wrapper_that_is_still_there() -> None:
    """A kept attribute that someone still wraps is theirs to restore: restore() leaves it."""
    cls = make_class()
    kept = Patches()
    kept.keep(cls, "connect")
    wrapt.wrap_function_wrapper(cls, "connect", theirs)
    wrapper = vars(cls)["connect"]
    kept.restore()
    assert vars(cls)["connect"] is wrapper


def test_keep_notes_what_is_beneath_the_wrappers() -> None:
    """keep() notes the classmethod beneath wrappers already on, not the wrappers."""
    cls = make_class()
    original = vars(cls)["connect"]
    patches, kept = Patches(), Patches()
    patches.wrap(cls, "connect", ours)
    kept.keep(cls, "connect")
    patches.restore()
    cls.connect = cls.connect  # type: ignore[method-assign] # a bound method, as unwrap leaves it
    kept.restore()
    assert vars(cls)["connect"] is original
