"""What happens to a session: the four events ``advance`` accepts."""

from __future__ import annotations

from typing import TypeAlias

import msgspec

from dataflow.domain.messages import Deadline, Instruction, Report


class InstructionArrived(msgspec.Struct, frozen=True, tag="instruction"):
    """An Observer instruction, stamped with the time the flow received it."""

    instruction: Instruction
    at_ms: int


class ReportArrived(msgspec.Struct, frozen=True, tag="report"):
    """A factory report, stamped with the time the flow received it."""

    report: Report
    at_ms: int


class DeadlinePassed(msgspec.Struct, frozen=True, tag="deadline"):
    """A deadline marker read back from the report topic (the controller wrote it)."""

    deadline: Deadline
    at_ms: int


class Tick(msgspec.Struct, frozen=True, tag="tick"):
    """Time passed: a session whose command is overdue asks for a deadline marker.

    A tick decides nothing: the timeout is decided when the marker is read back.
    """

    at_ms: int
    #: When the running process began delivering events: no deadline is due before
    #: ``since_ms + report_timeout_ms``, so a restart's downtime never counts.
    since_ms: int = 0


Event: TypeAlias = InstructionArrived | ReportArrived | DeadlinePassed | Tick
