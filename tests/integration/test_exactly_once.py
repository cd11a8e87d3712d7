"""Exactly once, as the services see it: a fresh start on used topics, and a stale process.

* A controller with an empty recovery directory, started on the topics of a
  finished recorded run, turns no old instruction into a round, takes no old
  report for an answer, and numbers its commands after every id on the topic.
* A controller stopped (SIGSTOP) while a new one takes over its recovery
  directory writes nothing to the topics when it wakes (SIGCONT): the new one
  fenced it, and it stops.
"""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from dataflow.adapters.kafka import OutMessage
from dataflow.adapters.kafka_log import KafkaLog
from dataflow.adapters.outbox import FencedError
from dataflow.adapters.recovery import EXIT_STALE
from dataflow.domain import messages as msg
from dataflow.domain.messages import Instruction, InstructionKind
from dataflow.sim.process import ControllerProcess
from dataflow.tools import inspection
from tests.integration.harness import ROOT, Controller, Wiring, factory
from tests.kafka import client
from tests.support import RECORDINGS, jsonl

pytestmark = pytest.mark.integration

RUN = RECORDINGS / "month_3"


def used_topics(wiring: Wiring) -> dict[str, list[bytes]]:
    """The topics of a finished recorded run: what its controller, factory and Observer wrote."""
    traffic = {
        wiring.instructions: list(jsonl(RUN / "optimiser_instructions.jsonl")),
        wiring.commands: list(jsonl(RUN / "factory_commands.jsonl")),
        wiring.reports: list(jsonl(RUN / "factory_reports.jsonl")),
    }
    for topic, values in traffic.items():
        client.produce(wiring.bootstrap, topic, values)
    return traffic


