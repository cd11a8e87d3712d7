"""The ``rtcef`` dialect: the original RTCEF services (DEBS 2025).

Observer records are ``{id, instruction, timestamp}`` with ``optimise`` or
``train``; reports are four fields, two of them JSON text, and the factory
never reports a failure (an error is silence). Command ids are integers.
Spoken in JSON, or in the originals' schemaless Avro (``dataflow.adapters.wire``).
"""

from __future__ import annotations

from typing import Final

import msgspec

from dataflow.domain.dialects.record import Dialect
from dataflow.domain.messages import (
    YEAR_2100_MS,
    Instruction,
    InstructionKind,
    Payload,
    Rejection,
    decode_payload,
    instruction_from,
)
from dataflow.domain.optimizer import Dimension, Profile


class InstructionWire(msgspec.Struct, frozen=True):
    """rtcef Observer record (every field nullable, as in its Avro schema)."""

    id: int | None = None
    instruction: str | None = None
    timestamp: int | None = None


class ReportWire(msgspec.Struct, frozen=True):
    """rtcef factory report: four fields, all present, two of them JSON text."""

    reply_id: int
    params_dict: str
    model_id: int
    metrics: str


#: The original RTCEF controller's search: 15 new evaluations a round, warm-started
#: from the newest 5 observations of the previous round (or of the offline optimisation).
PROFILE: Final = Profile(
    name="rtcef",
    dimensions=(
        Dimension("confidence", "Real", 0.0, 1.0),
        Dimension("order", "Integer", 1, 5),
        Dimension("pmin", "Real", 0.0001, 0.01),
        Dimension("gamma", "Real", 0.0001, 0.01),
    ),
    budget=15,
    n_initial=5,
    acquisition="gp_hedge",
    keep=5,
    n_local=500,
    exploit_last=1,
    remeasure_best_kept=True,
    # gp_hedge's LCB at scikit-optimize's 1.96 spent a quarter of a round's model-based
    # evaluations mostly on the box's edges and corners, scoring worst of the three
    # members; the hedge cannot learn that within ten steps (README, "The optimiser").
    kappa=1.0,
)

_WORDS: Final = {InstructionKind.OPTIMIZE: "optimise", InstructionKind.RETRAIN: "train"}


def command_id(number: int) -> int:
    """The counter itself."""
    return number


def decode_instruction(data: Payload, max_bytes: int) -> Instruction | Rejection:
    """An Observer record."""
    rtcef = decode_payload(data, InstructionWire, "instruction", max_bytes)
    if isinstance(rtcef, Rejection):
        return rtcef
    return instruction_from(rtcef.instruction, "instruction", rtcef.timestamp, rtcef.id)


def decode_report_wire(data: Payload, max_bytes: int) -> ReportWire | Rejection:
    """A report in its exact wire shape."""
    return decode_payload(data, ReportWire, "report", max_bytes)


def encode_instruction(instruction: Instruction) -> InstructionWire:
    """As the original Observer writes it; it has no update_params."""
    word = _WORDS.get(instruction.kind)
    if word is None:
        raise ValueError("the rtcef dialect has no update_params instruction")
    ident = instruction.id if isinstance(instruction.id, int) else None
    return InstructionWire(ident, word, instruction.timestamp)


DIALECT: Final = Dialect(
    name="rtcef",
    summary="the original RTCEF services",
    topics={
        "instructions": "optimiser_instructions",
        "reports": "factory_reports",
        "commands": "factory_commands",
        "sync": "engine_sync",
    },
    profile=PROFILE,
    initial_params=(("confidence", 0.25), ("order", 3), ("pmin", 0.005), ("gamma", 0.005)),
    encodings=("json", "avro"),
    command_id=command_id,
    decode_instruction=decode_instruction,
    decode_report_wire=decode_report_wire,
    encode_instruction=encode_instruction,
    # Its Observer stamps stream time in seconds (maritime) or milliseconds (the recorded
    # card runs, 2016-2017): none is later than 2100 in milliseconds.
    latest_timestamp=YEAR_2100_MS,
)
