"""The real ``build_flow`` with Bytewax's testing sources and sinks: wiring, recovery, workers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from bytewax.connectors.kafka import KafkaError, KafkaSourceMessage
from bytewax.recovery import RecoveryConfig
from bytewax.testing import TestingSource, cluster_main, run_main
from bytewax.visualize import to_json
from confluent_kafka import KafkaError as ConfluentKafkaError

from dataflow.adapters import recovery
from dataflow.adapters.config import Settings
from dataflow.adapters.kafka import OutMessage
from dataflow.adapters.outbox import OutboxState, digest
from dataflow.domain import machine, optimizer
from dataflow.domain import messages as msg
from dataflow.flow import FlowIO, build_flow
from tests.memory_log import Topics

ENV = {"KAFKA_BOOTSTRAP_SERVERS": "unused:9092", "REPORT_TIMEOUT_S": "1", "MAX_RETRIES": "1"}

# Bytewax recovery keys state and offsets by these ids: changing one silently drops
# sessions or re-reads a topic from its start. Change them only with a migration.
PERSISTED_STEP_IDS = [
    "rtcef_controller.instructions",
    "rtcef_controller.reports",
    "rtcef_controller.ticks",
    "rtcef_controller.session.stateful_flat_map.stateful.stateful_batch",
    "rtcef_controller.outputs",
]


def kafka_message(topic: str, offset: int, value: bytes) -> KafkaSourceMessage:
    return KafkaSourceMessage(key=None, value=value, topic=topic, partition=0, offset=offset)


class Harness:
    """Sources a test fills, and topics in memory the outbox writes (kept across executions)."""

    def __init__(self, settings: Settings, instructions, reports, ticks) -> None:
        self.settings = settings
        self.topics = Topics()
        t = settings.topics
        self.io = FlowIO(
            instructions=TestingSource(instructions),
            reports=TestingSource(reports),
            ticks=TestingSource(ticks),
            outputs=self.topics.outbox(t.commands, (t.commands, t.sync, t.reports)),
        )

    def _to(self, topic: str) -> list[OutMessage]:
        return [OutMessage(m.key, m.value, m.headers) for m in self.topics.of(topic)]

    @property
    def commands(self) -> list[OutMessage]:
        return self._to(self.settings.topics.commands)

    @property
    def syncs(self) -> list[OutMessage]:
        return self._to(self.settings.topics.sync)

    @property
    def dead(self) -> list[OutMessage]:
        return self._to(self.settings.topics.dead_letters)

    @property
    def markers(self) -> list[OutMessage]:
        return self._to(self.settings.topics.reports)

    def run(self, recovery_dir: Path | None = None) -> None:
        config = RecoveryConfig(recovery_dir) if recovery_dir else None
        run_main(build_flow(self.settings, self.io), recovery_config=config)


def sent(topic: str, key: bytes, value: bytes, message_id: bytes) -> OutMessage:
    """A message as the outbox writes it: the session, its id and its payload's digest."""
    headers = [("session-key", key), ("message-id", message_id),
               ("message-digest", digest(OutMessage(key, value), topic))]  # fmt: skip
    return OutMessage(key, value, headers)


def walk_step_ids(node: dict) -> list[str]:
    found = [node["step_id"]] if "step_id" in node else []
    for child in node.get("substeps", []):
        found += walk_step_ids(child)
    return found


def test_the_persisted_step_ids_are_frozen() -> None:
    harness = Harness(Settings.from_env(ENV), [], [], [])
    ids = walk_step_ids(json.loads(to_json(build_flow(harness.settings, harness.io))))

    assert [i for i in ids if i in PERSISTED_STEP_IDS] == PERSISTED_STEP_IDS
    # State is pickled by class path and carries a version: both are part of the schema.
    # Stores written before the domain was split name the classes by the machine's path.
    pickled = {machine.Session: "state", machine.Round: "state", machine.Outstanding: "state",
               machine.Phase: "state", optimizer.OptimiserSnapshot: "optimizer",
               optimizer.Profile: "optimizer", optimizer.Dimension: "optimizer",
               optimizer.Observation: "optimizer", msg.Instruction: "messages",
               msg.InstructionKind: "messages", msg.Report: "messages",
               msg.FactoryCommand: "messages"}  # fmt: skip
    assert {c: c.__module__.removeprefix("dataflow.domain.") for c in pickled} == pickled
    assert all(getattr(machine, c.__name__) is c for c in pickled if pickled[c] == "state")
    assert machine.STATE_VERSION == 5  # v5: held reports and markers keep their source
    assert OutboxState.__module__ == "dataflow.adapters.outbox"  # the outbox's state, pickled


