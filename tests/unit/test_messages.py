"""Wire messages: every recorded line decodes, re-encoding is faithful, rejections are precise."""

from __future__ import annotations

import json

import pytest

from dataflow.domain import dialects
from dataflow.domain import messages as msg
from dataflow.domain.dialects import rtcef, seed
from dataflow.domain.messages import Instruction, InstructionKind, Rejection, Report
from tests.support import jsonl, loads, recorded_runs

RUNS = recorded_runs()


@pytest.mark.parametrize("run", RUNS, ids=lambda p: p.name)
def test_every_recorded_instruction_decodes_in_the_rtcef_dialect(run) -> None:
    for line in jsonl(run / "optimiser_instructions.jsonl"):
        decoded = dialects.decode_instruction(line, "rtcef")
        raw = loads(line)
        assert decoded == Instruction(
            InstructionKind.OPTIMIZE
            if raw["instruction"] == "optimise"
            else InstructionKind.RETRAIN,
            raw["timestamp"],
            raw["id"],
        )


@pytest.mark.parametrize("run", RUNS, ids=lambda p: p.name)
def test_every_recorded_command_decodes_and_reencodes_to_the_same_json_object(run) -> None:
    for line in jsonl(run / "factory_commands.jsonl"):
        command = msg.decode_command(line)
        assert isinstance(command, msg.FactoryCommand), command
        assert loads(msg.encode_command(command)) == loads(line)


@pytest.mark.parametrize("run", RUNS, ids=lambda p: p.name)
def test_every_recorded_report_decodes_and_reencodes_to_the_same_json_object(run) -> None:
    for line in jsonl(run / "factory_reports.jsonl"):
        wire = dialects.get("rtcef").decode_report_wire(line, msg.DEFAULT_MAX_MESSAGE_BYTES)
        assert isinstance(wire, rtcef.ReportWire), wire
        assert loads(msg.encode_json(wire)) == loads(line)
        report = msg.report_from_wire(wire)
        assert isinstance(report, Report), report
        metrics = loads(wire.metrics) if wire.metrics else {}
        assert report.f_val == metrics.get("f_val")
        assert report.model_id == wire.model_id


def test_a_recorded_command_reencodes_byte_for_byte() -> None:
    line = next(jsonl(RUNS[0] / "factory_commands.jsonl"))
    command = msg.decode_command(line)
    assert isinstance(command, msg.FactoryCommand)
    assert msg.encode_command(command) == line


def test_a_recorded_step_report_is_normalised_with_its_score_and_named_parameters() -> None:
    line = (
        b'{"reply_id":2,"params_dict":"{\\"order\\": 4, \\"confidence\\": 0.79, \\"pmin\\": 0.003, '
        b'\\"gamma\\": 0.002}","model_id":1,"metrics":"{\\"mcc\\": 0.18, \\"f_val\\": -0.18}"}'
    )
    assert dialects.decode_report(line, "rtcef") == Report(
        reply_id=2, ok=True, model_id=1, f_val=-0.18,
        params=(("order", 4), ("confidence", 0.79), ("pmin", 0.003), ("gamma", 0.002)),
    )  # fmt: skip


def test_a_train_report_keeps_its_wrapper_and_it_is_removed() -> None:
    line = (
        b'{"reply_id":0,"params_dict":"{\\"params\\": {\\"pmin\\": 0.1}}",'
        b'"model_id":0,"metrics":""}'
    )
    assert dialects.decode_report(line, "rtcef") == Report(0, True, 0, None, (("pmin", 0.1),))


# --------------------------------------------------------------------------- seed dialect


def test_the_seed_observer_instruction_decodes_with_its_model_id() -> None:
    line = (
        b'{"id": 0, "timestamp": 1700000000000, "instruction_type": "optimize",'
        b' "instruction": "optimize", "model_id": "dynamic_v0",'
        b' "metrics": {"mcc": 0.41, "f_val": -0.41, "precision": 0.5, "recall": 0.4, "f1": 0.44}}'
    )
    assert dialects.decode_instruction(line, "seed") == Instruction(
        InstructionKind.OPTIMIZE, 1700000000000, 0, "dynamic_v0"
    )


