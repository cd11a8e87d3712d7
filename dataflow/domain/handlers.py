"""What a session does on each row of the transition table (``dataflow.domain.table``).

Every handler takes the session, the event its row dispatches and the config,
and returns the new session and the effects, in the order they must happen.
None performs I/O or reads a clock: time comes in the events.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, NamedTuple, TypeAlias

import msgspec

from dataflow.domain import cost, optimizer, strategy
from dataflow.domain.config import NO_MODEL, MachineConfig
from dataflow.domain.effects import (
    Effect,
    Note,
    Reject,
    mark_deadline,
    send_command,
    send_sync,
)
from dataflow.domain.errors import IllegalTransitionError
from dataflow.domain.events import DeadlinePassed, InstructionArrived, ReportArrived, Tick
from dataflow.domain.messages import (
    CommandType,
    Deadline,
    FactoryCommand,
    Instruction,
    InstructionKind,
    Params,
    Report,
    SyncMessage,
    SyncType,
    command_number,
    params_text,
)
from dataflow.domain.optimizer import OptimiserSnapshot
from dataflow.domain.state import Outstanding, Phase, Round, Session

Result: TypeAlias = tuple[Session, list[Effect]]


class When(NamedTuple):
    """When a handler acts: the clock (deadlines only) and its cause's time in the logs."""

    at_ms: int
    #: The timestamp (ms) of the record that caused this, in its topic: costs are measured
    #: between such timestamps, so a replay measures the same (None: the log gave none).
    logged_ms: int | None


def _latest(*times: int | None) -> int | None:
    known = [t for t in times if t is not None]
    return max(known) if known else None


_NO_PARAMS: Final = params_text(None, named=False)
#: The phase a session rests in while a command of each type is outstanding.
#: ``opt_initialise`` is never awaited: the round's first step follows it at once.
AWAITING: Final = {
    CommandType.TRAIN: Phase.TRAINING,
    CommandType.OPT_INITIALISE: Phase.INITIALIZING,
    CommandType.OPT_STEP: Phase.WAITING_FOR_REPORT,
    CommandType.OPT_FINALISE: Phase.FINALIZING,
}


# --------------------------------------------------------------------------- instructions


def admit(state: Session, event: InstructionArrived, config: MachineConfig) -> Result:
    """Queue an instruction, decided by the instruction sequence alone.

    ``advance`` starts the queue's head (``table.STARTS``) once the session is idle.
    """
    instruction = event.instruction
    if instruction.kind is InstructionKind.UPDATE_PARAMS:
        problem = optimizer.params_problem(config.profile, instruction.parameters or ())
        if problem:
            return state, [Reject(state.key, f"instruction: update_params {problem}")]
    else:
        reason = _coalesced(state, instruction, config)
        if reason:
            return state, [Reject(state.key, reason)]
    if len(state.queue) >= config.max_queued:
        return state, [Reject(state.key, f"instruction: {instruction.kind.value} at "
                              f"{instruction.timestamp} dropped: {len(state.queue)} instructions "
                              f"already queued (MAX_QUEUED_INSTRUCTIONS)")]  # fmt: skip
    state = _admitted(state, instruction)
    if state.phase is Phase.IDLE:
        return state, []
    detail = f"{instruction.kind.value} queued, {len(state.queue)} waiting"
    return state, [Note(state.key, "queued", _round_of(state).number, detail=detail)]


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


def _admitted(state: Session, instruction: Instruction) -> Session:
    last_admitted, last_optimize = state.last_admitted, state.last_optimize
    ts = instruction.timestamp
    if instruction.kind is not InstructionKind.UPDATE_PARAMS:
        last_admitted = ts if last_admitted is None else max(last_admitted, ts)
    if instruction.kind is InstructionKind.OPTIMIZE:
        last_optimize = ts if last_optimize is None else max(last_optimize, ts)
    return msgspec.structs.replace(
        state, queue=(*state.queue, instruction), last_admitted=last_admitted,
        last_optimize=last_optimize,
    )  # fmt: skip


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
    state, sent = _issue(state, config, when, CommandType.TRAIN, params)
    return state, [*paused, *sent]


