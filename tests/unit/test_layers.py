"""The package's layers: no import goes up a layer, and no module imports itself in a circle."""

from __future__ import annotations

from tests import imports


def test_no_module_imports_from_a_higher_layer() -> None:
    assert imports.violations(imports.graph()) == []


def test_the_import_graph_has_no_cycles() -> None:
    assert imports.cycles(imports.graph()) == []


def test_the_rule_sees_an_upward_import_and_a_cycle() -> None:
    edges = {
        "dataflow.domain.machine": {"dataflow.adapters.kafka"},
        "dataflow.adapters.kafka": {"dataflow.adapters.config"},
        "dataflow.adapters.config": {"dataflow.adapters.kafka"},
    }
    assert imports.violations(edges) == ["dataflow.domain.machine -> dataflow.adapters.kafka"]
    assert imports.cycles(edges) == [["dataflow.adapters.config", "dataflow.adapters.kafka"]]


def test_every_module_belongs_to_a_layer() -> None:
    assert {imports.layer(m) for m in imports.graph()} <= set(imports.MAY_IMPORT)
