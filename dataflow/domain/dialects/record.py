"""What a dialect is: the record every dialect module fills in."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, TypeAlias

import msgspec

from dataflow.domain.messages import (
    Instruction,
    Params,
    Payload,
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
    #: Observer record (JSON bytes or a decoded record) -> instruction (``max_bytes``
    #: bounds JSON bytes before parsing).
    decode_instruction: Callable[[Payload, int], Instruction | Rejection]
    #: Report (JSON bytes or a decoded record) -> the dialect's exact report struct.
    decode_report_wire: Callable[[Payload, int], ReportWire | Rejection]
    #: Instruction -> the Observer's record struct; ``ValueError`` if it cannot say it.
    encode_instruction: Callable[[Instruction], msgspec.Struct]
    #: The latest plausible instruction timestamp (stream time, in the finest unit its
    #: services stamp): a later one is refused (``INSTRUCTION_MAX_TIMESTAMP`` overrides it).
    latest_timestamp: int
