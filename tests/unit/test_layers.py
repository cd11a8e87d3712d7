"""The package's layers: no import goes up a layer, and no module imports itself in a circle."""

from __future__ import annotations

from pathlib import Path

from tests import imports


def test_no_module_imports_from_a_higher_layer() -> None:
    assert imports.violations(imports.graph()) == []


def test_the_import_graph_has_no_cycles() -> None:
    assert imports.cycles(imports.graph()) == []


def test_what_the_image_ships_never_imports_what_it_leaves_out() -> None:
    assert imports.unshipped(imports.graph()) == []


def test_the_rule_sees_an_upward_import_and_a_cycle() -> None:
    edges = {
        "dataflow.domain.machine": {"dataflow.adapters.kafka"},
        "dataflow.adapters.kafka": {"dataflow.adapters.config"},
        "dataflow.adapters.config": {"dataflow.adapters.kafka"},
    }
    assert imports.violations(edges) == ["dataflow.domain.machine -> dataflow.adapters.kafka"]
    assert imports.cycles(edges) == [["dataflow.adapters.config", "dataflow.adapters.kafka"]]


def test_a_cycle_entered_from_outside_is_found() -> None:
    edges = {"a": {"c"}, "c": {"b"}, "b": {"c"}}
    assert imports.cycles(edges) == [["b", "c"]]


def test_relative_and_string_imports_are_edges(tmp_path: Path) -> None:
    package = tmp_path / "dataflow"
    (package / "domain").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "flow.py").write_text("")
    (package / "domain" / "__init__.py").write_text("")
    (package / "domain" / "machine.py").write_text(
        "from ..flow import x\nTARGET = 'dataflow.flow:get'\n"
    )

    found = imports.graph(package)

    assert found["dataflow.domain.machine"] == {"dataflow.flow"}
    assert imports.violations(found) == ["dataflow.domain.machine -> dataflow.flow"]


def test_a_shipped_tool_reaching_the_stand_ins_is_found() -> None:
    edges = {"dataflow.tools.probe": {"dataflow.adapters.kafka"},
             "dataflow.adapters.kafka": {"dataflow.sim.runner"}}  # fmt: skip
    assert imports.unshipped(edges) == [
        "dataflow.adapters.kafka -> dataflow.sim.runner",
        "dataflow.tools.probe -> dataflow.adapters.kafka -> dataflow.sim.runner",
    ]


def test_every_module_belongs_to_a_layer() -> None:
    assert {imports.layer(m) for m in imports.graph()} <= set(imports.MAY_IMPORT)