def begin_optimise(
    state: Session, instruction: Instruction, at_ms: int, config: MachineConfig
) -> Result:
    """OPTIMIZE's turn: pause, ``opt_initialise`` (not awaited), then the first step.

    With ``pause_engine="finalise"`` the engine forecasts on during the steps and is
    paused just before ``opt_finalise`` (``_finalise``).
    """
    when = _started(state, instruction, at_ms)
    pause = config.pause_engine == "round"
    state, paused = _begin(state, instruction, pause=pause)
    opt_id = state.optimisations
    snapshot = optimizer.start(config.profile, state.key, opt_id, state.history)
    round_ = Round("optimise", state.rounds, instruction.timestamp, -1, opt_id, state.next_command,
                   snapshot, paused=pause)  # fmt: skip
    state = msgspec.structs.replace(state, optimisations=opt_id + 1, round=round_)
    state, initialised = _issue(state, config, when, CommandType.OPT_INITIALISE, _NO_PARAMS)
    point, proposed = strategy.propose(snapshot)  # a round's first step always fits its budget
    state, stepped = _step(state, point, proposed, when, config)
    return state, [*paused, *initialised, *stepped]


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


def _step(
    state: Session, point: optimizer.Point, snapshot: OptimiserSnapshot, when: When,
    config: MachineConfig,
) -> Result:  # fmt: skip
    """Send the step ``strategy.propose`` made pending in ``snapshot``."""
    round_ = _round_of(state)
    params = params_text(point, named=False)
    note = Note(state.key, "step", round_.number, step=len(snapshot.observations), detail=params)
    state = msgspec.structs.replace(
        state, round=msgspec.structs.replace(round_, optimiser=snapshot)
    )
    state, sent = _issue(state, config, when, CommandType.OPT_STEP, params)
    return state, [note, *sent]


# --------------------------------------------------------------------------- reports


def on_step_report(state: Session, event: ReportArrived, config: MachineConfig) -> Result:
    """A report while a step is outstanding: learn its score, then the next step or finalise."""
    report, round_ = event.report, _round_of(state)
    unusable = _screened(state, event, config, report.f_val, "step report carries no metrics.f_val")
    if unusable is not None or report.f_val is None:
        return unusable or (state, [])
    when = When(event.at_ms, report.logged_ms)
    before = _optimiser_of(round_)
    snapshot = optimizer.learn(before, report.f_val, _cost_s(state, report, config))
    step = len(snapshot.observations) - 1
    notes = [Note(state.key, "score", round_.number, step=step, value=report.f_val),
             *_over_budget(state.key, round_.number, before, snapshot)]  # fmt: skip
    state = msgspec.structs.replace(
        state, phase=Phase.OPTIMIZING, outstanding=None,
        round=msgspec.structs.replace(round_, optimiser=snapshot),
    )  # fmt: skip
    if snapshot.remaining > 0:
        point, proposed = strategy.propose(snapshot)
        if strategy.affordable(proposed):
            state, sent = _step(state, point, proposed, when, config)
            return state, [*notes, *sent]
        detail = (
            f"{cost.spent(snapshot):.1f} s spent, the next step predicted "
            f"{proposed.predicted_s or 0.0:.1f} s, ROUND_BUDGET_S "
            f"{snapshot.profile.round_budget_s:g}: finalising after {step + 1} steps"
        )
        notes.append(Note(state.key, "budget_spent", round_.number, step=step, detail=detail))
    state, sent = _finalise(state, snapshot, when, config)
    return state, [*notes, *sent]


