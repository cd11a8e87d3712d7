"""Several sessions at once (multi-model mode) on 2 workers and on 2 processes; scaling."""

from __future__ import annotations

from collections import defaultdict
from functools import partial

import pytest

from dataflow.adapters import recovery
from dataflow.adapters.kafka import SESSION_HEADER
from dataflow.domain import messages as msg
from dataflow.domain.messages import Instruction, InstructionKind
from dataflow.tools.inspection import SessionView
from tests.integration.harness import Cluster, factory
from tests.support import wait_for_snapshots

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
        # Command ids encode the session: counter * 3 + index of the model.
        assert [(c.id, c.type) for c in by_key[model]] == [
            (f"cmd-{n * 3 + index}", kind)
            for n, kind in enumerate(["opt_initialise", "opt_step", "opt_step", "opt_finalise"])
        ]
        assert {c.timestamp for c in by_key[model]} == {100 + index}
    syncs = wiring.syncs_sent(idle=1.0, timeout=30)
    assert sorted((s.timestamp, s.type) for s in syncs) == [
        (100, "pause"), (100, "play"), (101, "pause"), (101, "play"), (102, "pause"), (102, "play"),
    ]  # fmt: skip


KEYS = ("m1", "m2", "m3", "m4", "m5", "m6")


def _ended(round_: int, views: list[SessionView]) -> bool:
    """Every session's newest snapshot is idle after round ``round_`` (0-based)."""
    return sorted(v.key for v in views if v.phase == "IDLE" and v.round > round_) == sorted(KEYS)


def test_the_process_count_goes_3_2_4_and_every_session_resumes_where_it_was(
    wiring_factory, tmp_path
) -> None:
    """Per-pod volumes: pods started, stopped, partitions moved, more or fewer pods started."""
    wiring = wiring_factory("seed", partitions=2, OPTIMISER_BUDGET="2",
                            SESSION_KEYS=",".join(KEYS))  # fmt: skip
    cluster = Cluster(wiring, tmp_path, partitions=3)
    try:
        with factory(wiring):
            for round_, processes in enumerate((3, 2, 4)):
                if round_:  # part-2 goes to pod 0's volume (3 -> 2), then back to pod 2's
                    assert recovery.rebalance(cluster.volumes(max(3, processes)), 3, processes)
                cluster.start(processes)
                for index, key in enumerate(KEYS):
                    ts = 1000 * (round_ + 1) + index
                    wiring.send_instruction(Instruction(InstructionKind.OPTIMIZE, ts, model_id=key))
                wiring.wait_for_plays(len(KEYS) * (round_ + 1), timeout=240)
                # A snapshot holds every session's round ended (its play is on the topic).
                wait_for_snapshots(cluster.volumes(max(3, processes)), partial(_ended, round_))
                cluster.stop()
    finally:
        cluster.stop()

    commands: dict[str, list[msg.FactoryCommand]] = defaultdict(list)
    for message in wiring.read(wiring.commands, idle=2.0, timeout=30):
        command = msg.decode_command(message.value())
        assert isinstance(command, msg.FactoryCommand)
        commands[dict(message.headers())[SESSION_HEADER].decode()].append(command)
    kinds = ["opt_initialise", "opt_step", "opt_step", "opt_finalise"]
    for index, key in enumerate(KEYS):
        # Each session's counters went on across the three clusters: command numbers
        # 0-11 (times 6 keys, plus the key's index), optimisation ids 0, 1, 2.
        assert [(c.id, c.type, c.optimisation_id, c.timestamp) for c in commands[key]] == [
            (f"cmd-{n * len(KEYS) + index}", kinds[n % 4], n // 4, 1000 * (n // 4 + 1) + index)
            for n in range(12)
        ], cluster.log_text()[-3000:]
    assert sorted(p.name for p in cluster.volume(0).glob("part-*.sqlite3")) == ["part-0.sqlite3"]
    assert sorted(p.name for p in cluster.volume(2).glob("part-*.sqlite3")) == ["part-2.sqlite3"]
    assert not list(cluster.volume(3).glob("part-*.sqlite3"))
