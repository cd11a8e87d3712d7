"""Retries: deadlines asked for, failed commands resent, rounds given up on.

Role: a tick (the wall clock) never decides anything; it only asks, once per
attempt, for the overdue command's deadline marker (``mark_overdue``). The marker
goes to the report topic and the timeout is decided when it is read back
(``dataflow.domain.answers.read_deadline``), in the report topic's order: a report
ahead of it answers the command, whatever the clock did during a replay. A failed
command (an error report, or its marker read back) is resent under a new id,
``max_retries`` times, then its round is aborted, playing the model the engine had.
"""

from __future__ import annotations

import msgspec

from dataflow.domain.config import MachineConfig
from dataflow.domain.effects import Effect, Note, mark_deadline
from dataflow.domain.errors import IllegalTransitionError
from dataflow.domain.events import Tick
from dataflow.domain.inputs import Due, GiveUp, Quiet, Resend
from dataflow.domain.results import Result, round_of, step_of
from dataflow.domain.rounds import end_round, send
from dataflow.domain.state import Outstanding, Session


def read_tick(state: Session, event: Tick, config: MachineConfig) -> Due | Quiet:
    """Due if the outstanding attempt is overdue and its marker not asked for yet."""
    outstanding = state.outstanding
    if outstanding is None or outstanding.marked or event.at_ms < outstanding.deadline_ms:
        return Quiet()
    if event.at_ms < event.since_ms + config.report_timeout_ms:
        return Quiet()  # the process restarted meanwhile: give the factory its full time
    return Due()


def mark_overdue(state: Session, due: Due, config: MachineConfig) -> Result:
    """Ask, once, for the overdue command's deadline marker."""
    outstanding = _outstanding(state)
    command = outstanding.command
    detail = f"no report for {command.type} {command.id!r}: deadline marker sent"
    note = Note(state.key, "overdue", round_of(state).number, step=step_of(state), detail=detail)
    marked = msgspec.structs.replace(outstanding, marked=True)
    return msgspec.structs.replace(state, outstanding=marked), [
        note,
        mark_deadline(state.key, command.id),
    ]


def resend(state: Session, failure: Resend, config: MachineConfig) -> Result:
    """Resend the failed command under a new id (no id reaches the factory twice).

    A late success of an earlier attempt still answers the command
    (``dataflow.domain.answers``).
    """
    outstanding, number = _outstanding(state), round_of(state).number
    timeout = _timeout(state, outstanding, failure.timed_out)
    attempt, counter = outstanding.attempt + 1, state.next_command
    command = msgspec.structs.replace(outstanding.command, id=config.command_id(state.key, counter))
    detail = f"attempt {attempt + 1} of {outstanding.command.type}, as {command.id!r}: "
    retry = Note(state.key, "retry", number, step=step_of(state), detail=detail + failure.reason)
    state = msgspec.structs.replace(state, next_command=counter + 1)
    earlier = (*outstanding.earlier, outstanding.number)
    state, sent = send(state, command, counter, attempt, failure.when, config, earlier)
    return state, [*timeout, retry, *sent]


def give_up(state: Session, failure: GiveUp, config: MachineConfig) -> Result:
    """The command failed ``max_retries + 1`` times: abort the round, playing the old model."""
    outstanding, number = _outstanding(state), round_of(state).number
    timeout = _timeout(state, outstanding, failure.timed_out)
    detail = f"{outstanding.command.type} failed {outstanding.attempt + 1} times: {failure.reason}"
    note = Note(state.key, "round_aborted", number, step=step_of(state), detail=detail)
    state, ended = end_round(state, state.model_id, note, failure.when.logged_ms)
    return state, [*timeout, *ended]


def nothing(state: Session, event: object, config: MachineConfig) -> Result:
    """Nothing to do: a quiet tick, or a marker whose attempt was answered or resent."""
    return state, []


def _timeout(state: Session, outstanding: Outstanding, timed_out: bool) -> list[Effect]:
    if not timed_out:
        return []
    command = outstanding.command
    return [Note(state.key, "timeout", round_of(state).number, step=step_of(state),
                 detail=f"no report for {command.type} {command.id!r}")]  # fmt: skip


def _outstanding(state: Session) -> Outstanding:
    if state.outstanding is None:
        raise IllegalTransitionError(f"session {state.key!r} in {state.phase} awaits nothing")
    return state.outstanding
