"""Rounds: how they start, step, finalise and end, and how their commands are sent.

Role: the handlers that move a round forward (``dataflow.domain.table`` says when
each runs and the phase it leaves the session in):

* the queue's head when the session is idle: ``update_params``, ``begin_train``,
  ``begin_optimise``;
* a step's score: ``next_step`` or ``finalise``;
* the round's model: ``complete``; the refusal of its ``opt_initialise``:
  ``abort_refused``;

and what they share: ``issue`` (the round's next command, under the next
counter, awaited with a deadline) and ``end_round`` (play and go idle).
"""

from __future__ import annotations

from typing import Final

import msgspec

from dataflow.domain import optimizer, strategy
from dataflow.domain.config import NO_MODEL, MachineConfig
from dataflow.domain.effects import Effect, Note, send_command, send_sync
from dataflow.domain.inputs import Built, InitialiseRefused, Scored, ScoredLast, When
from dataflow.domain.messages import (
    CommandType,
    FactoryCommand,
    Instruction,
    Params,
    SyncMessage,
    SyncType,
    params_text,
)
from dataflow.domain.optimizer import OptimiserSnapshot
from dataflow.domain.results import Result, round_of, step_of
from dataflow.domain.state import Outstanding, Round, Session

_NO_PARAMS: Final = params_text(None, named=False)


# --------------------------------------------------------------------------- the queue's head


def update_params(
    state: Session, instruction: Instruction, at_ms: int, config: MachineConfig
) -> Result:
    """UPDATE_PARAMS' turn: the new current-best parameters; no round."""
    params = instruction.parameters or ()
    note = Note(state.key, "params_updated", state.rounds, detail=params_text(params, named=True))
    return msgspec.structs.replace(state, best_params=params), [note]


def begin_train(
    state: Session, instruction: Instruction, at_ms: int, config: MachineConfig
) -> Result:
    """RETRAIN's turn: pause, then ``train`` with the current best parameters."""
    when = _started(state, instruction, at_ms)
    state, paused = _begin(state, instruction, pause=True)
    round_ = Round(
        "train", state.rounds, instruction.timestamp, state.trains, -1, state.next_command
    )
    state = msgspec.structs.replace(state, trains=state.trains + 1, round=round_)
    params = params_text(state.best_params, named=True)
    state, sent = issue(state, config, when, CommandType.TRAIN, params)
    return state, [*paused, *sent]


def begin_optimise(
    state: Session, instruction: Instruction, at_ms: int, config: MachineConfig
) -> Result:
    """OPTIMIZE's turn: pause, ``opt_initialise`` (not awaited), then the first step.

    With ``pause_engine="finalise"`` the engine forecasts on during the steps and is
    paused just before ``opt_finalise`` (``finalise``).
    """
    when = _started(state, instruction, at_ms)
    pause = config.pause_engine == "round"
    state, paused = _begin(state, instruction, pause=pause)
    opt_id = state.optimisations
    snapshot = optimizer.start(config.profile, state.key, opt_id, state.history)
    round_ = Round("optimise", state.rounds, instruction.timestamp, -1, opt_id, state.next_command,
                   snapshot, paused=pause)  # fmt: skip
    state = msgspec.structs.replace(state, optimisations=opt_id + 1, round=round_)
    state, initialised = issue(state, config, when, CommandType.OPT_INITIALISE, _NO_PARAMS)
    point, proposed = strategy.propose(snapshot)  # a round's first step always fits its budget
    state, stepped = _step(state, point, proposed, when, config)
    return state, [*paused, *initialised, *stepped]


def _latest(*times: int | None) -> int | None:
    known = [t for t in times if t is not None]
    return max(known) if known else None


def _started(state: Session, instruction: Instruction, at_ms: int) -> When:
    """A queued instruction starts once it is read and the round before it has ended."""
    return When(at_ms, _latest(instruction.logged_ms, state.ended_ms))


def _begin(state: Session, instruction: Instruction, *, pause: bool) -> Result:
    """Count the round and say so; pause the engine now if it is paused for the whole round."""
    rounds = state.rounds + 1
    started = Note(state.key, "round_started", rounds, detail=instruction.kind.value)
    state = msgspec.structs.replace(state, rounds=rounds)
    if not pause:
        return state, [started]
    return state, [started, _pause_sync(state.key, rounds, instruction.timestamp)]


def _pause_sync(key: str, round_number: int, timestamp: int) -> Effect:
    return send_sync(key, round_number, SyncMessage(SyncType.PAUSE.value, timestamp, NO_MODEL))


# --------------------------------------------------------------------------- a step's score


def next_step(state: Session, scored: Scored, config: MachineConfig) -> Result:
    """The score is learned: send the optimiser's next point."""
    state = _learned(state, scored.snapshot)
    state, sent = _step(state, scored.point, scored.proposed, scored.when, config)
    return state, [*scored.notes, *sent]


def finalise(state: Session, scored: ScoredLast, config: MachineConfig) -> Result:
    """The score is learned and the round's steps or time are spent: ``opt_finalise``.

    The engine is paused first if it was not for the steps (``pause_engine="finalise"``).
    """
    state = _learned(state, scored.snapshot)
    round_ = round_of(state)
    paused: list[Effect] = []
    if not round_.paused:
        paused = [_pause_sync(state.key, round_.number, round_.timestamp)]
        state = msgspec.structs.replace(state, round=msgspec.structs.replace(round_, paused=True))
    best_i = optimizer.best_index(scored.snapshot)
    state, sent = issue(state, config, scored.when, CommandType.OPT_FINALISE, _NO_PARAMS, best_i)
    return state, [*scored.notes, *paused, *sent]