def wait_for_log(controller: ControllerProcess, event: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(line.get("msg") == event for line in controller.log_lines()):
            return
        time.sleep(0.1)
    raise AssertionError(f"no {event!r} in the log:\n{controller.log_text()[-3000:]}")


def wait_for_snapshot(
    recovery: Path, holds: Callable[[inspection.SessionView], bool], timeout: float = 60
) -> None:
    """Until the recovery store holds a session for which ``holds`` is true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(holds(view) for view in inspection.sessions(recovery)):
            return
        time.sleep(0.2)
    raise AssertionError(f"no such session snapshotted in {recovery}")


def test_a_fresh_recovery_directory_on_used_topics_starts_at_their_end_and_numbers_after_them(
    wiring_factory, controller_factory
) -> None:
    wiring = wiring_factory("rtcef", OPTIMISER_BUDGET="3", INPUT_START="end")
    old = used_topics(wiring)
    last_id = max(json.loads(c)["id"] for c in old[wiring.commands])
    last_optimisation = max(json.loads(c)["optimisation_id"] for c in old[wiring.commands])
    controller = controller_factory(wiring)
    with factory(wiring, from_start=False):
        controller.start()
        wait_for_log(controller, "controller starting")
        wiring.send_instruction(Instruction(InstructionKind.OPTIMIZE, 1_600_000_000_000, 99))
        syncs = wiring.wait_for_plays(1, timeout=60)
        time.sleep(2)  # whatever else it would send (an old instruction's round) comes now
    controller.stop()

    new = wiring.commands_sent(idle=1.0, timeout=30)[len(old[wiring.commands]) :]
    assert [(c.id, c.type, c.optimisation_id, c.timestamp) for c in new] == [
        (last_id + 1 + n, kind, last_optimisation + 1, 1_600_000_000_000)
        for n, kind in enumerate(["opt_initialise", "opt_step", "opt_step", "opt_step",
                                  "opt_finalise"])
    ]  # fmt: skip
    # One round; its play names the model of the new finalise's report, not an old one.
    reports = [json.loads(m.value()) for m in wiring.read(wiring.reports, idle=1.0, timeout=30)]
    finalised = next(r for r in reports if r["reply_id"] == new[-1].id)
    assert syncs == [msg.SyncMessage("pause", 1_600_000_000_000, -1),
                     msg.SyncMessage("play", 1_600_000_000_000, finalised["model_id"])]  # fmt: skip
    # No old report was even read (nothing stale dead-lettered), no old instruction either.
    assert wiring.read(wiring.dead_letters, idle=1.0, timeout=5) == []
    assert wiring.duplicates(wiring.commands) == wiring.duplicates(wiring.sync) == {}


def test_replaying_used_topics_from_their_beginning_takes_no_old_report_for_an_answer(
    wiring_factory, controller_factory
) -> None:
    """``INPUT_START=beginning``: the old instructions are rounds again (the operator said so).

    But their commands continue after the old ids, and the old reports are all stale.
    """
    wiring = wiring_factory("rtcef", OPTIMISER_BUDGET="2", INPUT_START="beginning",
                            REPORT_TIMEOUT_S="600")  # fmt: skip
    old = used_topics(wiring)
    last_id = max(json.loads(c)["id"] for c in old[wiring.commands])
    controller = controller_factory(wiring)
    with factory(wiring, from_start=False):
        controller.start()
        syncs = wiring.wait_for_plays(len(old[wiring.instructions]), timeout=120)
    controller.stop()

    new = wiring.commands_sent(idle=1.0, timeout=30)[len(old[wiring.commands]) :]
    assert [c.id for c in new] == list(range(last_id + 1, last_id + 1 + len(new)))
    letters = wiring.read(wiring.dead_letters, idle=1.0, timeout=30)
    reasons = [dict(m.headers())["dlq-reason"].decode() for m in letters]
    assert len(reasons) == len(old[wiring.reports])  # every old report, and only those
    assert all(": stale (its round is over)" in r for r in reasons), reasons
    assert [s.type for s in syncs] == ["pause", "play"] * len(old[wiring.instructions])


def test_a_stale_controller_woken_after_its_replacement_took_over_writes_nothing(
    wiring_factory, tmp_path: Path
) -> None:
    wiring = wiring_factory("seed", OPTIMISER_BUDGET="6")
    old = Controller(wiring, tmp_path / "c")
    held = threading.Event()
    release = threading.Event()

    def hold(command: msg.FactoryCommand) -> None:
        if command.id == "cmd-3":
            held.set()
            release.wait(120)  # the answer waits until the replacement has taken over

    with factory(wiring, before=hold):
        old.start()
        wiring.send_instruction(Instruction(InstructionKind.OPTIMIZE, 1000, 1))
        assert held.wait(60)
        wait_for_snapshot(old.recovery, lambda s: s.next_command == 4)  # the new one resumes it
        old.send_signal(signal.SIGSTOP)  # thought dead: a hung node, a partition
        new = ControllerProcess(old.recovery, wiring.env(), log=tmp_path / "new.log", cwd=ROOT)
        try:
            new.start()
            wait_for_log(new, "outbox ready")  # it fenced the old one and read back
            release.set()  # the factory answers: both would go on with the round
            wiring.wait_for_plays(1, timeout=120)
            old.send_signal(signal.SIGCONT)
            assert old.wait(60), "the stale controller did not stop"
            time.sleep(3)
        finally:
            new.stop()
            old.kill()

    assert old.returncode == EXIT_STALE
    stops = [line["msg"] for line in old.log_lines() if line["msg"].startswith("controller stops")]
    assert len(stops) == 1
    assert "another controller process took over" in stops[0]
    assert "this process is stale and stops without writing" in stops[0]
    commands = [json.loads(m.value()) for m in wiring.read(wiring.commands, idle=1.0, timeout=30)]
    assert [c["id"] for c in commands] == [f"cmd-{n}" for n in range(8)]
    assert wiring.duplicates(wiring.commands) == wiring.duplicates(wiring.sync) == {}
    assert [s.type for s in wiring.syncs_sent(idle=1.0, timeout=30)] == ["pause", "play"]


def test_a_kafka_writer_fenced_by_a_newer_one_gets_nothing_more_onto_its_topic(
    kafka_bootstrap: str, topic_factory
) -> None:
    topic = topic_factory("fenced")
    config, ident = {"bootstrap.servers": kafka_bootstrap}, f"test-{uuid.uuid4().hex}"
    stale = KafkaLog(config, ident, 10, 10_000)
    stale.fence()
    stale.write([(topic, OutMessage(b"k", b"one", [("message-id", b"1")]))])
    stale.commit()
    # Stopped after a write, before its epoch's commit: the transaction stays open, its
    # message in the log, where the services (reading uncommitted) may have read it.
    stale.write([(topic, OutMessage(b"k", b"two", [("message-id", b"2")]))])

    newer = KafkaLog(config, ident, 10, 10_000)
    newer.fence()  # aborts the open transaction and fences the stale writer
    found, _ = newer.read({(topic, 0): 0})
    newer.write([(topic, OutMessage(b"k", b"three", [("message-id", b"3")]))])
    newer.close()
    # The stale writer wakes: neither its commit nor another write gets through.
    with pytest.raises(FencedError, match="this process is stale and stops without writing"):
        stale.commit()
    with pytest.raises(FencedError, match="this process is stale and stops without writing"):
        stale.write([(topic, OutMessage(b"k", b"four", [("message-id", b"4")]))])

    assert found == [("1", None), ("2", None)]  # the open transaction's message is read back
    assert [m.value() for m in client.read_messages(kafka_bootstrap, topic, idle=2.0)] == [
        b"one", b"two", b"three",
    ]  # fmt: skip


def test_the_output_transaction_is_committed_by_a_timer_once_old_enough_and_never_in_a_write(
    kafka_bootstrap: str, topic_factory
) -> None:
    topic = topic_factory("committed")
    writer = KafkaLog({"bootstrap.servers": kafka_bootstrap}, f"test-{uuid.uuid4().hex}", 10,
                      10_000, commit_every_s=1.0)  # fmt: skip
    writer.fence()

    writer.write([(topic, OutMessage(b"k", b"one"))])
    writer.write([(topic, OutMessage(b"k", b"two"))])
    uncommitted = client.read_messages(kafka_bootstrap, topic, idle=0.3, timeout=5)
    committed_before = read_committed(kafka_bootstrap, topic, idle_s=0.3)
    time.sleep(2.5)  # the timer commits the transaction once it is a second old
    committed_after = read_committed(kafka_bootstrap, topic, idle_s=1.0)
    writer.close()

    assert [m.value() for m in uncommitted] == [b"one", b"two"]  # what the services read
    assert committed_before == []  # both writes went out in one open transaction
    assert committed_after == [b"one", b"two"]


def read_committed(bootstrap: str, topic: str, idle_s: float) -> list[bytes]:
    """What a consumer that reads committed messages only sees of ``topic``."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex,
                         "isolation.level": "read_committed",
                         "enable.auto.commit": False})  # fmt: skip
    consumer.assign([TopicPartition(topic, 0, 0)])
    values, last = [], time.monotonic()
    try:
        while time.monotonic() - last < idle_s:
            message = consumer.poll(0.1)
            if message is not None and message.error() is None:
                values.append(message.value())
                last = time.monotonic()
    finally:
        consumer.close()
    return values
