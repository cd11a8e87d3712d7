"""Warm start from what the offline optimisation really leaves: skopt pickles, names in any case."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest

from dataflow.domain import dialects
from dataflow.domain import optimizer as o
from dataflow.domain.errors import ConfigError
from dataflow.tools import warmstart
from tests.support import SHARED

RTCEF = dialects.PROFILES["rtcef"]
PICKLES = SHARED / "vendor" / "rtcef" / "data" / "saved_models" / "optimisation"
PORT_MONTH_1 = PICKLES / "skopt_model_enteringAreaGPH_0_sv_nnv_m_nt_c_month_trm_1.pkl"


def test_a_maritime_skopt_pickle_becomes_a_document_the_rtcef_profile_reads(
    tmp_path: Path,
) -> None:
    result = warmstart.load_result(PORT_MONTH_1)
    output = tmp_path / "warm.json"

    assert warmstart.main([str(PORT_MONTH_1), "-o", str(output)]) == 0

    document = json.loads(output.read_text())
    assert document["dimensions"] == [
        {"name": "Order", "kind": "Integer", "bounds": [1, 5]},
        {"name": "Confidence", "kind": "Real", "bounds": [0.0, 1.0]},
        {"name": "Pmin", "kind": "Real", "bounds": [0.0001, 0.01]},
        {"name": "gamma", "kind": "Real", "bounds": [0.0001, 0.01]},
    ]
    assert document["x_iters"] == [[int(r[0]), *map(float, r[1:])] for r in result.x_iters]
    assert document["func_vals"] == [float(y) for y in result.func_vals]
    observations = o.observations_from_warm_start(RTCEF, document)
    order, confidence, pmin, gamma = result.x_iters[-1]
    assert observations[-1] == o.Observation(
        (confidence, order, pmin, gamma), float(result.func_vals[-1])
    )
    assert len(observations) == len(result.x_iters) == 32


def test_every_vendored_maritime_pickle_converts() -> None:
    pickles = sorted(PICKLES.glob("skopt_model_*.pkl"))
    assert len(pickles) == 12
    for path in pickles:
        document = warmstart.document_from_result(warmstart.load_result(path))
        assert warmstart.check(document, RTCEF) == len(document["x_iters"]) > 0


def test_dimension_names_match_without_regard_to_case() -> None:
    document = {
        "dimensions": [{"name": n} for n in ("GAMMA", "Pmin", "Order", "confidence")],
        "x_iters": [[0.002, 0.003, 4, 0.5]],
        "func_vals": [-0.7],
    }
    assert o.observations_from_warm_start(RTCEF, document) == (
        o.Observation((0.5, 4, 0.003, 0.002), -0.7),
    )


def test_names_that_differ_only_in_case_are_refused_not_guessed() -> None:
    document = {
        "dimensions": [{"name": n} for n in ("order", "Order", "pmin", "gamma")],
        "x_iters": [[1, 2, 0.003, 0.002]],
        "func_vals": [-0.7],
    }
    with pytest.raises(ConfigError, match="do not match"):
        o.observations_from_warm_start(RTCEF, document)


def test_a_result_without_dimension_names_is_refused() -> None:
    space = SimpleNamespace(dimensions=[SimpleNamespace(name=None, bounds=(0.0, 1.0))])
    result = SimpleNamespace(space=space, x_iters=[[0.5]], func_vals=[-0.1])
    with pytest.raises(ConfigError, match=r"^dimension 0 has no name: names are what match it$"):
        warmstart.document_from_result(result)


def test_a_file_that_is_not_a_result_exits_2_and_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "not-a-result.pkl"
    path.write_bytes(pickle.dumps({"x": 1}))

    assert warmstart.main([str(path)]) == 2

    assert capsys.readouterr().err.splitlines() == [
        warmstart.TRUST_WARNING,
        f"warmstart: {path}: not a scikit-optimize OptimizeResult"
        " ('dict' object has no attribute 'space')",
    ]


def test_a_truncated_file_exits_2_and_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "truncated.pkl"
    path.write_bytes(PORT_MONTH_1.read_bytes()[:100])

    assert warmstart.main([str(path)]) == 2

    assert capsys.readouterr().err.splitlines() == [
        warmstart.TRUST_WARNING,
        f"warmstart: {path}: pickle data was truncated",
    ]