def test_a_seed_update_params_instruction_carries_its_parameters_in_order() -> None:
    line = (
        b'{"timestamp": 5, "instruction_type": "update_params",'
        b' "parameters": {"pMin": 0.02, "gamma": 0.001}}'
    )
    assert dialects.decode_instruction(line, "seed") == Instruction(
        InstructionKind.UPDATE_PARAMS, 5, parameters=(("pMin", 0.02), ("gamma", 0.001))
    )


@pytest.mark.parametrize(
    ("word", "kind"),
    [("optimize", "OPTIMIZE"), ("OPTIMIZE", "OPTIMIZE"), ("optimise", "OPTIMIZE"),
     ("retrain", "RETRAIN"), ("train", "RETRAIN"), ("RETRAIN", "RETRAIN")],
)  # fmt: skip
def test_both_dialects_spellings_of_an_instruction_are_normalised(word: str, kind: str) -> None:
    assert msg.normalise_instruction_word(word) == InstructionKind(kind)


def test_a_seed_error_report_is_normalised_as_a_failure_with_its_message() -> None:
    line = b'{"reply_id": "cmd-7", "status": "error", "error": "No dataset available"}'
    wire = dialects.get("seed").decode_report_wire(line, msg.DEFAULT_MAX_MESSAGE_BYTES)
    assert isinstance(wire, seed.ReportWire)
    assert loads(msg.encode_json(wire)) == loads(line)
    assert msg.report_from_wire(wire) == Report("cmd-7", ok=False, error="No dataset available")


def test_a_seed_success_report_with_model_metadata_decodes() -> None:
    line = (
        b'{"reply_id": "cmd-9", "status": "success", "model_id": 4, "model_path": "/m/4",'
        b' "creation_method": "optimisation",'
        b' "params_dict": "{\\"pMin\\": 0.05, \\"gamma\\": 0.001}",'
        b' "metrics": ""}'
    )
    assert dialects.decode_report(line, "seed") == Report(
        "cmd-9", True, 4, None, (("pMin", 0.05), ("gamma", 0.001))
    )


# --------------------------------------------------------------------------- rejections


@pytest.mark.parametrize(
    ("data", "dialect", "reason"),
    [
        (b"not json", "rtcef", "instruction: JSON is malformed: invalid character (byte 4)"),
        (b'{"id": 1, "instruction": "sleep", "timestamp": 1}', "rtcef",
         "instruction: `$.instruction` has unknown instruction 'sleep'"),
        (b'{"id": "x", "instruction": "train", "timestamp": 1}', "rtcef",
         "instruction: Expected `int | null`, got `str` - at `$.id`"),
        (b'{"id": 1, "instruction": "train"}', "rtcef",
         "instruction: `$.timestamp` is missing or null (it is copied to commands)"),
        (b'{"id": 1, "timestamp": 3}', "seed", "instruction: `$.instruction` is missing or null"),
        (b'{"timestamp": 3, "instruction_type": "update_params"}', "seed",
         "instruction: update_params needs a non-empty `$.parameters` object"),
        (b'{"timestamp": 3, "instruction_type": "update_params", "parameters": {"pMin": true}}',
         "seed", "instruction: `$.parameters.pMin` must be a number, got True"),
        (b"[1, 2]", "seed", "instruction: Expected `object`, got `array`"),
    ],
)  # fmt: skip
def test_a_bad_instruction_is_rejected_with_the_field_and_the_problem(
    data: bytes, dialect: str, reason: str
) -> None:
    assert dialects.decode_instruction(data, dialect) == Rejection(reason)


