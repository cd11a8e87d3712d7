"""Wire dialects: one record per family of services, and the registry of them.

Role: everything that differs between the services the controller talks to, in
one place per dialect (every field of their messages is in the dialect modules):

* ``seed``: the Flink/Java services of the PyFlink port. Command ids ``"cmd-N"``.
* ``rtcef``: the original RTCEF services (DEBS 2025). Command ids are integers.

A ``Dialect`` names its wire structs (through its decode/encode functions),
its default topics, its optimiser profile and starting parameters, the
encodings it is spoken in and its command id format. What its stand-in
services write is ``dataflow.sim.services``'s; the Avro schemas and keys of a
dialect that speaks Avro are ``dataflow.adapters.wire``'s. Adding a dialect is
one new module that builds a ``Dialect``, one line in ``REGISTRY``, and its
stand-ins' record.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from dataflow.domain.dialects import rtcef, seed
from dataflow.domain.dialects.record import Dialect, TopicRole
from dataflow.domain.messages import (
    DEFAULT_MAX_MESSAGE_BYTES,
    Instruction,
    Payload,
    Rejection,
    Report,
    report_from_wire,
)
from dataflow.domain.optimizer import Profile

__all__ = ["DIALECTS", "PROFILES", "REGISTRY", "Dialect", "TopicRole", "get"]

#: Every dialect, by name. The first is the default.
REGISTRY: Final[Mapping[str, Dialect]] = {d.name: d for d in (seed.DIALECT, rtcef.DIALECT)}
DIALECTS: Final = tuple(REGISTRY)
#: Every dialect's optimiser profile, by profile name (``OPTIMISER_PROFILE`` chooses one).
PROFILES: Final[Mapping[str, Profile]] = {d.profile.name: d.profile for d in REGISTRY.values()}
if len(PROFILES) != len(REGISTRY):
    raise ValueError("two dialects' profiles share a name: name each profile after its dialect")


def get(name: str) -> Dialect:
    """The dialect called ``name``; ``KeyError`` naming the known ones otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown dialect {name!r}; known: {list(REGISTRY)}") from None


def decode_instruction(
    data: Payload, dialect: str, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> Instruction | Rejection:
    """An Observer instruction in ``dialect``; unknown words are rejected, not guessed."""
    return get(dialect).decode_instruction(data, max_bytes)


def decode_report(
    data: Payload, dialect: str, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> Report | Rejection:
    """A factory report in ``dialect``, its JSON-text fields (metrics, params) parsed."""
    wire = get(dialect).decode_report_wire(data, max_bytes)
    return wire if isinstance(wire, Rejection) else report_from_wire(wire)
