"""The transition table: (phase, event type) -> what runs and where it may lead.

Role: the one place that says which handler runs for each event in each phase
and which phases it may leave the session in; ``advance`` refuses any other
outcome. ``STARTS`` says how each admitted instruction begins when its turn
comes (the queue's head, once the session is IDLE). ``mermaid`` draws both: the
diagram in the README is generated from here and checked by a test.

Every instruction is admitted (or coalesced) the same way in every phase. A
report or deadline marker for a command not sent yet is held (``or_hold``);
otherwise a report is only ever the answer to the outstanding command of the
phase it arrives in (or a duplicate, stale or foreign one), and a deadline
marker times that command out if it is still awaited. A tick never changes the
phase: it only asks for a deadline marker. INITIALIZING and OPTIMIZING have no
rows: a session passes through them within one ``advance`` and never rests there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

from dataflow.domain import handlers as h
from dataflow.domain.config import MachineConfig
from dataflow.domain.events import DeadlinePassed, InstructionArrived, ReportArrived, Tick
from dataflow.domain.messages import Instruction, InstructionKind
from dataflow.domain.state import Phase, Session

E = TypeVar("E", InstructionArrived, ReportArrived, DeadlinePassed, Tick)


@dataclass(frozen=True)
class Row(Generic[E]):
    """What an event does in a phase: its handler, and the phases it may lead to."""

    handler: Callable[[Session, E, MachineConfig], h.Result]
    to: frozenset[Phase]


@dataclass(frozen=True)
class Start:
    """How an admitted instruction begins when it reaches the head of an IDLE session's queue."""

    handler: Callable[[Session, Instruction, int, MachineConfig], h.Result]
    to: Phase


IDLE, TRAINING, WAITING, FINALIZING = (
    Phase.IDLE, Phase.TRAINING, Phase.WAITING_FOR_REPORT, Phase.FINALIZING,
)  # fmt: skip
#: The phases a session rests in; the others are passed through within one event.
RESTING: Final = (IDLE, TRAINING, WAITING, FINALIZING)
_ROUND: Final = (TRAINING, WAITING, FINALIZING)

ON_INSTRUCTION: Final[Mapping[Phase, Row[InstructionArrived]]] = {
    phase: Row(h.admit, frozenset({phase})) for phase in RESTING
}
ON_REPORT: Final[Mapping[Phase, Row[ReportArrived]]] = {
    IDLE: Row(h.or_hold(h.reject_idle_report), frozenset({IDLE})),
    TRAINING: Row(h.or_hold(h.on_final_report), frozenset({TRAINING, IDLE})),
    WAITING: Row(h.or_hold(h.on_step_report), frozenset({WAITING, FINALIZING, IDLE})),
    FINALIZING: Row(h.or_hold(h.on_final_report), frozenset({FINALIZING, IDLE})),
}
ON_DEADLINE: Final[Mapping[Phase, Row[DeadlinePassed]]] = {
    IDLE: Row(h.or_hold(h.stale_deadline), frozenset({IDLE})),
    **{phase: Row(h.or_hold(h.on_deadline), frozenset({phase, IDLE})) for phase in _ROUND},
}
ON_TICK: Final[Mapping[Phase, Row[Tick]]] = {
    IDLE: Row(h.nothing, frozenset({IDLE})),
    **{phase: Row(h.on_tick, frozenset({phase})) for phase in _ROUND},
}
STARTS: Final[Mapping[InstructionKind, Start]] = {
    InstructionKind.RETRAIN: Start(h.begin_train, TRAINING),
    InstructionKind.OPTIMIZE: Start(h.begin_optimise, WAITING),
    InstructionKind.UPDATE_PARAMS: Start(h.update_params, IDLE),
}


def transitions() -> dict[tuple[Phase, type], Row[Any]]:
    """Every row, keyed by (phase, event type): the whole machine, as ``advance`` reads it."""
    return {
        **{(phase, InstructionArrived): row for phase, row in ON_INSTRUCTION.items()},
        **{(phase, ReportArrived): row for phase, row in ON_REPORT.items()},
        **{(phase, DeadlinePassed): row for phase, row in ON_DEADLINE.items()},
        **{(phase, Tick): row for phase, row in ON_TICK.items()},
    }


def mermaid() -> str:
    """The machine as a Mermaid state diagram: one edge per (row, phase it may lead to)."""
    lines = ["stateDiagram-v2", f"    [*] --> {IDLE.value}"]
    for (phase, event), row in transitions().items():
        for to in sorted(row.to, key=RESTING.index):
            lines.append(f"    {phase.value} --> {to.value} : {event.__name__} / "
                         f"{row.handler.__name__}")  # fmt: skip
    for kind, start in STARTS.items():
        lines.append(f"    {IDLE.value} --> {start.to.value} : queued {kind.value} / "
                     f"{start.handler.__name__}")  # fmt: skip
    return "\n".join(lines) + "\n"
