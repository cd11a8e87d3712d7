"""The package's import graph, drawn from the source (``just imports``), and its layering rule.

Layers, lowest first: ``domain`` (pure) < ``adapters`` (the outside world) <
``flow`` (the Bytewax wiring) and ``sim`` (the stand-in services) < ``tools``
(command lines). A module imports only from its own layer or lower ones; the
graph has no cycles. ``tests/unit/test_layers.py`` checks both.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dataflow"
#: Each layer and the layers it may import from (its own included).
MAY_IMPORT: dict[str, set[str]] = {
    "domain": {"domain"},
    "adapters": {"domain", "adapters"},
    "flow": {"domain", "adapters", "flow"},
    "sim": {"domain", "adapters", "sim"},
    "tools": {"domain", "adapters", "sim", "tools"},
}


def module_name(path: Path) -> str:
    """``dataflow/domain/dialects/seed.py`` -> ``dataflow.domain.dialects.seed``."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    """The layer a ``dataflow`` module belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "flow"


def modules() -> dict[str, Path]:
    """Every module of the package."""
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, known: set[str]) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from dataflow.domain import machine`` imports the submodule when there is one.
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name.startswith("dataflow"):
                yield name


def graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (packages' ``__init__`` included)."""
    found = modules()
    known = set(found)
    return {name: set(_imports(path, known)) - {name} for name, path in found.items()}


def violations(edges: dict[str, set[str]]) -> list[str]:
    """Every import that goes up a layer."""
    return sorted(
        f"{source} -> {target}"
        for source, targets in edges.items()
        for target in targets
        if layer(target) not in MAY_IMPORT[layer(source)]
    )


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles (each found once, from its first module in sorted order)."""
    found: list[list[str]] = []
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        for target in sorted(edges.get(node, ())):
            if target in path:
                cycle = path[path.index(target) :]
                if min(cycle) == cycle[0]:
                    found.append(cycle)
            elif target not in done:
                visit(target, [*path, target])
        done.add(node)

    for start in sorted(edges):
        visit(start, [start])
    return found


def mermaid(edges: dict[str, set[str]]) -> str:
    """The graph as a Mermaid flowchart, one subgraph per layer."""
    lines = ["flowchart BT"]
    for name in MAY_IMPORT:
        members = sorted(m for m in edges if layer(m) == name)
        lines.append(f"    subgraph {name}")
        lines += [f"        {m.replace('.', '_')}[{m.removeprefix('dataflow.')}]" for m in members]
        lines.append("    end")
    for source in sorted(edges):
        lines += [f"    {source.replace('.', '_')} --> {target.replace('.', '_')}"
                  for target in sorted(edges[source])]  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    edges = graph()
    print(mermaid(edges), end="")
    fan_in = {m: sum(m in targets for targets in edges.values()) for m in edges}
    print(f"%% {len(edges)} modules, {sum(map(len, edges.values()))} imports; "
          f"most imported: {', '.join(sorted(fan_in, key=fan_in.__getitem__)[-3:])}",
          file=sys.stderr)  # fmt: skip
    problems = violations(edges) + [" -> ".join(c) for c in cycles(edges)]
    for problem in problems:
        print(f"layering: {problem}", file=sys.stderr)
    sys.exit(1 if problems else 0)
