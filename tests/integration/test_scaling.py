"""Several sessions at once (multi-model mode) on 2 workers and on 2 processes."""

from __future__ import annotations

from collections import defaultdict

import pytest

from dataflow.domain import messages as msg
from dataflow.domain.messages import Instruction, InstructionKind
from dataflow.kafka import SESSION_HEADER
from tests.integration.harness import factory

pytestmark = pytest.mark.integration

MODELS = ("m1", "m2", "m3")


@pytest.mark.parametrize(("workers", "processes"), [(2, 1), (1, 2)])
def test_three_sessions_run_their_rounds_side_by_side(
    workers, processes, wiring_factory, controller_factory
) -> None:
    wiring = wiring_factory("seed", partitions=2, OPTIMISER_BUDGET="2",
                            SESSION_KEYS=",".join(MODELS))  # fmt: skip
    controller = controller_factory(wiring)
    with factory(wiring):
        controller.start(workers=workers, processes=processes)
        for ts, model in enumerate(MODELS, start=100):
            wiring.send_instruction(Instruction(InstructionKind.OPTIMIZE, ts, model_id=model))
        wiring.wait_for_plays(3, timeout=180)
    controller.stop()

    by_key: dict[str, list[msg.FactoryCommand]] = defaultdict(list)
    for message in wiring.read(wiring.commands, idle=2.0, timeout=30):
        command = msg.decode_command(message.value())
        assert isinstance(command, msg.FactoryCommand)
        by_key[dict(message.headers())[SESSION_HEADER].decode()].append(command)
    for index, model in enumerate(MODELS):
        unique = list(dict.fromkeys(by_key[model]))
        # Command ids encode the session: counter * 3 + index of the model.
        assert [(c.id, c.type) for c in unique] == [
            (f"cmd-{n * 3 + index}", kind)
            for n, kind in enumerate(["opt_initialise", "opt_step", "opt_step", "opt_finalise"])
        ]
        assert {c.timestamp for c in unique} == {100 + index}
    syncs = wiring.syncs_sent(unique=True, idle=1.0, timeout=30)
    assert sorted((s.timestamp, s.type) for s in syncs) == [
        (100, "pause"), (100, "play"), (101, "pause"), (101, "play"), (102, "pause"), (102, "play"),
    ]  # fmt: skip
