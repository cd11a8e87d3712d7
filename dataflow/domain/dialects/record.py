"""What a dialect is: the record every dialect module fills in."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, TypeAlias

import msgspec

from dataflow.domain.messages import (
    FactoryCommand,
    Instruction,
    InstructionKind,
    Params,
    Rejection,
    ReportWire,
)
from dataflow.domain.optimizer import Profile

#: The four topics a dialect names (the controller adds its own dead-letter topic).
TopicRole: TypeAlias = Literal["instructions", "reports", "commands", "sync"]


@dataclass(frozen=True)
class AvroTopic:
    """How a dialect's services write a topic in schemaless Avro."""

    #: File stem of the schemas, ``<stem>-key.avsc`` and ``<stem>-value.avsc``, in
    #: ``dataflow/adapters/schemas/<dialect>/``.
    stem: str
    #: The record fields the key is built from, in order.
    key_fields: tuple[str, ...]


@dataclass(frozen=True)
class Dialect:
    """Everything that differs between two families of services. Pure data and functions."""

    name: str
    #: One line for ``CONTROLLER_DIALECT``'s help and the README.
    summary: str
    #: Default topic names by role.
    topics: Mapping[TopicRole, str]
    #: The optimiser profile its controller used (``OPTIMISER_PROFILE`` defaults to it).
    profile: Profile
    #: The current best parameters before any round, in the services' wire order.
    initial_params: Params
    #: Encodings it is spoken in: ``json``, and ``avro`` for the originals' schemaless Avro.
    encodings: tuple[str, ...]
    #: Per topic, its Avro schemas and key (only if ``avro`` is one of the encodings).
    avro: Mapping[TopicRole, AvroTopic] | None
    #: The wire form of command counter ``n`` (``command_number`` reads both forms back).
    command_id: Callable[[int], int | str]
    #: Observer record -> instruction (``max_bytes`` bounds the input before parsing).
    decode_instruction: Callable[[bytes, int], Instruction | Rejection]
    #: Report bytes -> the dialect's exact report struct (re-encodes to the same JSON).
    decode_report_wire: Callable[[bytes, int], ReportWire | Rejection]
    # ---- what the stand-in services (``dataflow.sim``) write as this dialect's services
    #: Instruction -> Observer record; ``ValueError`` if the dialect cannot say it.
    encode_instruction: Callable[[Instruction], bytes]
    #: Instruction kinds its Observer sends, and whether its records name a ``model_id``.
    instruction_kinds: frozenset[InstructionKind]
    model_ids: bool
    #: A successful report: (command, model id, params_dict text, metrics text, how the
    #: model was made: "retrain", "optimisation" or None for a step) -> report struct.
    success_report: Callable[[FactoryCommand, int, str, str, str | None], msgspec.Struct]
    #: A failure report for a command, or None if its factory stays silent on errors.
    error_report: Callable[[FactoryCommand, str], msgspec.Struct | None]
    #: The ``params_dict`` text its factory reports for a ``train`` command.
    train_params_dict: Callable[[FactoryCommand], str]
