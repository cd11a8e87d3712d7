"""The messages of the four topics as the state machine sees them, and what every dialect shares.

Role: the boundary between bytes and the state machine. Each topic has a
*normalised* value here (``Instruction``, ``Report``, ``FactoryCommand``,
``SyncMessage``); what differs between the families of services (their wire
structs, topic names, id format) is one record per dialect in
``dataflow.domain.dialects``, built from the helpers below. Decoding never
raises: it returns the value or a ``Rejection`` naming the field and what was
wrong with it. Commands and syncs have one wire shape in every dialect.
"""

from __future__ import annotations

import json
import math
import re
from enum import StrEnum
from typing import Any, Final, Protocol, TypeAlias, TypeVar

import msgspec

#: Parameter values are named numbers; order matters on the wire (``train`` params).
ParamValue: TypeAlias = float | int
Params: TypeAlias = tuple[tuple[str, ParamValue], ...]

#: Inputs larger than this are rejected before parsing (hostile or broken producers).
DEFAULT_MAX_MESSAGE_BYTES: Final = 1_048_576
#: 2100-01-01T00:00:00Z in milliseconds: no stream time a service stamps (seconds or
#: milliseconds since the epoch) is later. An instruction stamped later is refused
#: (``dataflow.domain.admission``): its round's commands would carry the timestamp, and the
#: original factory holds every command stamped past its newest data set, first in first out.
YEAR_2100_MS: Final = 4_102_444_800_000


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
    #: The record's timestamp in its topic (ms), when the log gave one: never the clock.
    logged_ms: int | None = None


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
    #: The record's timestamp in its topic (ms), when the log gave one: a step's cost is
    #: measured from it (``dataflow.domain.cost``), never from the clock.
    logged_ms: int | None = None
    # State version 5 (a held report is pickled with the session): new fields go last.
    #: The record's partition and offset in the report topic, when read from it: a held
    #: one refused later is dead-lettered under its own (``effects.Reject.source``).
    source: tuple[int, int] | None = None


class Deadline(msgspec.Struct, frozen=True):
    """A deadline marker read back from the report topic: ``command_id`` went unanswered.

    The controller writes one when a command's report timeout passes (a wall-clock
    matter) and decides the timeout only when it reads the marker back, in the
    report topic's own order: a report read before it answers the command, one read
    after it is late. So the decision is a function of the topic, not of the clock.
    """

    #: The wire id of the command whose deadline passed (the attempt, not the round).
    command_id: int | str
    #: The marker's timestamp in the report topic (ms), when the log gave one.
    logged_ms: int | None = None
    #: Its partition and offset in the report topic (as ``Report.source``).
    source: tuple[int, int] | None = None


class ReportWire(Protocol):
    """What every dialect's report struct has (a seed one adds ``status`` and ``error``)."""

    @property
    def reply_id(self) -> int | str:
        """The ``id`` of the command answered."""

    @property
    def params_dict(self) -> str | None:
        """JSON text: the parameters the factory used."""

    @property
    def model_id(self) -> int | str | None:
        """The model built."""

    @property
    def metrics(self) -> str | None:
        """JSON text: the scores (``f_val`` for a step)."""


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


_ENCODER: Final = msgspec.json.Encoder()
_DECODERS: dict[type, msgspec.json.Decoder[Any]] = {}


_T = TypeVar("_T")


def oversized(data: bytes, what: str, max_bytes: int) -> Rejection | None:
    """The rejection of a message too large to parse, or ``None``."""
    if len(data) > max_bytes:
        return Rejection(f"{what}: message of {len(data)} bytes exceeds the {max_bytes} limit")
    return None


#: A message as it reaches a decoder: JSON bytes, or the record another encoding (the
#: originals' Avro) was read into, converted to the wire struct directly.
Payload: TypeAlias = bytes | dict[str, Any]