def test_a_retrain_round_spans_two_executions_and_resumes_from_recovery(tmp_path: Path) -> None:
    recovery.ensure(tmp_path, 1)
    harness = Harness(
        Settings.from_env(ENV),
        [kafka_message("instructions", 0, b'{"instruction_type": "retrain", "timestamp": 42}'),
         TestingSource.EOF()],
        [TestingSource.EOF(),
         kafka_message("factory_reports", 0,
                       b'{"reply_id": "cmd-0", "status": "success", "model_id": 3,'
                       b' "params_dict": "", "metrics": ""}')],
        [],
    )  # fmt: skip

    harness.run(tmp_path)  # execution 1: the instruction only
    pause = sent("enginesync", b"controller", b'{"type":"pause","timestamp":42,"model_id":-1}',
                 b"controller/sync/1/pause")  # fmt: skip
    assert harness.syncs == [pause]
    assert harness.commands == [
        sent("factory_commands", b"controller",
             b'{"train_id":0,"optimisation_id":-1,"id":"cmd-0","timestamp":42,'
             b'"type":"train","params":"{\\"params\\": {\\"pMin\\": 0.05, '
             b'\\"gamma\\": 0.001}}","best_i":-1}',
             b"controller/cmd/cmd-0/0"),
    ]  # fmt: skip

    harness.run(tmp_path)  # execution 2: the session resumes from the store, the report ends it
    assert harness.syncs == [
        pause,
        sent("enginesync", b"controller", b'{"type":"play","timestamp":42,"model_id":3}',
             b"controller/sync/1/play"),
    ]  # fmt: skip
    assert harness.dead == []
    assert harness.topics.duplicates() == {}


def test_bad_input_and_kafka_errors_become_dead_letters_with_their_origin() -> None:
    error = KafkaError(ConfluentKafkaError(ConfluentKafkaError._TRANSPORT, "broker gone"),
                       kafka_message("factory_reports", 9, b""))  # fmt: skip
    harness = Harness(
        Settings.from_env(ENV),
        [kafka_message("instructions", 4, b"{nope")],
        [error, kafka_message("factory_reports", 10, b'{"reply_id": "cmd-5000", "metrics": ""}')],
        [],
    )

    harness.run()

    assert sorted((dict(d.headers)["dlq-reason"], d.value) for d in harness.dead) == [
        (b"instruction: JSON is malformed: object keys must be strings (byte 1)", b"{nope"),
        (b"kafka: KafkaError{code=_TRANSPORT,val=-195,str=\"broker gone\"}", b""),
        (b"report 'cmd-5000': foreign reply_id "
         b"(no such command was sent, nor within 1024 of the next)",
         b'{"reply_id": "cmd-5000", "metrics": ""}'),
    ]  # fmt: skip
    origin = {dict(d.headers)["dlq-source-offset"] for d in harness.dead}
    assert origin == {b"4", b"9", b"10"}
    assert harness.commands == []
    assert harness.syncs == []


def test_a_silent_factory_is_timed_out_by_the_deadline_markers_the_flow_reads_back(
    tmp_path: Path,
) -> None:
    recovery.ensure(tmp_path, 1)
    settings = Settings.from_env(ENV)
    codec = settings.codec
    future = 10**15  # far past any deadline
    markers = [codec.encode_deadline(msg.Deadline(c))[1] for c in ("cmd-0", "cmd-1")]
    on_topic = [
        KafkaSourceMessage(key=b"controller", value=value, topic="factory_reports", partition=0,
                           offset=i, headers=[("controller-marker", b"deadline")])
        for i, value in enumerate(markers)
    ]  # fmt: skip
    eof = TestingSource.EOF()
    # One execution per line of the three lists: the instruction; a tick past the deadline
    # (the marker of cmd-0 is written); that marker read (cmd-0 resent as cmd-1); a tick
    # (cmd-1's marker); that marker read (the last attempt: the round is aborted).
    harness = Harness(
        settings,
        [kafka_message("instructions", 0, b'{"instruction_type": "retrain", "timestamp": 7}'),
         eof],
        [eof, eof, on_topic[0], eof, eof, on_topic[1]],
        [eof, future, eof, eof, future + 10_000, eof],
    )  # fmt: skip

    for _ in range(5):
        harness.run(tmp_path)

    assert [m.value for m in harness.markers] == markers  # what the flow then read back
    assert [dict(m.headers)["message-id"] for m in harness.markers] == [
        b"controller/deadline/cmd-0", b"controller/deadline/cmd-1"
    ]  # fmt: skip
    assert [json.loads(c.value)["id"] for c in harness.commands] == ["cmd-0", "cmd-1"]
    assert [json.loads(s.value) for s in harness.syncs] == [
        {"type": "pause", "timestamp": 7, "model_id": -1},
        {"type": "play", "timestamp": 7, "model_id": -1},
    ]
    assert harness.topics.duplicates() == {}


