"""What happens to a session: the three events ``advance`` accepts."""

from __future__ import annotations

from typing import TypeAlias

import msgspec

from dataflow.domain.messages import Instruction, Report


class InstructionArrived(msgspec.Struct, frozen=True, tag="instruction"):
    """An Observer instruction, stamped with the time the flow received it."""

    instruction: Instruction
    at_ms: int


class ReportArrived(msgspec.Struct, frozen=True, tag="report"):
    """A factory report, stamped with the time the flow received it."""

    report: Report
    at_ms: int


class Tick(msgspec.Struct, frozen=True, tag="tick"):
    """Time passed: lets a session notice a deadline when nothing else arrives."""

    at_ms: int
    #: When the running process began delivering events: no deadline is due before
    #: ``since_ms + report_timeout_ms``, so a restart's downtime never counts.
    since_ms: int = 0


Event: TypeAlias = InstructionArrived | ReportArrived | Tick