def decode_payload(data: Payload, wire: type[_T], what: str, max_bytes: int) -> _T | Rejection:
    """``data`` as the wire struct ``wire``, or why not (too large, not JSON, wrong fields).

    A record (already read from Avro, whose bytes were size-checked) is converted with
    the same validation as JSON text is decoded with.
    """
    if isinstance(data, dict):
        try:
            return msgspec.convert(data, wire)
        except msgspec.ValidationError as error:
            return Rejection(f"{what}: {error}")
    too_large = oversized(data, what, max_bytes)
    if too_large is not None:
        return too_large
    decoder = _DECODERS.get(wire)
    if decoder is None:
        decoder = _DECODERS[wire] = msgspec.json.Decoder(wire)
    try:
        decoded: _T = decoder.decode(data)
    except msgspec.DecodeError as error:
        return Rejection(f"{what}: {error}")
    return decoded


def encode_json(value: msgspec.Struct) -> bytes:
    """A struct as compact JSON in its field order (byte-stable)."""
    return _ENCODER.encode(value)


# --------------------------------------------------------------------------- instructions


def normalise_instruction_word(word: str) -> InstructionKind | None:
    """Map the dialects' spellings (``optimise``, ``train``, ``OPTIMIZE``...) to a kind."""
    return _INSTRUCTION_WORDS.get(word.strip().lower())


def instruction_from(
    word: str | None,
    field: str,
    timestamp: int | None,
    ident: int | str | None,
    model_id: str | None = None,
    parameters: Params | None = None,
) -> Instruction | Rejection:
    """The instruction a record's word, timestamp and id make, or what is wrong with them."""
    if word is None:
        return Rejection(f"instruction: `$.{field}` is missing or null")
    kind = normalise_instruction_word(word)
    if kind is None:
        return Rejection(f"instruction: `$.{field}` has unknown instruction {word[:64]!r}")
    if timestamp is None:
        return Rejection("instruction: `$.timestamp` is missing or null (it is copied to commands)")
    return Instruction(kind, timestamp, ident, model_id, parameters)


# --------------------------------------------------------------------------- reports


def report_from_wire(wire: ReportWire) -> Report | Rejection:
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
    return numeric_params(tuple(params.items()), "report", "params_dict")


def numeric_params(
    items: tuple[tuple[str, object], ...], what: str, field: str
) -> Params | Rejection:
    """Named parameters whose values are all finite numbers, or the first that is not."""
    checked: list[tuple[str, ParamValue]] = []
    for name, value in items:
        where = f"{what}: `$.{field}.{name[:64]}`"
        if isinstance(value, bool) or not isinstance(value, int | float):
            return Rejection(f"{where} must be a number, got {value!r:.40}")
        if not math.isfinite(value):
            return Rejection(f"{where} must be finite, got {value!r}")
        checked.append((name, value))
    return tuple(checked)


# --------------------------------------------------------------------------- commands & sync


_NAMED_ID = re.compile(r"cmd-(0|[1-9][0-9]{0,17})")


def command_number(reply_id: int | str) -> int | None:
    """The counter a reply id names, in either id form: ``17`` or ``"cmd-17"``.

    Every dialect's ``command_id`` writes one of the two forms; a reply in the other
    form is read the same (the services never mix them). ``None`` for anything
    never issued.
    """
    if isinstance(reply_id, int):
        return reply_id if reply_id >= 0 else None
    match = _NAMED_ID.fullmatch(reply_id)
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
    return encode_json(command)


def decode_command(
    data: Payload, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> FactoryCommand | Rejection:
    """Decode a factory command (the factory stand-in and the tests read them)."""
    command = decode_payload(data, FactoryCommand, "command", max_bytes)
    if isinstance(command, FactoryCommand) and command.type not in set(CommandType):
        return Rejection(f"command: `$.type` has unknown command type {command.type[:32]!r}")
    return command


def encode_sync(sync: SyncMessage) -> bytes:
    """Encode a pause/play message."""
    return encode_json(sync)


def decode_sync(
    data: Payload, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> SyncMessage | Rejection:
    """Decode a pause/play message; any type but the two words is rejected."""
    sync = decode_payload(data, SyncMessage, "sync", max_bytes)
    if isinstance(sync, SyncMessage) and sync.type not in set(SyncType):
        return Rejection(f"sync: `$.type` has unknown sync type {sync.type[:32]!r}")
    return sync
