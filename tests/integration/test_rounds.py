"""Full rounds through a real broker, driven by a simulated factory, in both dialects."""

from __future__ import annotations

import json

import pytest

from dataflow.domain import messages as msg
from dataflow.domain.messages import Instruction, InstructionKind
from tests.integration.harness import factory

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("dialect", ["seed", "rtcef"])
def test_an_optimize_round_then_a_retrain_run_end_to_end(
    dialect, wiring_factory, controller_factory
) -> None:
    wiring = wiring_factory(dialect, OPTIMISER_BUDGET="4")
    controller = controller_factory(wiring)
    ids = [msg.command_id(dialect, n) for n in range(7)]  # type: ignore[arg-type]
    with factory(wiring) as simulator:
        controller.start()
        wiring.send_instruction(Instruction(InstructionKind.OPTIMIZE, 1000, 1))
        wiring.wait_for_plays(1)
        wiring.send_instruction(Instruction(InstructionKind.RETRAIN, 2000, 2))
        syncs = wiring.wait_for_plays(2)
    controller.stop()

    commands = wiring.commands_sent(count=7, timeout=30)
    steps = [c for c in commands if c.type == "opt_step"]
    names = wiring.profile.names
    scores = [simulator.surface(tuple(zip(names, json.loads(c.params)["params"], strict=True)))
              for c in steps]  # fmt: skip
    best_i = scores.index(min(scores))
    summary = [(c.id, c.type, c.optimisation_id, c.train_id, c.timestamp, c.best_i)
               for c in commands]  # fmt: skip
    assert summary == [
        (ids[0], "opt_initialise", 0, -1, 1000, -1),
        (ids[1], "opt_step", 0, -1, 1000, -1),
        (ids[2], "opt_step", 0, -1, 1000, -1),
        (ids[3], "opt_step", 0, -1, 1000, -1),
        (ids[4], "opt_step", 0, -1, 1000, -1),
        (ids[5], "opt_finalise", 0, -1, 1000, best_i),
        (ids[6], "train", -1, 0, 2000, -1),
    ]
    winner = dict(zip(wiring.profile.names, json.loads(steps[best_i].params)["params"],
                      strict=True))  # fmt: skip
    assert json.loads(commands[6].params) == {"params": winner}
    # Model ids: one per step (0..3), the finalise builds model 4, the train model 5.
    assert syncs == [
        msg.SyncMessage("pause", 1000, -1),
        msg.SyncMessage("play", 1000, 4),
        msg.SyncMessage("pause", 2000, -1),
        msg.SyncMessage("play", 2000, 5),
    ]
    assert wiring.read(wiring.dead_letters, idle=1.0, timeout=5) == []
