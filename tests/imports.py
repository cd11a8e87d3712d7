"""The package's import graph, drawn from the source (``just imports``), and its layering rule.

Layers, lowest first: ``domain`` (pure) < ``adapters`` (the outside world) <
``flow`` (the Bytewax wiring) and ``sim`` (the stand-in services) < ``tools``
(command lines). A module imports only from its own layer or lower ones; the
graph has no cycles; and what the image ships (``SHIPPED``) never reaches what it
leaves out (the stand-ins, the demo and its process helper).
``tests/unit/test_layers.py`` checks all three.

Imports are read from the source: ``import a.b``, ``from a import b``, relative
ones, and module names written as strings (``"dataflow.flow:get_flow()"``).
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dataflow"
#: Each layer and the layers it may import from (its own included).
MAY_IMPORT: dict[str, set[str]] = {
    "domain": {"domain"},
    "adapters": {"domain", "adapters"},
    "flow": {"domain", "adapters", "flow"},
    "tools": {"domain", "adapters", "flow", "tools"},
    "sim": {"domain", "adapters", "flow", "tools", "sim"},
}
#: What the wheel, and so the image, leaves out: the packages ``pyproject.toml`` excludes.
NOT_SHIPPED = tuple(
    name for name in tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"][
        "setuptools"]["packages"]["find"]["exclude"] if not name.endswith("*")
)  # fmt: skip
_MODULE_TEXT = re.compile(r"^(dataflow(?:\.[a-z_]+)+)(?::.*)?$")


def module_name(path: Path, package: Path = PACKAGE) -> str:
    """``dataflow/domain/dialects/seed.py`` -> ``dataflow.domain.dialects.seed``."""
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    """The layer a ``dataflow`` module belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "flow"


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package."""
    return {module_name(path, package): path for path in sorted(package.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> Iterator[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, up level - 1
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            # ``from dataflow.domain import machine`` imports the submodule when there is one.
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            # Text naming a module exactly (``python -m``, ``bytewax.run``), not a logger's name.
            match = _MODULE_TEXT.match(node.value)
            names = [match.group(1)] if match and match.group(1) in known else []
        for found in names:
            while found and found not in known:
                found = found.rpartition(".")[0]
            if found.startswith("dataflow"):
                yield found


def graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (packages' ``__init__`` included)."""
    found = modules(package)
    known = set(found)
    return {name: set(_imports(name, path, known)) - {name} for name, path in found.items()}


def violations(edges: dict[str, set[str]]) -> list[str]:
    """Every import that goes up a layer."""
    return sorted(
        f"{source} -> {target}"
        for source, targets in edges.items()
        for target in targets
        if layer(target) not in MAY_IMPORT[layer(source)]
    )


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The modules of every import cycle (strongly connected components of more than one)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def connect(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for start in sorted(edges):
        if start not in index:
            connect(start)
    return sorted(found)


def unshipped(edges: dict[str, set[str]]) -> list[str]:
    """Every path from what the image ships to what it leaves out, as ``a -> ... -> b``."""
    shipped = [m for m in edges if not m.startswith(NOT_SHIPPED)]
    paths = []
    for start in sorted(shipped):
        seen, frontier = {start: [start]}, [start]
        while frontier:
            node = frontier.pop()
            for target in sorted(edges.get(node, ())):
                if target in seen:
                    continue
                seen[target] = [*seen[node], target]
                if target.startswith(NOT_SHIPPED):
                    paths.append(" -> ".join(seen[target]))
                else:
                    frontier.append(target)
    return paths


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
    problems = violations(edges) + [" <-> ".join(c) for c in cycles(edges)] + unshipped(edges)
    for problem in problems:
        print(f"layering: {problem}", file=sys.stderr)
    sys.exit(1 if problems else 0)