def _cost_s(state: Session, report: Report, config: MachineConfig) -> float | None:
    """A step's factory seconds: from its attempt's cause to its report, in the logs.

    Unknown for a late answer to an earlier attempt (resent meanwhile): the time of a
    failed attempt or of a wait for a deadline is not what the configuration costs.
    """
    outstanding = state.outstanding
    if outstanding is None or outstanding.sent_ms is None or report.logged_ms is None:
        return None
    if _counter(report.reply_id, config, state.key) != outstanding.number:
        return None
    return (report.logged_ms - outstanding.sent_ms) / 1000


def _over_budget(
    key: str, number: int, before: OptimiserSnapshot, after: OptimiserSnapshot
) -> list[Effect]:
    """A note when a step took the round past its time budget (it took longer than predicted)."""
    budget = after.profile.round_budget_s
    if budget is None or cost.expected_total(after) <= budget:
        return []
    taken = after.observations[-1].cost_s
    predicted = (
        "unpredicted" if before.predicted_s is None else f"predicted {before.predicted_s:.1f} s"
    )
    detail = (f"step took {taken if taken is not None else float('nan'):.1f} s ({predicted}): "
              f"the round expects {cost.expected_total(after):.1f} s of factory time with its "
              f"finalised model, over ROUND_BUDGET_S {budget:g}")  # fmt: skip
    return [Note(key, "over_budget", number, step=len(after.observations) - 1, detail=detail)]


def _finalise(
    state: Session, snapshot: OptimiserSnapshot, when: When, config: MachineConfig
) -> Result:
    """``opt_finalise`` with the best step, the engine paused first if it is not yet."""
    round_ = _round_of(state)
    paused: list[Effect] = []
    if not round_.paused:
        paused = [_pause_sync(state.key, round_.number, round_.timestamp)]
        state = msgspec.structs.replace(state, round=msgspec.structs.replace(round_, paused=True))
    best_i = optimizer.best_index(snapshot)
    state, sent = _issue(state, config, when, CommandType.OPT_FINALISE, _NO_PARAMS, best_i)
    return state, [*paused, *sent]


def on_final_report(state: Session, event: ReportArrived, config: MachineConfig) -> Result:
    """The report that ends a round: of ``train`` (TRAINING) or ``opt_finalise`` (FINALIZING)."""
    report, round_ = event.report, _round_of(state)
    unusable = _screened(state, event, config, report.model_id, "report carries no model_id")
    if unusable is not None or report.model_id is None:
        return unusable or (state, [])
    best_params, history = state.best_params, state.history
    snapshot = round_.optimiser
    if snapshot is not None:
        history = optimizer.carried(snapshot) if snapshot.profile.keep else ()
        best_params = _winning_params(report.params, snapshot)
    state = msgspec.structs.replace(state, best_params=best_params, history=history)
    note = Note(state.key, "round_completed", round_.number, detail=str(report.model_id))
    return _end_round(state, report.model_id, note, report.logged_ms)


def _screened(
    state: Session, event: ReportArrived, config: MachineConfig, needed: object, missing: str
) -> Result | None:
    """What a report that is not a usable answer does; None if it is one.

    Usable: the outstanding command's answer, successful, carrying ``needed``. A
    refusal of the round's ``opt_initialise`` ends the round; a report for another
    command is dead-lettered; an error (or a reply without ``needed``) to the latest
    attempt is a failure, and a late one without ``needed`` to an earlier attempt is
    dead-lettered (the latest attempt may still succeed).
    """
    report = event.report
    if _answers_initialise(state, report, config):
        return _on_initialise_report(state, event, config)
    if not _answers(state, report, config):
        return state, [Reject(state.key, _unmatched(state, report, config, state.key))]
    if report.ok and needed is not None:
        return None
    if (
        state.outstanding
        and _counter(report.reply_id, config, state.key) in state.outstanding.earlier
    ):
        return state, [Reject(state.key, f"report {report.reply_id!r:.40}: stale (an earlier "
                              f"attempt's answer, {missing})")]  # fmt: skip
    return _failed(state, report.error or missing, When(event.at_ms, report.logged_ms), config)


