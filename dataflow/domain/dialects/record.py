"""What a dialect is: the record every dialect module fills in."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, TypeAlias

from dataflow.domain.messages import (
    Instruction,
    Params,
    Rejection,
    ReportWire,
)
from dataflow.domain.optimizer import Profile

#: The four topics a dialect names (the controller adds its own dead-letter topic).
TopicRole: TypeAlias = Literal["instructions", "reports", "commands", "sync"]


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
    #: Encodings it is spoken in: ``json``, and ``avro`` for the originals' schemaless Avro
    #: (its schemas and record keys are the adapters': ``dataflow.adapters.wire``).
    encodings: tuple[str, ...]
    #: The wire form of command counter ``n`` (``command_number`` reads both forms back).
    command_id: Callable[[int], int | str]
    #: Observer record -> instruction (``max_bytes`` bounds the input before parsing).
    decode_instruction: Callable[[bytes, int], Instruction | Rejection]
    #: Report bytes -> the dialect's exact report struct (re-encodes to the same JSON).
    decode_report_wire: Callable[[bytes, int], ReportWire | Rejection]
    #: Instruction -> Observer record; ``ValueError`` if the dialect cannot say it.
    encode_instruction: Callable[[Instruction], bytes]
