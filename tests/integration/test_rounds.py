"""Full rounds through a real broker, driven by a simulated factory, in both dialects."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from dataflow.domain import dialects
from dataflow.domain import messages as msg
from dataflow.domain.messages import Instruction, InstructionKind
from tests.integration.harness import factory
from tests.kafka.broker import free_port

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("dialect", ["seed", "rtcef"])
def test_an_optimize_round_then_a_retrain_run_end_to_end(
    dialect, wiring_factory, controller_factory, tmp_path: Path
) -> None:
    port = free_port()
    wiring = wiring_factory(dialect, OPTIMISER_BUDGET="4", BYTEWAX_DATAFLOW_API_ENABLED="1",
                            BYTEWAX_DATAFLOW_API_PORT=str(port),
                            BYTEWAX_DATAFLOW_API_CACHE_PATH=str(tmp_path))  # fmt: skip
    controller = controller_factory(wiring)
    ids = [dialects.get(dialect).command_id(n) for n in range(7)]  # type: ignore[arg-type]
    with factory(wiring) as simulator:
        controller.start()
        wiring.send_instruction(Instruction(InstructionKind.OPTIMIZE, 1000, 1))
        wiring.wait_for_plays(1)
        wiring.send_instruction(Instruction(InstructionKind.RETRAIN, 2000, 2))
        syncs = wiring.wait_for_plays(2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
            metrics = page.read().decode()
    controller.stop()

    # No client is handed settings it does not understand (librdkafka's CONFWARN lines).
    assert [line for line in controller.log_text().splitlines() if "CONFWARN" in line] == []
    for line in [
        'controller_rounds_started_total{key="controller",kind="OPTIMIZE"} 1.0',
        'controller_rounds_started_total{key="controller",kind="RETRAIN"} 1.0',
        'controller_rounds_completed_total{key="controller",kind="OPTIMIZE"} 1.0',
        'controller_rounds_completed_total{key="controller",kind="RETRAIN"} 1.0',
        'controller_steps_total{key="controller"} 4.0',
        'controller_session_phase{key="controller",phase="IDLE"} 1.0',
        'controller_session_phase{key="controller",phase="WAITING_FOR_REPORT"} 0.0',
        'controller_engine_paused_since_timestamp_seconds{key="controller"} 0.0',
        'controller_instructions_queued{key="controller"} 0.0',
    ]:
        assert line in metrics.splitlines()
    # Every hop that sent a command or a sync was timed; the round limit follows the settings.
    [hops] = [float(line.split()[1]) for line in metrics.splitlines()
              if line.startswith("controller_hop_seconds_count ")]  # fmt: skip
    # The OPTIMIZE, its 4 step reports, the finalise's report, the RETRAIN and its report.
    assert hops == 8
    assert any(line.startswith("controller_round_limit_seconds ") for line in metrics.splitlines())
    # The inputs end their epochs together (``-s 1``; unaligned they drift ~20 ms an epoch).
    [lag] = [float(line.split()[1]) for line in metrics.splitlines()
             if line.startswith("controller_input_epoch_lag_seconds ")]  # fmt: skip
    assert 0 <= lag < 0.25
    # ... on the interval bytewax.run was given (``-s 1``).
    starts = [e for e in controller.log_lines() if e.get("msg") == "controller starting"]
    assert [e["epoch_interval_s"] for e in starts] == [1.0]
    steps = [(e["key"], e["round"], e["step"]) for e in controller.log_lines()
             if e.get("event") == "step"]  # fmt: skip
    assert steps == [("controller", 1, n) for n in range(4)]

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


def test_the_pause_is_on_the_engine_topic_before_the_rounds_first_command_is_sent(
    wiring_factory, controller_factory
) -> None:
    wiring = wiring_factory("rtcef", OPTIMISER_BUDGET="2")
    # The broker stamps each message as it appends it: the order the engine and factory see.
    admin = AdminClient({"bootstrap.servers": wiring.bootstrap})
    append_time = ConfigEntry("message.timestamp.type", "LogAppendTime",
                              incremental_operation=AlterConfigOpType.SET)  # fmt: skip
    resources = [ConfigResource(ConfigResource.Type.TOPIC, topic,
                                incremental_configs=[append_time])
                 for topic in (wiring.sync, wiring.commands)]  # fmt: skip
    for future in admin.incremental_alter_configs(resources).values():
        future.result(timeout=30)
    controller = controller_factory(wiring)
    kinds = [InstructionKind.RETRAIN, InstructionKind.OPTIMIZE, InstructionKind.RETRAIN]
    with factory(wiring):
        controller.start()
        for number, kind in enumerate(kinds, start=1):
            wiring.send_instruction(Instruction(kind, 1000 * number, number))
            wiring.wait_for_plays(number)
    controller.stop()

    pauses = {}
    for message in wiring.read(wiring.sync, idle=1.0, timeout=30):
        sync = wiring.codec.decode_sync(message.value())
        assert isinstance(sync, msg.SyncMessage)
        if sync.type == "pause":
            pauses.setdefault(sync.timestamp, message.timestamp()[1])
    first_commands = {}
    for message in wiring.read(wiring.commands, idle=1.0, timeout=30):
        command = wiring.codec.decode_command(message.value())
        assert isinstance(command, msg.FactoryCommand)
        first_commands.setdefault(command.timestamp, message.timestamp()[1])
    assert sorted(pauses) == sorted(first_commands) == [1000, 2000, 3000]
    late = {ts: first_commands[ts] - pauses[ts] for ts in pauses if first_commands[ts] < pauses[ts]}
    assert late == {}  # no round's first command was appended before its pause
