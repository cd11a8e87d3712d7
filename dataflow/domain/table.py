"""The transition table: (phase, input class) -> one handler and one next phase.

Role: the machine, as ``advance`` runs it (h11's ``_state.py`` is the model).
``classify`` reads each event once into an input class (``dataflow.domain.inputs``);
``TABLE`` gives, for the phase the session rests in and that class, the handler
that runs and the phase the session rests in next. Handlers never set the phase:
``advance`` does, from the row, so the session can take no transition the table
does not list (and a (phase, class) pair without a row is an
``IllegalTransitionError``). ``STARTS`` says how the queue's head begins once the
session is idle. ``mermaid`` draws both; the README's diagram is generated from
here and checked by a test.

Every instruction is admitted or refused the same way in every phase. A report or
deadline marker for a command not sent yet is early (held), one that answers
nothing awaited is stray; a tick only ever asks for a deadline marker.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

from dataflow.domain import admission, answers, holding, retries, rounds
from dataflow.domain import inputs as i
from dataflow.domain.config import MachineConfig
from dataflow.domain.events import DeadlinePassed, Event, InstructionArrived, ReportArrived
from dataflow.domain.messages import Instruction, InstructionKind
from dataflow.domain.results import Result
from dataflow.domain.state import Phase, Session

C = TypeVar("C")


@dataclass(frozen=True)
class Row(Generic[C]):
    """What an input of a class does in a phase: its handler, and the phase it leads to."""

    handler: Callable[[Session, C, MachineConfig], Result]
    to: Phase


@dataclass(frozen=True)
class Start:
    """How an admitted instruction begins when it reaches the head of an IDLE session's queue."""

    handler: Callable[[Session, Instruction, int, MachineConfig], Result]
    to: Phase


IDLE, TRAINING, WAITING, FINALIZING = (
    Phase.IDLE, Phase.TRAINING, Phase.WAITING_FOR_REPORT, Phase.FINALIZING,
)  # fmt: skip
#: The phases a session rests in: all of them.
RESTING: Final = (IDLE, TRAINING, WAITING, FINALIZING)
_ROUND: Final = (TRAINING, WAITING, FINALIZING)


def classify(state: Session, event: Event, config: MachineConfig) -> i.Input:
    """What ``event`` is to the session: read once, by the module of its job."""
    if isinstance(event, InstructionArrived):
        return admission.read_instruction(state, event, config)
    if isinstance(event, ReportArrived):
        return answers.read_report(state, event, config)
    if isinstance(event, DeadlinePassed):
        return answers.read_deadline(state, event, config)
    return retries.read_tick(state, event, config)


def _everywhere(cls: type, handler: Callable[..., Result]) -> dict[tuple[Phase, type], Row[Any]]:
    """A row that leaves every resting phase as it is."""
    return {(phase, cls): Row(handler, phase) for phase in RESTING}


def _in_rounds(cls: type, handler: Callable[..., Result]) -> dict[tuple[Phase, type], Row[Any]]:
    """A row for every phase of a round, leaving it as it is."""
    return {(phase, cls): Row(handler, phase) for phase in _ROUND}


TABLE: Final[Mapping[tuple[Phase, type], Row[Any]]] = {
    **_everywhere(i.Admitted, admission.admit),
    **_everywhere(i.Refused, admission.refuse),
    **_everywhere(i.Early, holding.hold),
    **_everywhere(i.Stray, answers.reject),
    **_everywhere(i.Spent, retries.nothing),
    **_everywhere(i.Quiet, retries.nothing),
    **_in_rounds(i.Due, retries.mark_overdue),
    **_in_rounds(i.Resend, retries.resend),
    **{(phase, i.GiveUp): Row(retries.give_up, IDLE) for phase in _ROUND},
    (TRAINING, i.Built): Row(rounds.complete, IDLE),
    (WAITING, i.Scored): Row(rounds.next_step, WAITING),
    (WAITING, i.ScoredLast): Row(rounds.finalise, FINALIZING),
    (WAITING, i.InitialiseRefused): Row(rounds.abort_refused, IDLE),
    (FINALIZING, i.InitialiseRefused): Row(rounds.abort_refused, IDLE),
    (FINALIZING, i.Built): Row(rounds.complete, IDLE),
}
STARTS: Final[Mapping[InstructionKind, Start]] = {
    InstructionKind.RETRAIN: Start(rounds.begin_train, TRAINING),
    InstructionKind.OPTIMIZE: Start(rounds.begin_optimise, WAITING),
    InstructionKind.UPDATE_PARAMS: Start(rounds.update_params, IDLE),
}


def mermaid() -> str:
    """The machine as a Mermaid state diagram: one edge per row, labelled class / handler."""
    lines = ["stateDiagram-v2", f"    [*] --> {IDLE.value}"]
    rows = sorted(TABLE.items(), key=lambda item: (RESTING.index(item[0][0]),
                                                   RESTING.index(item[1].to)))  # fmt: skip
    for (phase, cls), row in rows:
        lines.append(f"    {phase.value} --> {row.to.value} : {cls.__name__} / "
                     f"{row.handler.__name__}")  # fmt: skip
    for kind, start in STARTS.items():
        lines.append(f"    {IDLE.value} --> {start.to.value} : queued {kind.value} / "
                     f"{start.handler.__name__}")  # fmt: skip
    return "\n".join(lines) + "\n"
