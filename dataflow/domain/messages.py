"""Wire messages of the four topics, for both dialects, and their pure decode/encode.

Role: the boundary between bytes and the state machine. Each topic has a *wire*
struct per dialect that mirrors exactly what the other services send or read
(field names and order, so re-encoding is byte-stable), and a *normalised*
value that the state machine works with. Decoding never raises: it returns the
value or a ``Rejection`` naming the field and what was wrong with it.

Dialects (see ``shared/docs/wire-formats.md``):

* ``seed``: the Flink/Java services. Command ids are strings ``"cmd-N"``.
* ``rtcef``: the original RTCEF services. Command ids are integers.
"""

from __future__ import annotations

import json
import math
import re
from enum import StrEnum
from typing import Any, Final, Literal, TypeAlias, TypeVar

import msgspec

Dialect: TypeAlias = Literal["seed", "rtcef"]
DIALECTS: Final = ("seed", "rtcef")

#: Parameter values are named numbers; order matters on the wire (``train`` params).
ParamValue: TypeAlias = float | int
Params: TypeAlias = tuple[tuple[str, ParamValue], ...]

#: Inputs larger than this are rejected before parsing (hostile or broken producers).
DEFAULT_MAX_MESSAGE_BYTES: Final = 1_048_576


class InstructionKind(StrEnum):
    """What the Observer asks for."""

    OPTIMIZE = "OPTIMIZE"
    RETRAIN = "RETRAIN"
    UPDATE_PARAMS = "UPDATE_PARAMS"


class CommandType(StrEnum):
    """The four factory command types (same words in both dialects)."""

    TRAIN = "train"
    OPT_INITIALISE = "opt_initialise"
    OPT_STEP = "opt_step"
    OPT_FINALISE = "opt_finalise"


class SyncType(StrEnum):
    """The only two words the engines understand (the rtcef engine crashes on others)."""

    PAUSE = "pause"
    PLAY = "play"


_INSTRUCTION_WORDS: Final[dict[str, InstructionKind]] = {
    "optimize": InstructionKind.OPTIMIZE,
    "optimise": InstructionKind.OPTIMIZE,
    "retrain": InstructionKind.RETRAIN,
    "train": InstructionKind.RETRAIN,
    "update_params": InstructionKind.UPDATE_PARAMS,
}


# --------------------------------------------------------------------------- values


class Rejection(msgspec.Struct, frozen=True):
    """Why an input cannot be used. ``reason`` names the field and the problem."""

    reason: str


class Instruction(msgspec.Struct, frozen=True):
    """An Observer instruction, normalised across dialects."""

    kind: InstructionKind
    #: Stream time of the score that triggered it; copied into every command, never interpreted.
    timestamp: int
    id: int | str | None = None
    #: seed only: which model the instruction is about (the session key in multi-model mode).
    model_id: str | None = None
    #: UPDATE_PARAMS only: the new current-best parameters.
    parameters: Params | None = None


class Report(msgspec.Struct, frozen=True):
    """A ModelFactory report, normalised: JSON-in-a-string fields already parsed."""

    reply_id: int | str
    ok: bool
    model_id: int | str | None = None
    #: The score of an ``opt_step`` (``-MCC``, minimised); ``None`` when absent.
    f_val: float | None = None
    #: The parameters the factory says it used (``params_dict``), wrapper removed.
    params: Params | None = None
    error: str | None = None


class FactoryCommand(msgspec.Struct, frozen=True):
    """A command to the ModelFactory. Field order is the wire order of both dialects."""

    train_id: int
    optimisation_id: int
    id: int | str
    timestamp: int
    type: str
    #: JSON text: ``{"params": {...}}``, ``{"params": [...]}`` or ``{"params": null}``.
    params: str
    best_i: int


class SyncMessage(msgspec.Struct, frozen=True):
    """A pause/play message to the Engine."""

    type: str
    timestamp: int
    model_id: int | str


# --------------------------------------------------------------------------- wire shapes


class RtcefInstructionWire(msgspec.Struct, frozen=True):
    """rtcef Observer record (every field nullable, as in its Avro schema)."""

    id: int | None = None
    instruction: str | None = None
    timestamp: int | None = None


class SeedInstructionWire(msgspec.Struct, frozen=True, omit_defaults=True):
    """seed Observer record; everything but the instruction word and timestamp optional."""

    id: int | str | None = None
    timestamp: int | None = None
    instruction_type: str | None = None
    instruction: str | None = None
    model_id: str | None = None
    metrics: dict[str, float | int | str | None] | None = None
    parameters: dict[str, Any] | None = None
    hyperparameters: dict[str, float | int | str | None] | None = None


class RtcefReportWire(msgspec.Struct, frozen=True):
    """rtcef factory report: four fields, all present, two of them JSON text."""

    reply_id: int
    params_dict: str
    model_id: int
    metrics: str


class SeedReportWire(msgspec.Struct, frozen=True, omit_defaults=True):
    """seed factory report: like rtcef plus status, error and model metadata."""

    reply_id: int | str
    params_dict: str | None = None
    model_id: int | str | None = None
    metrics: str | None = None
    status: str | None = None
    error: str | None = None
    model_path: str | None = None
    creation_method: str | None = None


