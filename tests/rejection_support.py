"""What every contract suite checks of a rejection raised inside a patched client
(shared by tests/instrumentation, tests/db and tests/store)."""

from __future__ import annotations

import pickle

import otelres

__all__ = ["check_rejection"]


def check_rejection(error: BaseException, breaker: str, module: str) -> None:
    """``error`` is a rejection by ``breaker``, of the class named ``CircuitOpenError`` in
    ``module``, whose figures, message and pickled copy are CircuitOpenError's.
    """
    assert isinstance(error, otelres.CircuitOpenError)
    assert (type(error).__module__, type(error).__qualname__) == (module, "CircuitOpenError")
    assert error.args == (breaker, error.retry_after)
    assert error.breaker == breaker
    assert str(error) == f"circuit {breaker!r} is open; next probe in {error.retry_after:.3f} s"
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes
    assert (type(copy), copy.args, str(copy)) == (type(error), error.args, str(error))
