"""The ``seed`` dialect: the Flink/Java services of the PyFlink port (``flink-rtcef``).

Observer records carry ``instruction_type`` (or ``instruction``), optional
``model_id`` and ``parameters`` (UPDATE_PARAMS); reports carry ``status`` and
``error``, and the factory answers failures (even an ``opt_initialise``).
Command ids are strings ``"cmd-N"``.
"""

from __future__ import annotations

from typing import Any, Final

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
    numeric_params,
)
from dataflow.domain.optimizer import Dimension, Profile


class InstructionWire(msgspec.Struct, frozen=True, omit_defaults=True):
    """seed Observer record; everything but the instruction word and timestamp optional."""

    id: int | str | None = None
    timestamp: int | None = None
    instruction_type: str | None = None
    instruction: str | None = None
    model_id: str | None = None
    metrics: dict[str, float | int | str | None] | None = None
    parameters: dict[str, Any] | None = None
    hyperparameters: dict[str, float | int | str | None] | None = None


class ReportWire(msgspec.Struct, frozen=True, omit_defaults=True):
    """seed factory report: like rtcef plus status, error and model metadata."""

    reply_id: int | str
    params_dict: str | None = None
    model_id: int | str | None = None
    metrics: str | None = None
    status: str | None = None
    error: str | None = None
    model_path: str | None = None
    creation_method: str | None = None


#: The seed (PyFlink) controller's search: two continuous parameters, a fresh GP each round.
PROFILE: Final = Profile(
    name="seed",
    dimensions=(
        Dimension("pMin", "Real", 0.001, 0.1),
        Dimension("gamma", "Real", 0.0, 0.005),
    ),
    budget=10,
    n_initial=5,
    acquisition="EI",
    n_local=500,
    exploit_last=1,
)


def command_id(number: int) -> str:
    """``"cmd-17"``."""
    return f"cmd-{number}"


def decode_instruction(data: Payload, max_bytes: int) -> Instruction | Rejection:
    """An Observer record: its word from ``instruction_type``, else ``instruction``."""
    seed = decode_payload(data, InstructionWire, "instruction", max_bytes)
    if isinstance(seed, Rejection):
        return seed
    word, field = (
        (seed.instruction_type, "instruction_type")
        if seed.instruction_type is not None
        else (seed.instruction, "instruction")
    )
    parameters = None
    if seed.parameters is not None:
        checked = numeric_params(tuple(seed.parameters.items()), "instruction", "parameters")
        if isinstance(checked, Rejection):
            return checked
        parameters = checked
    decoded = instruction_from(word, field, seed.timestamp, seed.id, seed.model_id, parameters)
    if (
        isinstance(decoded, Instruction)
        and decoded.kind is InstructionKind.UPDATE_PARAMS
        and not decoded.parameters
    ):
        return Rejection("instruction: update_params needs a non-empty `$.parameters` object")
    return decoded


def decode_report_wire(data: Payload, max_bytes: int) -> ReportWire | Rejection:
    """A report in its exact wire shape."""
    return decode_payload(data, ReportWire, "report", max_bytes)


def encode_instruction(instruction: Instruction) -> InstructionWire:
    """As the seed Observer writes it (both word fields, lower case)."""
    return InstructionWire(
        id=instruction.id,
        timestamp=instruction.timestamp,
        instruction_type=instruction.kind.lower(),
        instruction=instruction.kind.lower(),
        model_id=instruction.model_id,
        parameters=dict(instruction.parameters) if instruction.parameters else None,
    )


DIALECT: Final = Dialect(
    name="seed",
    summary="the Flink/Java services of the PyFlink port",
    topics={
        "instructions": "instructions",
        "reports": "factory_reports",
        "commands": "factory_commands",
        "sync": "enginesync",
    },
    profile=PROFILE,
    initial_params=(("pMin", 0.05), ("gamma", 0.001)),
    encodings=("json",),
    command_id=command_id,
    decode_instruction=decode_instruction,
    decode_report_wire=decode_report_wire,
    encode_instruction=encode_instruction,
    # Its Observer stamps stream time in seconds (the maritime services) or milliseconds
    # (its mock producer): none is later than 2100 in milliseconds.
    latest_timestamp=YEAR_2100_MS,
)
