"""Admission: which instructions join a session's queue, decided by the instructions alone.

Role: an instruction is admitted or refused in every phase the same way, from its
own content and the instructions admitted before it (never from the phase it
finds), so that the sequence of rounds is a function of the instruction topic
(``dataflow.domain.machine``, "Replay in any interleaving"). ``table.STARTS`` says
how the queue's head begins once the session is idle.

An instruction's timestamp is copied into every command of its round, and the
original factory holds, first in first out, every command stamped past its newest
data set: one absurd timestamp would stall every round behind it (and, admitted,
make every later instruction look old). So a timestamp that is no plausible stream
time is refused first (``_implausible``): negative, later than the dialect's latest
(``MachineConfig.latest_timestamp``), or further past the newest admitted OPTIMIZE
or RETRAIN than ``instruction_max_jump``. Like coalescing, this reads the
instructions alone.
"""

from __future__ import annotations

import msgspec

from dataflow.domain import optimizer
from dataflow.domain.config import MachineConfig
from dataflow.domain.effects import Note, Reject
from dataflow.domain.events import InstructionArrived
from dataflow.domain.inputs import Admitted, Refused
from dataflow.domain.messages import Instruction, InstructionKind
from dataflow.domain.results import Result, round_of
from dataflow.domain.state import Phase, Session


def read_instruction(
    state: Session, event: InstructionArrived, config: MachineConfig
) -> Admitted | Refused:
    """Admitted, or refused: implausible, invalid parameters, coalesced, or the queue is full."""
    instruction = event.instruction
    implausible = _implausible(state, instruction, config)
    if implausible:
        return Refused(implausible)
    if instruction.kind is InstructionKind.UPDATE_PARAMS:
        problem = optimizer.params_problem(config.profile, instruction.parameters or ())
        if problem:
            return Refused(f"instruction: update_params {problem}")
    else:
        reason = _coalesced(state, instruction, config)
        if reason:
            return Refused(reason)
    if len(state.queue) >= config.max_queued:
        return Refused(f"instruction: {instruction.kind.value} at {instruction.timestamp} "
                       f"dropped: {len(state.queue)} instructions already queued "
                       "(MAX_QUEUED_INSTRUCTIONS)")  # fmt: skip
    return Admitted(instruction)


def admit(state: Session, admitted: Admitted, config: MachineConfig) -> Result:
    """Queue the instruction (``advance`` starts the queue's head once the session is idle)."""
    instruction = admitted.instruction
    last_admitted, last_optimize = state.last_admitted, state.last_optimize
    ts = instruction.timestamp
    if instruction.kind is not InstructionKind.UPDATE_PARAMS:
        last_admitted = ts if last_admitted is None else max(last_admitted, ts)
    if instruction.kind is InstructionKind.OPTIMIZE:
        last_optimize = ts if last_optimize is None else max(last_optimize, ts)
    state = msgspec.structs.replace(
        state, queue=(*state.queue, instruction), last_admitted=last_admitted,
        last_optimize=last_optimize,
    )  # fmt: skip
    if state.phase is Phase.IDLE:
        return state, []
    detail = f"{instruction.kind.value} queued, {len(state.queue)} waiting"
    return state, [Note(state.key, "queued", round_of(state).number, detail=detail)]


def refuse(state: Session, refused: Refused, config: MachineConfig) -> Result:
    """Dead-letter the instruction, with the reason."""
    return state, [Reject(state.key, refused.reason)]


def _implausible(state: Session, instruction: Instruction, config: MachineConfig) -> str | None:
    """Why an instruction's timestamp is no plausible stream time, or None (every kind).

    The jump is measured from the newest admitted OPTIMIZE or RETRAIN (older ones are
    coalesced anyway); the first instruction of a session is bounded by the latest alone.
    """
    ts, latest, jump = instruction.timestamp, config.latest_timestamp(), config.instruction_max_jump
    what = f"instruction: {instruction.kind.value} at {_digits(ts)}"
    if ts < 0:
        return f"{what} implausible: a stream time is never negative"
    if ts > latest:
        return f"{what} implausible: later than INSTRUCTION_MAX_TIMESTAMP {latest}"
    last = state.last_admitted
    if jump and last is not None and ts - last > jump:
        return (f"{what} implausible: {_digits(ts - last)} past the newest admitted instruction "
                f"(at {last}), more than INSTRUCTION_MAX_JUMP {jump}")  # fmt: skip
    return None


def _digits(number: int) -> str:
    """A number for a reason, shortened when absurdly long (a hostile timestamp)."""
    text = str(number)
    return text if len(text) <= 24 else f"{text[:12]}...({len(text)} digits)"


def _coalesced(state: Session, instruction: Instruction, config: MachineConfig) -> str | None:
    """Why an OPTIMIZE or RETRAIN is no new adaptation, or None.

    It is one if an instruction of at least its rank (OPTIMIZE > RETRAIN) was admitted
    less than ``instruction_min_gap`` before it in stream time, or not before it at all.
    """
    optimize = instruction.kind is InstructionKind.OPTIMIZE
    last = state.last_optimize if optimize else state.last_admitted
    if last is None or instruction.timestamp - last >= max(config.instruction_min_gap, 1):
        return None
    rank = "an OPTIMIZE" if optimize else "an OPTIMIZE or RETRAIN"
    gap = config.instruction_min_gap
    return (f"instruction: {instruction.kind.value} at {instruction.timestamp} coalesced: "
            f"{rank} was admitted at {last} (INSTRUCTION_MIN_GAP {gap})")  # fmt: skip
