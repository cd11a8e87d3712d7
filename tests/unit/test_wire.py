"""Schemaless Avro as the original RTCEF services write it: round trips and byte equality."""

from __future__ import annotations

import io
import json

import fastavro
import msgspec
import pytest

from dataflow.adapters.wire import Codec, avro_read
from dataflow.domain import dialects
from dataflow.domain import messages as msg
from dataflow.domain.dialects import rtcef
from tests.support import SCHEMAS, jsonl, loads, recorded_runs

AVRO = Codec("rtcef", "avro")
RUNS = recorded_runs()


def original(stem: str, part: str):
    """The schema as the originals ship it (``shared/``), not our packaged copy."""
    return fastavro.parse_schema(
        json.loads((SCHEMAS / "cards" / f"{stem}-{part}.avsc").read_text())
    )


def fastavro_bytes(stem: str, part: str, record: dict) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, original(stem, part), record)
    return buffer.getvalue()


@pytest.mark.parametrize("run", RUNS, ids=lambda p: p.name)
def test_recorded_commands_survive_json_struct_avro_struct_json_with_fastavros_bytes(run) -> None:
    for line in jsonl(run / "factory_commands.jsonl"):
        command = msg.decode_command(line)
        assert isinstance(command, msg.FactoryCommand)
        key, value = AVRO.encode_command(command)
        record = loads(line)
        assert value == fastavro_bytes("factory_commands", "value", record)
        assert key == fastavro_bytes("factory_commands", "key", {"id": record["id"]})
        back = AVRO.decode_command(value)
        assert loads(msg.encode_command(back)) == record  # type: ignore[arg-type]


@pytest.mark.parametrize("run", RUNS, ids=lambda p: p.name)
def test_recorded_reports_survive_json_struct_avro_struct_json_with_fastavros_bytes(run) -> None:
    for line in jsonl(run / "factory_reports.jsonl"):
        wire = dialects.get("rtcef").decode_report_wire(line, msg.DEFAULT_MAX_MESSAGE_BYTES)
        assert isinstance(wire, rtcef.ReportWire)
        key, value = AVRO.encode_report(wire)
        record = loads(line)
        assert value == fastavro_bytes("factory_reports", "value", record)
        assert key == fastavro_bytes("factory_reports", "key", {"reply_id": record["reply_id"]})
        decoded = avro_read("rtcef", "reports", "value", value)
        assert isinstance(decoded, dict)
        again = rtcef.decode_report_wire(msgspec.json.encode(decoded), len(value) * 4)
        assert isinstance(again, rtcef.ReportWire)
        assert loads(msg.encode_json(again)) == record
        assert AVRO.decode_report(value) == dialects.decode_report(line, "rtcef")


@pytest.mark.parametrize("run", RUNS, ids=lambda p: p.name)
def test_recorded_instructions_survive_the_round_trip_with_fastavros_bytes(run) -> None:
    for line in jsonl(run / "optimiser_instructions.jsonl"):
        instruction = dialects.decode_instruction(line, "rtcef")
        assert isinstance(instruction, msg.Instruction)
        key, value = AVRO.encode_instruction(instruction)
        record = loads(line)
        assert value == fastavro_bytes("optimiser_instructions", "value", record)
        assert key == fastavro_bytes("optimiser_instructions", "key", {"id": record["id"]})
        assert AVRO.decode_instruction(value) == instruction


def test_a_sync_message_is_keyed_by_timestamp_and_type() -> None:
    sync = msg.SyncMessage("play", 1472774967217, 17)
    key, value = AVRO.encode_sync(sync)
    assert value == fastavro_bytes("engine_sync", "value", msgspec.structs.asdict(sync))
    assert key == fastavro_bytes("engine_sync", "key", {"timestamp": 1472774967217, "type": "play"})
    assert AVRO.decode_sync(value) == sync


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "report: not an Avro factory_reports value (EOFError: )"),
        (fastavro_bytes("factory_reports", "value",
                        {"reply_id": 1, "params_dict": "", "model_id": 2, "metrics": ""})[:-1],
         "report: not an Avro factory_reports value (EOFError: )"),
        (fastavro_bytes("factory_reports", "value",
                        {"reply_id": 1, "params_dict": "", "model_id": 2, "metrics": ""}) + b"\x00",
         "report: not an Avro factory_reports value (1 trailing bytes)"),
        (fastavro_bytes("engine_sync", "value", {"timestamp": 5, "type": "play", "model_id": 3}),
         "report: not an Avro factory_reports value (EOFError: )"),
    ],
)  # fmt: skip
def test_bytes_that_are_not_a_record_of_the_topics_schema_are_rejected(data, reason) -> None:
    assert AVRO.decode_report(data) == msg.Rejection(reason)


