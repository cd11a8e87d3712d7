"""Crash recovery: SIGKILL mid-round, restart on the same recovery directory, finish the round."""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from dataflow.domain import messages as msg
from dataflow.domain.messages import Instruction, InstructionKind
from tests.data import make_recovery_v1
from tests.integration.harness import Controller, Wiring, factory
from tests.kafka import broker as harness
from tests.kafka import client
from tests.support import wait_for_snapshots

pytestmark = pytest.mark.integration

BUDGET = 5
# Command numbers: 0 opt_initialise, 1..5 opt_step, 6 opt_finalise, then 7 train.
KILL_POINTS = {"before_the_first_step": 1, "mid_steps": 3, "during_finalise": 6}


def _wait_for_command(wiring: Wiring, number: int | str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(c.id == number for c in wiring.commands_sent(idle=0.5, timeout=5)):
            return
    raise AssertionError(f"command {number} never sent")


@pytest.mark.parametrize("kill_at", list(KILL_POINTS))
def test_a_round_killed_mid_way_completes_after_restart_and_loses_no_instruction(
    kill_at, wiring_factory, controller_factory
) -> None:
    wiring = wiring_factory("rtcef", OPTIMISER_BUDGET=str(BUDGET))
    controller = controller_factory(wiring)
    held = KILL_POINTS[kill_at]
    release = threading.Event()

    def hold(command: msg.FactoryCommand) -> None:
        if command.id == held:
            release.wait(120)  # the answer waits until the controller was killed

    with factory(wiring, before=hold):
        controller.start()
        wiring.send_instruction(Instruction(InstructionKind.OPTIMIZE, 1000, 1))
        _wait_for_command(wiring, held)
        # A snapshot holds the round with the held command sent (rtcef ids are the counter).
        wait_for_snapshots(controller.recovery, lambda views: any(
            view.next_command > held for view in views))  # fmt: skip
        controller.kill()
        # Sent while the controller is down: it must be read and queued after restart.
        wiring.send_instruction(Instruction(InstructionKind.RETRAIN, 2000, 2))
        controller.start()
        release.set()
        wiring.wait_for_plays(2, timeout=180)
    controller.stop()

    # Each command once on its topic: the restart wrote none of them again.
    commands = [json.loads(m.value()) for m in wiring.read(wiring.commands, idle=2.0, timeout=30)]
    assert [c["id"] for c in commands] == list(range(8))
    kinds = [c["type"] for c in commands]
    assert kinds == ["opt_initialise"] + ["opt_step"] * BUDGET + ["opt_finalise", "train"]

    reports = [json.loads(m.value()) for m in wiring.read(wiring.reports, idle=1.0, timeout=30)]
    first_model = {}
    for report in reports:
        first_model.setdefault(report["reply_id"], report["model_id"])
    # The replay emitted again what followed the last snapshot; none of it was written twice.
    assert wiring.syncs_sent(idle=1.0, timeout=30) == [
        msg.SyncMessage("pause", 1000, -1),
        msg.SyncMessage("play", 1000, first_model[6]),
        msg.SyncMessage("pause", 2000, -1),
        msg.SyncMessage("play", 2000, first_model[7]),
    ]


def test_a_broker_restart_mid_round_is_ridden_out_and_the_round_completes(
    tmp_path, controller_factory
) -> None:
    own = harness.start(tmp_path / "broker")  # this test restarts it: not the shared one
    try:
        names = [client.unique_topic(p) for p in ("i", "r", "c", "s", "d")]
        client.create_topics(own.bootstrap, names)
        wiring = Wiring(own.bootstrap, "seed", *names, extra={"OPTIMISER_BUDGET": "4"})
        controller = controller_factory(wiring)
        release = threading.Event()

        def hold(command: msg.FactoryCommand) -> None:
            if command.id == "cmd-2":
                release.wait(120)

        with factory(wiring, before=hold):
            controller.start()
            wiring.send_instruction(Instruction(InstructionKind.OPTIMIZE, 1000, 1))
            _wait_for_command(wiring, "cmd-2")
            own.stop()
            time.sleep(3)
            own = harness.start(own.workdir)  # same data and ports
            release.set()
            syncs = wiring.wait_for_plays(1, timeout=180)
        assert controller.running()  # rode it out: no crash, no restart
        controller.stop()

        assert [s.type for s in syncs if s.type == "play"] == ["play"]
        kinds = [c.type for c in dict.fromkeys(wiring.commands_sent(idle=1.0, timeout=30))]
        assert kinds == ["opt_initialise"] + ["opt_step"] * 4 + ["opt_finalise"]
    finally:
        own.stop()


V1_FIXTURE = Path(__file__).resolve().parents[1] / "data" / "recovery-v1"


def test_a_recovery_directory_written_by_state_version_1_resumes_its_round_and_queued_retrain(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    # The store names its input offsets by topic: rebuild the topics it was written against.
    names = make_recovery_v1.TOPICS
    client.delete_topics(kafka_bootstrap, names.values())
    client.create_topics(kafka_bootstrap, names.values())
    inputs = json.loads((V1_FIXTURE / "inputs.json").read_text())
    for variable in ("INSTRUCTION_TOPIC", "REPORT_TOPIC"):
        client.produce(kafka_bootstrap, names[variable], [m.encode() for m in inputs[variable]])
    (tmp_path / "c" / "recovery").mkdir(parents=True)
    shutil.copy(V1_FIXTURE / "part-0.sqlite3", tmp_path / "c" / "recovery")
    wiring = Wiring(kafka_bootstrap, "rtcef", *names.values(), extra={"OPTIMISER_BUDGET": "3"})
    controller = Controller(wiring, tmp_path / "c")
    # The factory's answers, in order: step 2 (sent before the crash, its answer held by the
    # factory until now), step 3, the finalise (model 7), the queued RETRAIN's train (model 8).
    answers = [
        make_recovery_v1.step_report(2, -0.7, 2),
        make_recovery_v1.step_report(3, -0.2, 3),
        b'{"reply_id": 4, "params_dict": "{}", "model_id": 7, "metrics": ""}',
        b'{"reply_id": 5, "params_dict": "{}", "model_id": 8, "metrics": ""}',
    ]
    try:
        controller.start()
        for sent_before, answer in enumerate(answers):
            if sent_before:  # command 2 + sent_before must have been sent first
                _wait_for_command(wiring, 2 + sent_before)
            client.produce(kafka_bootstrap, wiring.reports, [answer])
        syncs = wiring.wait_for_plays(2, timeout=120)
        sent = wiring.commands_sent(idle=1.0, timeout=30)
        letters = wiring.read(wiring.dead_letters, idle=1.0, timeout=10)
    finally:
        controller.stop()
        client.delete_topics(kafka_bootstrap, names.values())

    assert [(c.id, c.type, c.timestamp, c.train_id, c.optimisation_id, c.best_i) for c in sent] == [
        (3, "opt_step", 1000, -1, 0, -1),
        (4, "opt_finalise", 1000, -1, 0, 1),  # step 1 (-0.7) is the best of the three
        (5, "train", 2000, 0, -1, -1),
    ]
    assert syncs == [msg.SyncMessage("play", 1000, 7), msg.SyncMessage("pause", 2000, -1),
                     msg.SyncMessage("play", 2000, 8)]  # fmt: skip
    assert letters == []


def test_a_round_stopped_by_sigterm_mid_way_exits_0_and_completes_after_restart(
    wiring_factory, controller_factory
) -> None:
    wiring = wiring_factory("rtcef", OPTIMISER_BUDGET=str(BUDGET))
    controller = controller_factory(wiring)
    release = threading.Event()

    def hold(command: msg.FactoryCommand) -> None:
        if command.id == 3:
            release.wait(120)  # answered only after the stop and the restart

    with factory(wiring, before=hold):
        controller.start()
        wiring.send_instruction(Instruction(InstructionKind.OPTIMIZE, 1000, 1))
        _wait_for_command(wiring, 3)
        controller.stop(signal.SIGTERM)
        stopped = controller.log_text()
        assert controller.returncode == 0, stopped[-3000:]
        assert stopped.count("controller stopping: SIGTERM received") == 1
        for crash in ("Traceback", "KeyboardInterrupt", "panicked"):
            assert crash not in stopped, stopped[-3000:]
        controller.start()
        release.set()
        wiring.wait_for_plays(1, timeout=180)
    controller.stop()

    commands = [json.loads(m.value()) for m in wiring.read(wiring.commands, idle=2.0, timeout=30)]
    assert [c["id"] for c in commands] == list(range(BUDGET + 2))  # each once, in order
    assert [s.type for s in wiring.syncs_sent(idle=1.0, timeout=30)] == ["pause", "play"]