def test_a_resumed_flow_writes_nothing_the_first_execution_wrote_after_its_snapshot(
    tmp_path: Path,
) -> None:
    """The outbox reads back what was written since its snapshot and writes none of it again."""
    recovery.ensure(tmp_path, 1)
    harness = Harness(
        Settings.from_env(ENV),
        [kafka_message("instructions", 0, b'{"instruction_type": "optimize", "timestamp": 5}'),
         TestingSource.ABORT()],
        [], [],
    )  # fmt: skip

    harness.run(tmp_path)  # aborted (a crash) after the outputs, before any snapshot
    written = harness.commands + harness.syncs
    assert len(written) == 3
    harness.run(tmp_path)  # the instruction is read again, and its outputs emitted again

    assert harness.commands + harness.syncs == written
    assert [json.loads(c.value)["type"] for c in harness.commands] == ["opt_initialise",
                                                                      "opt_step"]  # fmt: skip
    assert harness.topics.duplicates() == {}
    assert harness.topics.fenced == 2  # each execution's outbox fenced the one before
    assert harness.topics.read_back == [0, 3]  # the second found the three it then skipped


@pytest.mark.parametrize("workers", [1, 2])
def test_sessions_give_the_same_outputs_on_one_or_two_workers(workers: int) -> None:
    settings = Settings.from_env({**ENV, "SESSION_KEYS": "a,b,c"})
    instructions = [
        kafka_message("instructions", i,
                      b'{"instruction_type": "retrain", "timestamp": %d, "model_id": "%s"}'
                      % (i, key.encode()))
        for i, key in enumerate("abc")
    ]  # fmt: skip
    harness = Harness(settings, instructions, [], [])

    if workers == 1:
        run_main(build_flow(settings, harness.io))
    else:
        cluster_main(build_flow(settings, harness.io), [], 0, worker_count_per_proc=workers)

    assert sorted((c.key, json.loads(c.value)["id"]) for c in harness.commands) == [
        (b"a", "cmd-0"), (b"b", "cmd-1"), (b"c", "cmd-2"),
    ]  # fmt: skip
    assert sorted(s.value for s in harness.syncs) == [
        b'{"type":"pause","timestamp":0,"model_id":-1}',
        b'{"type":"pause","timestamp":1,"model_id":-1}',
        b'{"type":"pause","timestamp":2,"model_id":-1}',
    ]


CAPTURED: dict[str, object] = {}


def capture_bytewax_run() -> None:
    """A flow factory that records what the flow reads of ``bytewax.run``, then stops."""
    from dataflow.adapters import runtime

    CAPTURED.update(recovery=runtime.bytewax_recovery(), interval=runtime.bytewax_epoch_interval())
    raise SystemExit(0)


