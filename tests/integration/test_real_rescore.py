"""Re-scoring with the real Wayeb: ``loadAndTest`` over py4j, as the factory calls it.

No broker: a Wayeb JVM of its own (``service`` mode, ``rescore.PORTS``), the services'
Python 3.9 environment and the converted maritime stream, built as the loop builds
them. The model is the engine's vendored starting model (read, copied into the run).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.rtcef import loop, rescore, stack
from tests.rtcef.rescore import Model, Round

#: No broker, but Wayeb built, the services' Python 3.9 and a JVM: the real-loop tier's parts.
pytestmark = pytest.mark.integration

STARTING_MODEL = (
    stack.VENDOR / "data" / "saved_models" / "forecasting"
    / "wayeb_model_enteringAreaGPH_0_sv_nnv_c_month_trm_1.spst"
)  # fmt: skip
BEGUN = 1454308261
CONFIDENCE = loop.INITIAL_PARAMS["confidence"]


def test_a_rounds_models_are_scored_by_wayeb_on_the_weeks_after_it_began(tmp_path: Path) -> None:
    loop.prepare(tmp_path)  # Wayeb, the Python 3.9 environment, tmp_path/stream.json
    run = tmp_path / "ours-1"
    (run / "models").mkdir(parents=True)
    (run / "traffic").mkdir()
    for model_id in (7, 8):  # the step's model and the one built at finalise
        shutil.copyfile(STARTING_MODEL, run / "models" / f"wayeb_{model_id}.model")
    params = json.dumps(loop.INITIAL_PARAMS)
    commands = [
        {"id": 4, "type": "opt_initialise", "optimisation_id": 0, "timestamp": BEGUN, "best_i": -1},
        {"id": 5, "type": "opt_step", "optimisation_id": 0, "timestamp": BEGUN, "best_i": -1},
        {"id": 6, "type": "opt_finalise", "optimisation_id": 0, "timestamp": BEGUN, "best_i": 0},
    ]
    reports = [
        {
            "reply_id": 5,
            "model_id": 7,
            "params_dict": params,
            "metrics": json.dumps({"f_val": -0.5}),
        },
        {"reply_id": 6, "model_id": 8, "params_dict": params, "metrics": ""},
    ]
    for name, values in (("factory_commands", commands), ("factory_reports", reports)):
        (run / "traffic" / f"{name}.jsonl").write_text(
            "".join(json.dumps(v) + "\n" for v in values)
        )
    window = tmp_path / "expected-window.json"
    records = rescore.write_window(tmp_path / "stream.json", BEGUN, 2, window)

    [scored] = rescore.rescore([(run, "ours-1-t")], weeks=2, steps=True, work=tmp_path / "rescore")

    step = Model(7, run / "models" / "wayeb_7.model", CONFIDENCE, -0.5)
    finalised = Model(8, run / "models" / "wayeb_8.model", CONFIDENCE, -0.5)
    assert scored.round == Round("ours-1-t", 0, BEGUN, (step,), 0, finalised)
    assert scored.records == records > 2000  # two weeks of the vessel's fixes
    # One model, one window: the same score both times, and a forecaster's, not a constant's.
    assert scored.step_mccs == (scored.finalised_mcc,)
    assert 0.3 < scored.finalised_mcc < 1.0
    assert not stack.port_open(rescore.PORTS[0])  # the JVM was stopped