def reject_idle_report(state: Session, event: ReportArrived, config: MachineConfig) -> Result:
    """No round is running: a report that is not early is stale or foreign."""
    return state, [Reject(state.key, _unmatched(state, event.report, config, state.key))]


def _on_initialise_report(state: Session, event: ReportArrived, config: MachineConfig) -> Result:
    """A reply to the round's ``opt_initialise``, which nothing awaits.

    The originals never answer it. The seed's factory answers it only to refuse it
    ("No dataset available to lock"); every step of the round would then fail ("No
    optimization session active"), so the round ends now, playing the model the
    engine had. A factory replying in order answers ``opt_initialise`` before the
    first step, so this row sees it while that step is outstanding, in any merge
    order (a held one is fed in, oldest first, as soon as both are sent).
    """
    report, round_ = event.report, _round_of(state)
    if report.ok:
        return state, [Reject(state.key, f"report {report.reply_id!r:.40}: acknowledges "
                              "opt_initialise, which needs no answer")]  # fmt: skip
    detail = f"opt_initialise refused: {report.error or 'factory reported an error'}"
    note = Note(state.key, "round_aborted", round_.number, step=_step_of(state), detail=detail)
    return _end_round(state, state.model_id, note, report.logged_ms)


def _answers_initialise(state: Session, report: Report, config: MachineConfig) -> bool:
    round_ = state.round
    return (
        round_ is not None
        and round_.kind == "optimise"
        and _counter(report.reply_id, config, state.key) == round_.first_command
    )


def _winning_params(reported: Params | None, snapshot: OptimiserSnapshot) -> Params:
    # The factory's params_dict is what it actually built (and the originals used it,
    # keeping its key order); fall back to our own record of the best step.
    if reported is not None and sorted(n for n, _ in reported) == sorted(snapshot.profile.names):
        return reported
    return optimizer.finalise(snapshot)[1]


Answer: TypeAlias = ReportArrived | DeadlinePassed
AnswerHandler: TypeAlias = Callable[[Session, Any, MachineConfig], Result]


def held_item(event: Answer) -> Report | Deadline:
    """What a report or a deadline event holds: the item a session keeps until it is ripe."""
    return event.report if isinstance(event, ReportArrived) else event.deadline


def _named(item: Report | Deadline) -> int | str:
    """The wire id of the command a report answers or a deadline marker names."""
    return item.reply_id if isinstance(item, Report) else item.command_id


def or_hold(handler: AnswerHandler) -> AnswerHandler:
    """``handler`` for a report or deadline whose command was sent; one for a later command is held.

    A replay may read a report, or a deadline marker, before the instruction whose
    round sends its command; it waits in ``Session.held`` until that command is sent.
    """

    def hold_early(state: Session, event: Answer, config: MachineConfig) -> Result:
        item = held_item(event)
        counter = _counter(_named(item), config, state.key)
        if counter is None or counter < state.next_command:
            return handler(state, event, config)
        return _hold(state, item, counter, config)

    hold_early.__name__ = handler.__name__
    hold_early.__doc__ = handler.__doc__
    return hold_early


def _hold(state: Session, item: Report | Deadline, counter: int, config: MachineConfig) -> Result:
    what, field = ("report", "reply_id") if isinstance(item, Report) else ("deadline marker", "id")
    reply = f"{what} {_named(item)!r:.40}: foreign {field} (no such command was sent"
    if counter - state.next_command >= config.max_held:
        return state, [Reject(state.key, f"{reply}, nor within {config.max_held} of the next)")]
    if len(state.held) >= config.max_held:
        return state, [Reject(state.key, f"{reply}; {config.max_held} held already)")]
    number = state.round.number if state.round else state.rounds
    detail = f"{what} {_named(item)!r:.40} held until its command is sent"
    held = msgspec.structs.replace(state, held=(*state.held, item))
    return held, [Note(state.key, "held", number, detail=detail)]


