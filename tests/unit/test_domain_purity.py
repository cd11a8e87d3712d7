"""The domain does no I/O: its own imports are allow-listed, and a round runs with I/O trapped."""

from __future__ import annotations

import ast
import builtins
import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import dataflow.domain
from dataflow.domain import machine as m
from dataflow.domain.messages import InstructionKind
from tests.support import instruction, report, seed_config

DOMAIN = Path(dataflow.domain.__file__).parent
# Pure standard-library modules and the numeric libraries; nothing that talks to the world.
ALLOWED = {
    "__future__", "collections", "dataclasses", "enum", "functools", "hashlib", "itertools",
    "json", "math", "re", "typing", "warnings",
    "msgspec", "numpy", "scipy", "skopt", "dataflow",
}  # fmt: skip


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("path", sorted(DOMAIN.rglob("*.py")), ids=lambda p: p.name)
def test_each_domain_module_imports_only_allow_listed_pure_modules(path: Path) -> None:
    assert _imported_roots(path) - ALLOWED == set()


def test_the_domain_imports_only_dataflow_domain_from_this_project() -> None:
    for path in DOMAIN.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dataflow"):
                assert (node.module or "").startswith("dataflow.domain"), (path.name, node.module)


def test_importing_the_domain_loads_no_kafka_bytewax_or_metrics_client() -> None:
    probe = (
        "import sys, dataflow.domain.machine, dataflow.domain.messages;"
        "print(sorted(m for m in ('bytewax', 'confluent_kafka', 'prometheus_client')"
        " if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_whole_optimise_round_runs_with_files_sockets_and_clocks_trapped(monkeypatch) -> None:
    config = seed_config()
    state, _ = m.advance(
        None, instruction(InstructionKind.OPTIMIZE), key="controller", config=config
    )

    def trap(*args: object, **kwargs: object) -> None:
        raise AssertionError("the domain performed I/O or read a clock")

    for target, name in [(builtins, "open"), (io, "open"), (os, "open"), (socket, "socket"),
                         (socket, "create_connection"), (time, "time"), (time, "monotonic"),
                         (time, "perf_counter"), (time, "time_ns")]:  # fmt: skip
        monkeypatch.setattr(target, name, trap)
    effects: list[m.Effect] = []
    for number in (1, 2):
        state, out = m.advance(
            state, report(f"cmd-{number}", f_val=-0.1), key="controller", config=config
        )
        effects += out
    state, out = m.advance(state, report("cmd-3", model_id=9), key="controller", config=config)
    effects += out
    monkeypatch.undo()

    assert state is not None
    assert state.phase is m.Phase.IDLE
    assert [e.sync.type for e in effects if isinstance(e, m.SendSync)] == ["play"]