@pytest.mark.parametrize(
    ("data", "dialect", "reason"),
    [
        (b'{"reply_id": 1, "params_dict": "", "model_id": 1}', "rtcef",
         "report: Object missing required field `metrics`"),
        (b'{"reply_id": 1, "params_dict": "", "model_id": 1, "metrics": "{oops"}', "rtcef",
         "report: `$.metrics` is not JSON text (Expecting property name enclosed in double quotes:"
         " line 1 column 2 (char 1))"),
        (b'{"reply_id": 1, "params_dict": "", "model_id": 1, "metrics": "{\\"f_val\\": \\"x\\"}"}',
         "rtcef", "report: `$.metrics.f_val` must be a finite number, got 'x'"),
        (b'{"reply_id": 1, "params_dict": "", "model_id": 1, "metrics": "{\\"f_val\\": NaN}"}',
         "rtcef", "report: `$.metrics.f_val` must be a finite number, got nan"),
        (b'{"reply_id": 1, "params_dict": "[1]", "model_id": 1, "metrics": ""}', "rtcef",
         "report: `$.params_dict` must hold a JSON object"),
        (b'{"reply_id": "cmd-1", "status": "maybe"}', "seed",
         "report: `$.status` must be 'success' or 'error', got 'maybe'"),
    ],
)  # fmt: skip
def test_a_bad_report_is_rejected_with_the_field_and_the_problem(
    data: bytes, dialect: str, reason: str
) -> None:
    assert dialects.decode_report(data, dialect) == Rejection(reason)


def test_an_oversized_message_is_rejected_before_parsing() -> None:
    huge = b'{"id": 1, "instruction": "train", "timestamp": 1, "pad": "' + b"x" * 2000 + b'"}'
    assert dialects.decode_instruction(huge, "rtcef", max_bytes=1000) == Rejection(
        f"instruction: message of {len(huge)} bytes exceeds the 1000 limit"
    )


def test_sync_and_command_decoders_refuse_words_the_engines_and_factories_do_not_know() -> None:
    assert msg.decode_sync(b'{"type": "stop", "timestamp": 1, "model_id": 1}') == Rejection(
        "sync: `$.type` has unknown sync type 'stop'"
    )
    assert msg.decode_command(
        b'{"train_id": -1, "optimisation_id": 0, "id": 1, "timestamp": 1, "type": "opt_go",'
        b' "params": "", "best_i": -1}'
    ) == Rejection("command: `$.type` has unknown command type 'opt_go'")


# --------------------------------------------------------------------------- encoding


def test_command_params_text_matches_the_original_services_formatting() -> None:
    assert msg.params_text((("confidence", 0.25), ("order", 4)), named=True) == (
        '{"params": {"confidence": 0.25, "order": 4}}'
    )
    assert msg.params_text((0.79, 4, 0.0033), named=False) == '{"params": [0.79, 4, 0.0033]}'
    assert msg.params_text(None, named=False) == '{"params": null}'


def test_sync_messages_encode_in_the_wire_field_order() -> None:
    encoded = msg.encode_sync(msg.SyncMessage("play", 1472774967217, 17))
    assert encoded == b'{"type":"play","timestamp":1472774967217,"model_id":17}'


def test_command_ids_round_trip_in_both_dialects() -> None:
    assert dialects.get("rtcef").command_id(17) == 17
    assert dialects.get("seed").command_id(17) == "cmd-17"
    assert [msg.command_number(x) for x in (17, "cmd-17", "cmd-x", -1, "cmd-017")] == [
        17, 17, None, None, None,
    ]  # fmt: skip


@pytest.mark.parametrize("dialect", ["seed", "rtcef"])
def test_an_encoded_instruction_decodes_back_to_itself(dialect: str) -> None:
    instruction = Instruction(InstructionKind.OPTIMIZE, 99, 3)
    assert (
        dialects.decode_instruction(
            msg.encode_json(dialects.get(dialect).encode_instruction(instruction)), dialect
        )
        == instruction
    )


def test_a_decoded_record_is_converted_directly_with_the_same_rejections_as_json() -> None:
    from dataflow.domain.messages import decode_payload

    record = {"reply_id": 7, "params_dict": "{}", "model_id": 3, "metrics": "{}"}
    assert decode_payload(record, rtcef.ReportWire, "report", 10) == rtcef.ReportWire(
        7, "{}", 3, "{}"
    )  # a record is never size-checked again: its bytes were, on the wire
    wrong = {**record, "reply_id": "7"}
    as_json = json.dumps(wrong).encode()
    assert decode_payload(wrong, rtcef.ReportWire, "report", 1000) == decode_payload(
        as_json, rtcef.ReportWire, "report", 1000
    ) == Rejection("report: Expected `int`, got `str` - at `$.reply_id`")  # fmt: skip