def test_the_flow_reads_its_recovery_directory_and_epoch_from_bytewax_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``bytewax.run`` has no API for them: this fails loudly if its private globals change."""
    import runpy
    from datetime import timedelta

    monkeypatch.setattr(sys, "argv", ["bytewax.run", f"{__name__}:capture_bytewax_run()",
                                      "-r", str(tmp_path), "-s", "5", "-b", "30"])  # fmt: skip
    monkeypatch.delitem(sys.modules, "bytewax.run", raising=False)  # run it as a script
    with pytest.raises(SystemExit):
        runpy.run_module("bytewax.run", run_name="__main__", alter_sys=True)

    assert {"recovery": (tmp_path, 0), "interval": timedelta(seconds=5)} == CAPTURED


def test_the_controller_runs_its_numerics_on_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    import signal

    from threadpoolctl import threadpool_info

    from dataflow import flow
    from dataflow.adapters.config import SettingsError

    def refused() -> Settings:
        raise SettingsError("stop here")

    monkeypatch.setattr(flow.Settings, "from_env", staticmethod(refused))
    limiter = flow.threadpool_limits(limits=None)  # to restore what the controller changes
    handler = signal.getsignal(signal.SIGTERM)
    try:
        flow.threadpool_limits(limits=2)  # as on any multi-core machine
        pools = threadpool_info()
        assert {p["num_threads"] for p in pools if p["user_api"] == "blas"} == {2}, pools
        with pytest.raises(SystemExit):
            flow.get_flow()  # the settings come after the limit, so it stops right after it
        assert {pool["num_threads"] for pool in threadpool_info()} == {1}
    finally:
        limiter.restore_original_limits()
        signal.signal(signal.SIGTERM, handler)


def test_an_input_carries_its_records_log_time_into_the_domain_and_none_when_it_has_none() -> None:
    from dataflow.flow import decode_instruction, decode_report

    settings = Settings.from_env(ENV)
    stamped = KafkaSourceMessage(key=None, value=b'{"instruction_type": "retrain", "timestamp": 4}',
                                 topic="instructions", partition=0, offset=0,
                                 timestamp=(2, 1_700_000_000_123))  # fmt: skip
    report = KafkaSourceMessage(key=None, value=b'{"reply_id": "cmd-0", "status": "success", '
                                b'"model_id": 3, "params_dict": "", "metrics": ""}',
                                topic="factory_reports", partition=0, offset=0,
                                timestamp=(1, 1_700_000_004_500))  # fmt: skip
    unstamped = KafkaSourceMessage(key=None, value=report.value, topic="factory_reports",
                                   partition=0, offset=1, timestamp=(0, -1))  # fmt: skip

    instruction = decode_instruction(settings, stamped)
    answered = decode_report(settings, report)
    unknown = decode_report(settings, unstamped)

    assert instruction.event.instruction.logged_ms == 1_700_000_000_123
    assert answered.event.report == msg.Report(
        "cmd-0", True, model_id=3, logged_ms=1_700_000_004_500, source=(0, 0)
    )
    assert unknown.event.report.logged_ms is None
    assert unknown.event.report.source == (0, 1)  # where it is, for a dead letter of it held


def test_a_report_forged_ahead_is_dead_lettered_under_its_own_offset_when_its_command_is_sent(
    tmp_path: Path,
) -> None:
    recovery.ensure(tmp_path, 1)
    settings = Settings.from_env(ENV)
    appended = 1_780_000_000_000  # the broker's timestamps (CreateTime, 1)
    forged = KafkaSourceMessage(
        key=None, value=b'{"reply_id": "cmd-0", "status": "success", "model_id": 666}',
        topic="factory_reports", partition=0, offset=3, timestamp=(1, appended),
    )  # fmt: skip
    instruction = KafkaSourceMessage(
        key=None, value=b'{"instruction_type": "retrain", "timestamp": 7}', topic="instructions",
        partition=0, offset=0, timestamp=(1, appended + 5000),
    )  # fmt: skip
    eof = TestingSource.EOF()
    # First execution: the report, for a command not sent yet, is held. Second: the
    # instruction sends cmd-0, and the held report, appended before it, is refused.
    harness = Harness(settings, [eof, instruction, eof], [forged, eof, eof], [eof, eof])

    for _ in range(2):
        harness.run(tmp_path)

    [letter] = harness.dead
    headers = dict(letter.headers)
    assert (headers["dlq-source-topic"], headers["dlq-source-partition"],
            headers["dlq-source-offset"], headers["dlq-stage"]) == (
        b"factory_reports", b"0", b"3", b"session"
    )  # fmt: skip
    assert headers["dlq-reason"] == (
        b"report 'cmd-0': forged (appended at 1780000000000 ms, before its command was sent: "
        b"it followed a record appended at 1780000005000 ms; REPORT_CLOCK_SKEW_MS 1000)"
    )
    assert letter.value == b""  # a held report's bytes are not kept, only where it is
    assert [json.loads(c.value)["id"] for c in harness.commands] == ["cmd-0"]
    assert [json.loads(s.value)["type"] for s in harness.syncs] == ["pause"]  # awaiting cmd-0
