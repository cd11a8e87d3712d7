"""The real ``build_flow`` with Bytewax's testing sources and sinks: wiring, recovery, workers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bytewax.connectors.kafka import KafkaError, KafkaSourceMessage
from bytewax.recovery import RecoveryConfig
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main
from bytewax.visualize import to_json
from confluent_kafka import KafkaError as ConfluentKafkaError

from dataflow.adapters import recovery
from dataflow.adapters.config import Settings
from dataflow.adapters.kafka import OutMessage
from dataflow.domain import machine, optimizer
from dataflow.domain import messages as msg
from dataflow.flow import FlowIO, build_flow

ENV = {"KAFKA_BOOTSTRAP_SERVERS": "unused:9092", "REPORT_TIMEOUT_S": "1", "MAX_RETRIES": "1"}

# Bytewax recovery keys state and offsets by these ids: changing one silently drops
# sessions or re-reads a topic from its start. Change them only with a migration.
PERSISTED_STEP_IDS = [
    "rtcef_controller.instructions",
    "rtcef_controller.reports",
    "rtcef_controller.ticks",
    "rtcef_controller.session.stateful_flat_map.stateful.stateful_batch",
]


def kafka_message(topic: str, offset: int, value: bytes) -> KafkaSourceMessage:
    return KafkaSourceMessage(key=None, value=value, topic=topic, partition=0, offset=offset)


class Harness:
    """Sources and sinks a test fills and reads, reusable across executions."""

    def __init__(self, settings: Settings, instructions, reports, ticks) -> None:
        self.settings = settings
        self.conversation: list[OutMessage] = []
        self.dead: list[OutMessage] = []
        self.io = FlowIO(
            instructions=TestingSource(instructions),
            reports=TestingSource(reports),
            ticks=TestingSource(ticks),
            conversation=TestingSink(self.conversation),
            dead_letters=TestingSink(self.dead),
        )

    def _to(self, topic: str) -> list[OutMessage]:
        return [
            OutMessage(m.key, m.value, m.headers) for m in self.conversation if m.topic == topic
        ]

    @property
    def commands(self) -> list[OutMessage]:
        return self._to(self.settings.topics.commands)

    @property
    def syncs(self) -> list[OutMessage]:
        return self._to(self.settings.topics.sync)

    def run(self, recovery_dir: Path | None = None) -> None:
        config = RecoveryConfig(recovery_dir) if recovery_dir else None
        run_main(build_flow(self.settings, self.io), recovery_config=config)


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
    assert machine.STATE_VERSION == 2


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
    assert harness.syncs == [
        OutMessage(b"controller", b'{"type":"pause","timestamp":42,"model_id":-1}',
                   [("message-id", b"controller/sync/1/pause"), ("session-key", b"controller")]),
    ]  # fmt: skip
    assert harness.commands == [
        OutMessage(b"controller",
                   b'{"train_id":0,"optimisation_id":-1,"id":"cmd-0","timestamp":42,'
                   b'"type":"train","params":"{\\"params\\": {\\"pMin\\": 0.05, '
                   b'\\"gamma\\": 0.001}}","best_i":-1}',
                   [("message-id", b"controller/cmd/cmd-0/0"), ("session-key", b"controller")]),
    ]  # fmt: skip

    harness.run(tmp_path)  # execution 2: the session resumes from the store, the report ends it
    assert harness.syncs[-1] == OutMessage(
        b"controller", b'{"type":"play","timestamp":42,"model_id":3}',
        [("message-id", b"controller/sync/1/play"), ("session-key", b"controller")],
    )  # fmt: skip
    assert harness.dead == []


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


def test_ticks_reach_the_session_and_a_silent_factory_ends_with_a_play(tmp_path: Path) -> None:
    recovery.ensure(tmp_path, 1)
    future = 10**15  # far past any deadline
    harness = Harness(
        Settings.from_env(ENV),
        [kafka_message("instructions", 0, b'{"instruction_type": "retrain", "timestamp": 7}'),
         TestingSource.EOF()],
        [],
        [TestingSource.EOF(), future, future + 10_000],
    )  # fmt: skip

    harness.run(tmp_path)
    harness.run(tmp_path)

    assert [json.loads(c.value)["id"] for c in harness.commands] == ["cmd-0", "cmd-0"]
    assert [dict(c.headers)["message-id"] for c in harness.commands] == [
        b"controller/cmd/cmd-0/0", b"controller/cmd/cmd-0/1"
    ]  # fmt: skip
    assert [json.loads(s.value) for s in harness.syncs] == [
        {"type": "pause", "timestamp": 7, "model_id": -1},
        {"type": "play", "timestamp": 7, "model_id": -1},
    ]


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