def test_a_model_id_the_engine_sync_schema_cannot_carry_is_refused() -> None:
    record = {"reply_id": 1, "params_dict": "", "model_id": 2**40, "metrics": ""}
    data = fastavro_bytes("factory_reports", "value", record)

    assert AVRO.decode_report(data) == msg.Rejection(
        "report: `$.model_id` 1099511627776 does not fit engine_sync's Avro int (32 bits)"
    )
    assert Codec("rtcef").decode_report(json.dumps(record).encode()) == msg.Report(1, True, 2**40)


def test_avro_is_refused_for_the_seed_dialect() -> None:
    with pytest.raises(ValueError, match="the seed dialect is spoken in json, not avro"):
        Codec("seed", "avro")


def test_an_avro_message_is_held_to_the_size_limit_by_its_size_on_the_wire() -> None:
    metrics = json.dumps({"f_val": -0.5, "mcc": 0.5, "trace": "\u00e9" * 400})
    record = {"reply_id": 7, "params_dict": "", "model_id": 3, "metrics": metrics}
    data = fastavro_bytes("factory_reports", "value", record)

    # Its JSON form is about twice as large: only the wire size counts, and only once.
    assert isinstance(AVRO.decode_report(data, max_bytes=len(data)), msg.Report)
    assert isinstance(AVRO.decode_instruction(
        fastavro_bytes("optimiser_instructions", "value",
                       {"id": 1, "instruction": "train", "timestamp": 5}), max_bytes=20,
    ), msg.Instruction)  # fmt: skip
    assert AVRO.decode_report(data, max_bytes=len(data) - 1) == msg.Rejection(
        f"report: message of {len(data)} bytes exceeds the {len(data) - 1} limit"
    )


@pytest.mark.parametrize("codec", [Codec("seed"), Codec("rtcef"), AVRO], ids=str)
def test_a_deadline_marker_reads_back_as_the_command_it_names(codec: Codec) -> None:
    command_id = 17 if codec.dialect == "rtcef" else "cmd-17"

    _, value = codec.encode_deadline(msg.Deadline(command_id))

    assert codec.decode_deadline(value) == msg.Deadline(command_id)


def test_a_deadline_marker_is_a_report_every_reader_decodes_and_none_takes_for_an_answer() -> None:
    key, value = AVRO.encode_deadline(msg.Deadline(17))

    # The originals' schemas read it; its key is the one the factory's report to command 17
    # has (the same partition), its reply_id one no command has.
    record = fastavro.schemaless_reader(io.BytesIO(value), original("factory_reports", "value"))
    assert record == {"reply_id": -1, "params_dict": "", "model_id": -1,
                      "metrics": '{"deadline_passed": 17}'}  # fmt: skip
    assert key == fastavro_bytes("factory_reports", "key", {"reply_id": 17})
    assert AVRO.decode_report(value) == msg.Report(-1, ok=True, model_id=-1)
    assert dialects.decode_report(Codec("seed").encode_deadline(msg.Deadline("cmd-1"))[1],
                                  "seed") == msg.Report(-1, ok=True, model_id=-1)  # fmt: skip


def test_a_deadline_marker_without_a_command_id_is_rejected() -> None:
    report = b'{"reply_id": -1, "params_dict": "", "model_id": -1, "metrics": "{}"}'

    assert Codec("seed").decode_deadline(report) == msg.Rejection(
        "deadline marker: `$.metrics.deadline_passed` unreadable (KeyError: 'deadline_passed')"
    )