def is_ripe(state: Session, item: Report | Deadline, config: MachineConfig) -> bool:
    """Whether a held report's or deadline marker's command has been sent by now."""
    return (_counter(_named(item), config, state.key) or 0) < state.next_command


# --------------------------------------------------------------------------- ticks


def on_tick(state: Session, event: Tick, config: MachineConfig) -> Result:
    """The outstanding command is overdue: ask, once, for its deadline marker.

    The tick decides nothing. The marker goes to the report topic, and the timeout
    is decided when it is read back (``on_deadline``): a report ahead of it in the
    topic answers the command, whatever the clock did during a replay.
    """
    outstanding = state.outstanding
    if outstanding is None or outstanding.marked or event.at_ms < outstanding.deadline_ms:
        return state, []
    if event.at_ms < event.since_ms + config.report_timeout_ms:
        return state, []  # the process restarted meanwhile: give the factory its full time
    command = outstanding.command
    detail = f"no report for {command.type} {command.id!r}: deadline marker sent"
    note = Note(state.key, "overdue", _round_of(state).number, step=_step_of(state), detail=detail)
    marked = msgspec.structs.replace(outstanding, marked=True)
    return msgspec.structs.replace(state, outstanding=marked), [
        note,
        mark_deadline(state.key, command.id),
    ]


def on_deadline(state: Session, event: DeadlinePassed, config: MachineConfig) -> Result:
    """A deadline marker read back: if its command is still awaited, resend it or abort.

    A marker for an attempt already answered (its report came first in the topic)
    or resent changes nothing.
    """
    outstanding = state.outstanding
    counter = _counter(event.deadline.command_id, config, state.key)
    if outstanding is None or counter != outstanding.number:
        return state, []
    command = outstanding.command
    note = Note(state.key, "timeout", _round_of(state).number, step=_step_of(state),
                detail=f"no report for {command.type} {command.id!r}")  # fmt: skip
    when = When(event.at_ms, event.deadline.logged_ms)
    state, effects = _failed(state, "deadline passed without a report", when, config)
    return state, [note, *effects]


def stale_deadline(state: Session, event: DeadlinePassed, config: MachineConfig) -> Result:
    """No round is running: the marker's command was answered (or its round ended) before it."""
    return state, []


def nothing(state: Session, event: Tick, config: MachineConfig) -> Result:
    """Idle: no deadline to watch."""
    return state, []


# --------------------------------------------------------------------------- shared steps


def _issue(
    state: Session,
    config: MachineConfig,
    when: When,
    kind: CommandType,
    params: str,
    best_i: int = -1,
) -> Result:
    """Send the round's next command (the next counter value) and await it in its phase.

    An awaited command becomes the outstanding one, with a deadline;
    ``opt_initialise`` is not awaited (see ``AWAITING``).
    """
    round_ = _round_of(state)
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
    state = msgspec.structs.replace(state, phase=AWAITING[kind], next_command=number + 1)
    if kind is CommandType.OPT_INITIALISE:
        return state, [send_command(state.key, command, 0)]
    return _send(state, command, number, 0, when, config)


def _send(
    state: Session, command: FactoryCommand, number: int, attempt: int, when: When,
    config: MachineConfig, earlier: tuple[int, ...] = (),
) -> Result:  # fmt: skip
    deadline = when.at_ms + config.report_timeout_ms
    outstanding = Outstanding(command, number, attempt, deadline, earlier=earlier,
                              sent_ms=when.logged_ms)  # fmt: skip
    state = msgspec.structs.replace(state, outstanding=outstanding)
    return state, [send_command(state.key, command, attempt)]