_DECODERS: Final[dict[type, msgspec.json.Decoder[Any]]] = {
    RtcefInstructionWire: msgspec.json.Decoder(RtcefInstructionWire),
    SeedInstructionWire: msgspec.json.Decoder(SeedInstructionWire),
    RtcefReportWire: msgspec.json.Decoder(RtcefReportWire),
    SeedReportWire: msgspec.json.Decoder(SeedReportWire),
    FactoryCommand: msgspec.json.Decoder(FactoryCommand),
    SyncMessage: msgspec.json.Decoder(SyncMessage),
}
_ENCODER: Final = msgspec.json.Encoder()


_T = TypeVar("_T")


def oversized(data: bytes, what: str, max_bytes: int) -> Rejection | None:
    """The rejection of a message too large to parse, or ``None``."""
    if len(data) > max_bytes:
        return Rejection(f"{what}: message of {len(data)} bytes exceeds the {max_bytes} limit")
    return None


def _decode_wire(data: bytes, wire: type[_T], what: str, max_bytes: int) -> _T | Rejection:
    too_large = oversized(data, what, max_bytes)
    if too_large is not None:
        return too_large
    try:
        decoded: _T = _DECODERS[wire].decode(data)
    except msgspec.DecodeError as error:
        return Rejection(f"{what}: {error}")
    return decoded


# --------------------------------------------------------------------------- instructions


def normalise_instruction_word(word: str) -> InstructionKind | None:
    """Map the dialects' spellings (``optimise``, ``train``, ``OPTIMIZE``...) to a kind."""
    return _INSTRUCTION_WORDS.get(word.strip().lower())


