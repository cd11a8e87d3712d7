"""The original services' real wire: a recorded run replayed in schemaless Avro via Kafka."""

from __future__ import annotations

import io
import json
import threading

import fastavro
import pytest

from dataflow.adapters.wire import Codec
from dataflow.domain import dialects
from dataflow.domain import messages as msg
from dataflow.sim.runner import serve
from tests.support import RECORDINGS, SCHEMAS, jsonl, loads
from tests.unit.test_wire import original

pytestmark = pytest.mark.integration

RUN = RECORDINGS / "month_0"
CHECKED = ("id", "train_id", "optimisation_id", "type", "timestamp", "best_i")


def read_avro(stem: str, data: bytes) -> dict:
    buffer = io.BytesIO(data)
    record = fastavro.schemaless_reader(buffer, original(stem, "value"), None)
    assert buffer.tell() == len(data)
    return record


def test_a_recorded_train_and_optimise_round_replay_in_avro(
    wiring_factory, controller_factory
) -> None:
    commands = [loads(line) for line in jsonl(RUN / "factory_commands.jsonl")][:18]
    reports = {loads(line)["reply_id"]: line for line in jsonl(RUN / "factory_reports.jsonl")}
    instructions = [dialects.decode_instruction(line, "rtcef") for line in
                    list(jsonl(RUN / "optimiser_instructions.jsonl"))[:2]]  # fmt: skip
    first_train = json.loads(commands[0]["params"])["params"]
    wiring = wiring_factory("rtcef", WIRE_ENCODING="avro", INITIAL_PARAMS=json.dumps(first_train))
    codec = Codec("rtcef", "avro")
    assert SCHEMAS.exists()

    def answer(value: bytes, headers: list[tuple[str, bytes]]):
        command = codec.decode_command(value)
        assert isinstance(command, msg.FactoryCommand), command
        if command.id not in reports:
            return []  # opt_initialise: never answered
        wire = dialects.get("rtcef").decode_report_wire(
            reports[command.id], msg.DEFAULT_MAX_MESSAGE_BYTES
        )
        key, report = codec.encode_report(wire)  # type: ignore[arg-type]
        return [(wiring.reports, key, report)]

    stop = threading.Event()
    thread = threading.Thread(target=serve, args=(wiring.bootstrap, wiring.commands, answer, stop),
                              kwargs={"from_start": True}, daemon=True)  # fmt: skip
    thread.start()
    controller = controller_factory(wiring)
    try:
        controller.start()
        wiring.send_instruction(instructions[0])  # type: ignore[arg-type]
        wiring.wait_for_plays(1)
        wiring.send_instruction(instructions[1])  # type: ignore[arg-type]
        wiring.wait_for_plays(2)
    finally:
        stop.set()
        thread.join(15)
        controller.stop()

    sent = wiring.read(wiring.commands, idle=1.0, timeout=30)
    ours = [read_avro("factory_commands", m.value()) for m in sent]
    assert [{f: c[f] for f in CHECKED} for c in ours] == [{f: c[f] for f in CHECKED}
                                                           for c in commands]  # fmt: skip
    assert ours[0]["params"] == commands[0]["params"]
    for message, command in zip(sent, ours, strict=True):
        key = fastavro.schemaless_reader(io.BytesIO(message.key()),
                                         original("factory_commands", "key"), None)  # fmt: skip
        assert key == {"id": command["id"]}
    syncs = [read_avro("engine_sync", m.value()) for m in wiring.read(wiring.sync, idle=1.0)]
    assert syncs == [
        {"timestamp": 1467936173693, "type": "pause", "model_id": -1},
        {"timestamp": 1467936173693, "type": "play", "model_id": 0},
        {"timestamp": 1468541035478, "type": "pause", "model_id": -1},
        {"timestamp": 1468541035478, "type": "play", "model_id": 16},
    ]
    assert wiring.read(wiring.dead_letters, idle=1.0, timeout=5) == []