def _failed(state: Session, reason: str, when: When, config: MachineConfig) -> Result:
    """The outstanding command failed: resend it under a new id (bounded), then abort the round.

    Every attempt has an id of its own, so no id reaches the factory twice; a late
    success of an earlier attempt still answers the command (``_answers``).
    """
    outstanding, number = state.outstanding, _round_of(state).number
    if outstanding is None:
        raise IllegalTransitionError(f"session {state.key!r} in {state.phase} awaits nothing")
    kind, step = outstanding.command.type, _step_of(state)
    if outstanding.attempt < config.max_retries:
        attempt, counter = outstanding.attempt + 1, state.next_command
        command = msgspec.structs.replace(
            outstanding.command, id=config.command_id(state.key, counter)
        )
        detail = f"attempt {attempt + 1} of {kind}, as {command.id!r}: {reason}"
        retry = Note(state.key, "retry", number, step=step, detail=detail)
        state = msgspec.structs.replace(state, next_command=counter + 1)
        earlier = (*outstanding.earlier, outstanding.number)
        state, sent = _send(state, command, counter, attempt, when, config, earlier)
        return state, [retry, *sent]
    detail = f"{kind} failed {outstanding.attempt + 1} times: {reason}"
    note = Note(state.key, "round_aborted", number, step=step, detail=detail)
    return _end_round(state, state.model_id, note, when.logged_ms)


def _end_round(state: Session, model_id: int | str, note: Note, ended_ms: int | None) -> Result:
    """Play the engine with ``model_id`` and go IDLE (the queue's head starts next).

    A round that never paused the engine (``pause_engine="finalise"``, ended before its
    finalise) sends no play: the original engine would take the next model it reads.
    """
    round_ = _round_of(state)
    state = msgspec.structs.replace(
        state, phase=Phase.IDLE, model_id=model_id, round=None, outstanding=None,
        ended_ms=ended_ms,
    )  # fmt: skip
    if not round_.paused:
        return state, [note]
    play = SyncMessage(SyncType.PLAY.value, round_.timestamp, model_id)
    return state, [note, send_sync(state.key, round_.number, play)]


def _answers(state: Session, report: Report, config: MachineConfig) -> bool:
    """Whether ``report`` answers the outstanding command.

    It does if it names the latest attempt, or is a success of an earlier one (resent
    after a timeout, then answered late).
    """
    outstanding = state.outstanding
    if outstanding is None:
        return False
    counter = _counter(report.reply_id, config, state.key)
    return counter == outstanding.number or (report.ok and counter in outstanding.earlier)


def _counter(command_id: int | str, config: MachineConfig, key: str) -> int | None:
    """The session-local command counter a wire id names, or None if not this key's."""
    number = command_number(command_id)
    if number is None or config.keys[number % len(config.keys)] != key:
        return None
    return number // len(config.keys)


def _unmatched(state: Session | None, report: Report, config: MachineConfig, key: str) -> str:
    reply = f"report {report.reply_id!r:.40}"
    counter = _counter(report.reply_id, config, key)
    if counter is None:
        return f"{reply}: foreign reply_id (not a command of session {key!r})"
    if state is None or counter >= state.next_command:
        return f"{reply}: foreign reply_id (no such command was sent)"
    awaited = state.outstanding.command.id if state.outstanding else None
    if state.outstanding is not None and counter in state.outstanding.earlier:
        return f"{reply}: stale (a failed attempt, already resent as {awaited!r})"
    if state.round is not None and counter >= state.round.first_command:
        return f"{reply}: duplicate (already answered; awaiting {awaited!r})"
    return f"{reply}: stale (its round is over)"


def _round_of(state: Session) -> Round:
    if state.round is None:
        raise IllegalTransitionError(f"session {state.key!r} in {state.phase} has no round")
    return state.round


def _optimiser_of(round_: Round) -> OptimiserSnapshot:
    if round_.optimiser is None:
        raise IllegalTransitionError(f"round {round_.number} ({round_.kind}) has no optimiser")
    return round_.optimiser


def _step_of(state: Session) -> int | None:
    if state.round is None or state.round.optimiser is None:
        return None
    return len(state.round.optimiser.observations)