def _learned(state: Session, snapshot: OptimiserSnapshot) -> Session:
    round_ = msgspec.structs.replace(round_of(state), optimiser=snapshot)
    return msgspec.structs.replace(state, outstanding=None, round=round_)


def _step(
    state: Session, point: optimizer.Point, snapshot: OptimiserSnapshot, when: When,
    config: MachineConfig,
) -> Result:  # fmt: skip
    """Send the step ``strategy.propose`` made pending in ``snapshot``."""
    round_ = round_of(state)
    params = params_text(point, named=False)
    note = Note(state.key, "step", round_.number, step=len(snapshot.observations), detail=params)
    state = msgspec.structs.replace(
        state, round=msgspec.structs.replace(round_, optimiser=snapshot)
    )
    state, sent = issue(state, config, when, CommandType.OPT_STEP, params)
    return state, [note, *sent]


# --------------------------------------------------------------------------- the round's end


def complete(state: Session, built: Built, config: MachineConfig) -> Result:
    """The round's model is built: adopt the winning parameters and play with it."""
    report, model_id, round_ = built.report, built.model_id, round_of(state)
    best_params, history = state.best_params, state.history
    snapshot = round_.optimiser
    if snapshot is not None:
        history = optimizer.carried(snapshot) if snapshot.profile.keep else ()
        best_params = _winning_params(report.params, snapshot)
    state = msgspec.structs.replace(state, best_params=best_params, history=history)
    note = Note(state.key, "round_completed", round_.number, detail=str(model_id))
    return end_round(state, model_id, note, report.logged_ms)


def _winning_params(reported: Params | None, snapshot: OptimiserSnapshot) -> Params:
    # The factory's params_dict is what it actually built (and the originals used it,
    # keeping its key order); fall back to our own record of the best step.
    if reported is not None and sorted(n for n, _ in reported) == sorted(snapshot.profile.names):
        return reported
    return optimizer.finalise(snapshot)[1]


def abort_refused(state: Session, refused: InitialiseRefused, config: MachineConfig) -> Result:
    """The factory refused ``opt_initialise``: end the round, playing the model the engine had.

    The originals never answer it. The seed's factory answers it only to refuse it
    ("No dataset available to lock"); every step of the round would then fail ("No
    optimization session active"). A factory replying in order answers
    ``opt_initialise`` before the first step, so this is read while that step is
    outstanding, in any merge order (a held one is fed in, oldest first, as soon as
    both are sent); the table also takes it while finalising, should a factory
    answer out of order.
    """
    report = refused.report
    detail = f"opt_initialise refused: {report.error or 'factory reported an error'}"
    note = Note(state.key, "round_aborted", round_of(state).number, step=step_of(state),
                detail=detail)  # fmt: skip
    return end_round(state, state.model_id, note, report.logged_ms)


def end_round(state: Session, model_id: int | str, note: Note, ended_ms: int | None) -> Result:
    """Play the engine with ``model_id``; the session is then idle (the queue's head starts).

    A round that never paused the engine (``pause_engine="finalise"``, ended before its
    finalise) sends no play: the original engine would take the next model it reads.
    """
    round_ = round_of(state)
    state = msgspec.structs.replace(
        state, model_id=model_id, round=None, outstanding=None, ended_ms=ended_ms
    )
    if not round_.paused:
        return state, [note]
    play = SyncMessage(SyncType.PLAY.value, round_.timestamp, model_id)
    return state, [note, send_sync(state.key, round_.number, play)]


# --------------------------------------------------------------------------- sending


def issue(
    state: Session,
    config: MachineConfig,
    when: When,
    kind: CommandType,
    params: str,
    best_i: int = -1,
) -> Result:
    """Send the round's next command (the next counter value) and await it.

    An awaited command becomes the outstanding one, with a deadline;
    ``opt_initialise`` is not awaited: the round's first step follows it at once.
    """
    round_ = round_of(state)
    number = state.next_command
    command = FactoryCommand(
        train_id=round_.train_id,
        optimisation_id=round_.optimisation_id,
        id=config.command_id(state.key, number),
        timestamp=round_.timestamp,
        type=kind.value,
        params=params,
        best_i=best_i,
    )
    state = msgspec.structs.replace(state, next_command=number + 1)
    if kind is CommandType.OPT_INITIALISE:
        return state, [send_command(state.key, command, 0)]
    return send(state, command, number, 0, when, config)


def send(
    state: Session, command: FactoryCommand, number: int, attempt: int, when: When,
    config: MachineConfig, earlier: tuple[int, ...] = (),
) -> Result:  # fmt: skip
    """Send an attempt of the outstanding command (counter ``number``), with its deadline."""
    deadline = when.at_ms + config.report_timeout_ms
    outstanding = Outstanding(command, number, attempt, deadline, earlier=earlier,
                              sent_ms=when.logged_ms)  # fmt: skip
    state = msgspec.structs.replace(state, outstanding=outstanding)
    return state, [send_command(state.key, command, attempt)]
