"""The package's layout: no import circle between otelres's modules, and the core imports
neither the integrations, the server side nor telemetry (arrows point inward)."""

from __future__ import annotations

import ast
from pathlib import Path

import otelres

ROOT = Path(otelres.__file__).parent
#: The core: decisions without I/O; it must not reach outward.
CORE = {
    "otelres._backoff",
    "otelres._breaker",
    "otelres._budget",
    "otelres._clock",
    "otelres._config",
    "otelres._deadline",
    "otelres._degrade",
    "otelres._errors",
    "otelres._events",
    "otelres._fallback",
    "otelres._flow",
    "otelres._policy",
    "otelres._registry",
    "otelres._resilience",
    "otelres._window",
}
OUTWARD = ("otelres.instrumentation", "otelres.server", "otelres.telemetry", "otelres.demo")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in ROOT.rglob("*.py")}


def is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def top_level_imports(name: str) -> set[str]:
    """The otelres modules ``name`` imports when it is imported (not under TYPE_CHECKING,
    not inside functions); an import of a package's name resolves to the submodule when
    there is one (``from . import _events``).
    """
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    package = name if is_package(name) else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                visit(node.orelse)
                continue
            if isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(node.orelse)
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
                continue
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names if alias.name.startswith("otelres"))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    source = f"{base}.{node.module}" if node.module else base
                else:
                    source = node.module or ""
                if not source.startswith("otelres"):
                    continue
                for alias in node.names:
                    sub = f"{source}.{alias.name}"
                    found.add(sub if sub in MODULES else source)

    visit(tree.body)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: top_level_imports(name) for name in MODULES}


def test_no_import_circle() -> None:
    """No chain of module-level imports leads from an otelres module back to itself
    (a package's ``__init__`` re-exporting its modules is not counted as a step)."""
    edges = {
        name: {m for m in deps if not is_package(m)} for name, deps in GRAPH.items() if not is_package(name)
    }
    cycles: list[list[str]] = []

    def walk(node: str, path: list[str], seen: set[str]) -> None:
        for nxt in sorted(edges.get(node, ())):
            if nxt == path[0]:
                cycles.append([*path, nxt])
            elif nxt not in seen:
                seen.add(nxt)
                walk(nxt, [*path, nxt], seen)

    for start in sorted(edges):
        walk(start, [start], {start})
    assert cycles == []


def test_core_does_not_import_outward() -> None:
    """The core imports no integration, server, telemetry or demo module."""
    reached = {
        (name, dep) for name in CORE for dep in GRAPH[name] if dep.startswith(OUTWARD) or dep == "otelres"
    }
    assert reached == set()