def decode_instruction(
    data: bytes, dialect: Dialect, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> Instruction | Rejection:
    """Decode an Observer instruction; unknown instruction words are rejected, not guessed."""
    if dialect == "rtcef":
        rtcef = _decode_wire(data, RtcefInstructionWire, "instruction", max_bytes)
        if isinstance(rtcef, Rejection):
            return rtcef
        return _instruction_from(rtcef.instruction, "instruction", rtcef.timestamp, rtcef.id)
    seed = _decode_wire(data, SeedInstructionWire, "instruction", max_bytes)
    if isinstance(seed, Rejection):
        return seed
    word, field = (
        (seed.instruction_type, "instruction_type")
        if seed.instruction_type is not None
        else (seed.instruction, "instruction")
    )
    parameters = None
    if seed.parameters is not None:
        checked = _check_params(tuple(seed.parameters.items()), "instruction", "parameters")
        if isinstance(checked, Rejection):
            return checked
        parameters = checked
    decoded = _instruction_from(word, field, seed.timestamp, seed.id, seed.model_id, parameters)
    if (
        isinstance(decoded, Instruction)
        and decoded.kind is InstructionKind.UPDATE_PARAMS
        and not decoded.parameters
    ):
        return Rejection("instruction: update_params needs a non-empty `$.parameters` object")
    return decoded


def _instruction_from(
    word: str | None,
    field: str,
    timestamp: int | None,
    ident: int | str | None,
    model_id: str | None = None,
    parameters: Params | None = None,
) -> Instruction | Rejection:
    if word is None:
        return Rejection(f"instruction: `$.{field}` is missing or null")
    kind = normalise_instruction_word(word)
    if kind is None:
        return Rejection(f"instruction: `$.{field}` has unknown instruction {word[:64]!r}")
    if timestamp is None:
        return Rejection("instruction: `$.timestamp` is missing or null (it is copied to commands)")
    return Instruction(kind, timestamp, ident, model_id, parameters)


def encode_instruction(instruction: Instruction, dialect: Dialect) -> bytes:
    """Encode an instruction as the dialect's Observer would (used by the stand-ins)."""
    if dialect == "rtcef":
        word = {"OPTIMIZE": "optimise", "RETRAIN": "train"}.get(instruction.kind)
        if word is None:
            raise ValueError("the rtcef dialect has no update_params instruction")
        ident = instruction.id if isinstance(instruction.id, int) else None
        return _ENCODER.encode(RtcefInstructionWire(ident, word, instruction.timestamp))
    return _ENCODER.encode(
        SeedInstructionWire(
            id=instruction.id,
            timestamp=instruction.timestamp,
            instruction_type=instruction.kind.lower(),
            instruction=instruction.kind.lower(),
            model_id=instruction.model_id,
            parameters=dict(instruction.parameters) if instruction.parameters else None,
        )
    )


# --------------------------------------------------------------------------- reports


def decode_report(
    data: bytes, dialect: Dialect, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> Report | Rejection:
    """Decode a factory report, parsing its JSON-text fields (``metrics``, ``params_dict``)."""
    wire = decode_report_wire(data, dialect, max_bytes)
    if isinstance(wire, Rejection):
        return wire
    return report_from_wire(wire)


def decode_report_wire(
    data: bytes, dialect: Dialect, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> RtcefReportWire | SeedReportWire | Rejection:
    """Decode a report to its exact wire shape (re-encodes to the same JSON object)."""
    if dialect == "rtcef":
        return _decode_wire(data, RtcefReportWire, "report", max_bytes)
    return _decode_wire(data, SeedReportWire, "report", max_bytes)


def report_from_wire(wire: RtcefReportWire | SeedReportWire) -> Report | Rejection:
    """Normalise a wire report: parse its metrics and parameters, read its status."""
    status = getattr(wire, "status", None)
    if status is not None and status not in ("success", "error"):
        return Rejection(f"report: `$.status` must be 'success' or 'error', got {status[:32]!r}")
    if status == "error":
        error = getattr(wire, "error", None) or "factory reported an error without a message"
        return Report(wire.reply_id, ok=False, model_id=wire.model_id, error=error)
    f_val = _parse_f_val(wire.metrics or "")
    if isinstance(f_val, Rejection):
        return f_val
    params = _parse_params_dict(wire.params_dict or "")
    if isinstance(params, Rejection):
        return params
    return Report(wire.reply_id, ok=True, model_id=wire.model_id, f_val=f_val, params=params)


def _parse_f_val(text: str) -> float | Rejection | None:
    if not text.strip():
        return None
    try:
        metrics = json.loads(text)
    except ValueError as error:
        return Rejection(f"report: `$.metrics` is not JSON text ({error})")
    if not isinstance(metrics, dict):
        return Rejection("report: `$.metrics` must hold a JSON object")
    if "f_val" not in metrics:
        return None
    value = metrics["f_val"]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return Rejection(f"report: `$.metrics.f_val` must be a finite number, got {value!r:.40}")
    return float(value)


def _parse_params_dict(text: str) -> Params | Rejection | None:
    if not text.strip():
        return None
    try:
        params = json.loads(text)
    except ValueError as error:
        return Rejection(f"report: `$.params_dict` is not JSON text ({error})")
    # rtcef train reports keep the command's {"params": {...}} wrapper; steps do not.
    if isinstance(params, dict) and set(params) == {"params"}:
        params = params["params"]
    if params is None:
        return None
    if not isinstance(params, dict):
        return Rejection("report: `$.params_dict` must hold a JSON object")
    return _check_params(tuple(params.items()), "report", "params_dict")


def _check_params(
    items: tuple[tuple[str, object], ...], what: str, field: str
) -> Params | Rejection:
    checked: list[tuple[str, ParamValue]] = []
    for name, value in items:
        where = f"{what}: `$.{field}.{name[:64]}`"
        if isinstance(value, bool) or not isinstance(value, int | float):
            return Rejection(f"{where} must be a number, got {value!r:.40}")
        if not math.isfinite(value):
            return Rejection(f"{where} must be finite, got {value!r}")
        checked.append((name, value))
    return tuple(checked)


def encode_report(report: RtcefReportWire | SeedReportWire) -> bytes:
    """Encode a wire report (used by the factory stand-in)."""
    return _ENCODER.encode(report)


# --------------------------------------------------------------------------- commands & sync


def command_id(dialect: Dialect, number: int) -> int | str:
    """The wire form of command number ``number``: ``17`` (rtcef) or ``"cmd-17"`` (seed)."""
    return number if dialect == "rtcef" else f"cmd-{number}"


_SEED_ID = re.compile(r"cmd-(0|[1-9][0-9]{0,17})")


def command_number(reply_id: int | str) -> int | None:
    """Invert ``command_id`` for either dialect; ``None`` for anything we never issue."""
    if isinstance(reply_id, int):
        return reply_id if reply_id >= 0 else None
    match = _SEED_ID.fullmatch(reply_id)
    return int(match.group(1)) if match else None


def params_text(params: Params | tuple[ParamValue, ...] | None, *, named: bool) -> str:
    """The ``params`` JSON text of a command, formatted as the original Python services did."""
    value: dict[str, ParamValue] | list[ParamValue] | None
    if params is None:
        value = None
    elif named:
        value = dict(params)  # type: ignore[arg-type]
    else:
        value = list(params)  # type: ignore[arg-type]
    return json.dumps({"params": value})


def encode_command(command: FactoryCommand) -> bytes:
    """Encode a command; byte-stable (fixed field order, shortest float repr)."""
    return _ENCODER.encode(command)


def decode_command(
    data: bytes, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> FactoryCommand | Rejection:
    """Decode a factory command (the factory stand-in and the tests read them)."""
    command = _decode_wire(data, FactoryCommand, "command", max_bytes)
    if isinstance(command, FactoryCommand) and command.type not in set(CommandType):
        return Rejection(f"command: `$.type` has unknown command type {command.type[:32]!r}")
    return command


def encode_sync(sync: SyncMessage) -> bytes:
    """Encode a pause/play message."""
    return _ENCODER.encode(sync)


def decode_sync(data: bytes, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> SyncMessage | Rejection:
    """Decode a pause/play message; any type but the two words is rejected."""
    sync = _decode_wire(data, SyncMessage, "sync", max_bytes)
    if isinstance(sync, SyncMessage) and sync.type not in set(SyncType):
        return Rejection(f"sync: `$.type` has unknown sync type {sync.type[:32]!r}")
    return sync
