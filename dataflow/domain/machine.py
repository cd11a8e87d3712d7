"""The controller: ``advance(state, event) -> (state, effects)``, one transition table.

Role: the single place that decides what the controller does next. It imports
nothing that does I/O; the Bytewax step calls ``advance`` and turns the returned
effects into Kafka messages, log lines and metrics.

Theory of operation
-------------------
A *session* (one per key) turns each Observer instruction into a conversation:

* RETRAIN: pause the engine, ``train`` with the current best parameters, and on
  the matching report play with the report's ``model_id``.
* OPTIMIZE: pause, ``opt_initialise`` (not awaited; a refusal of it ends the
  round), then one ``opt_step`` per proposal of the optimiser, each answered by
  a report whose ``f_val`` the optimiser learns; after the budget,
  ``opt_finalise`` with ``best_i``; on its report play with its ``model_id`` and
  adopt the winning parameters.
* UPDATE_PARAMS replaces the current best parameters when its turn comes.

Instructions are *admitted* into a FIFO queue and executed one at a time, in the
instruction topic's order: a round starts when the one before it has played.
A factory error report, or a ``Tick`` past the outstanding command's deadline,
resends the command up to ``max_retries`` times, then aborts the round; a
refused ``opt_initialise`` aborts it at once. An aborted round plays the engine
with the model it had. So every round that
pauses the engine ends with exactly one play.

Phases INITIALIZING (after ``opt_initialise``) and OPTIMIZING (between a step's
report and the next proposal) are the seed's names for moments that, here, are
entered and left within one ``advance`` call: nothing can arrive in them, so the
table has no rows for them. The resting phases are IDLE, TRAINING,
WAITING_FOR_REPORT and FINALIZING.

Replay in any interleaving
--------------------------
Bytewax re-reads each input topic in its own order after a crash, but may merge
the two topics differently than the first run did. The commands must not
depend on that merge. Let *I* be the instruction sequence and *R* the report
sequence; the commands are a function of (I, R) alone because every row is:

* **Instruction rows (any phase) -> admit.** Whether an instruction is admitted
  depends only on the instructions before it (``_coalesced``: its kind and
  timestamp against the last admitted ones; UPDATE_PARAMS on its own content),
  never on the phase it finds. Admitted instructions run strictly in order, so
  the sequence of rounds is a function of I. The one exception is a full queue
  (``max_queued``, 1,000), a safety valve outside this guarantee, documented for
  operators: admission by content (``instruction_min_gap``) keeps it short.
* **Report rows.** A report names its command by ``reply_id``, a counter. If that
  command has not been sent yet (a replay delivered the report before the
  instruction whose round sends it), the report is *held* in the state and
  fed in as soon as the command is sent (``_settle``). Once sent, a report is
  either the answer to the outstanding command, a refusal of the round's
  ``opt_initialise`` (read before the first step's report, as the factory sent
  it), or a duplicate or stale one, whatever the merge order. So command ``c``
  sees exactly R's reports for ``c``, in R's order, and what it sends next
  depends on nothing else. (Also outside
  the guarantee: a hold that is full, ``max_held``, 1,024 reports; a replay
  holds at most the reports read since the last snapshot.)
* **Tick rows.** Only a silent factory makes a deadline pass; a resend carries the
  same payload under the same id, so it is harmless to the property. A restart
  cannot make one fire: a deadline is not due until ``report_timeout_ms`` after
  the running process began (``Tick.since_ms``), so the downtime and the
  replay's catch-up never count against the factory. What stays outside the
  guarantee is the wall clock itself: a factory silent for ``max_retries + 1``
  timeouts aborts the round; if the process then crashes before the next
  snapshot and the factory's late report is in R, the replay reads it in time
  and completes the round the first run aborted.

Every output therefore depends only on the key's own (I, R): reports are
matched by id, proposals are seeded by key, round and observation count. Times
(``at_ms``) only decide deadlines and never appear in an output, so a replay
re-emits byte-identical commands, and duplicates are harmless.

State versions
--------------
``Session.version`` is 2. Version 1 (one ``pending`` instruction, UPDATE_PARAMS at
once) is migrated on first touch by ``upgrade``; a newer version is refused
with ``StateVersionError``, naming both versions.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import Any, Final, Literal, TypeAlias

import msgspec

from dataflow.domain import optimizer
from dataflow.domain.errors import ConfigError, IllegalTransitionError, StateVersionError
from dataflow.domain.messages import (
    CommandType,
    Dialect,
    FactoryCommand,
    Instruction,
    InstructionKind,
    Params,
    Rejection,
    Report,
    SyncMessage,
    SyncType,
    command_id,
    command_number,
    params_text,
)
from dataflow.domain.optimizer import Observation, OptimiserSnapshot, Profile

STATE_VERSION: Final = 2
_NO_PARAMS: Final = params_text(None, named=False)
DEFAULT_KEY: Final = "controller"
NO_MODEL: Final = -1


class Phase(StrEnum):
    """Where a session is in its conversation."""

    IDLE = "IDLE"
    TRAINING = "TRAINING"
    INITIALIZING = "INITIALIZING"
    WAITING_FOR_REPORT = "WAITING_FOR_REPORT"
    OPTIMIZING = "OPTIMIZING"
    FINALIZING = "FINALIZING"


class MachineConfig(msgspec.Struct, frozen=True):
    """What the controller needs to know that no message tells it."""

    dialect: Dialect
    profile: Profile
    #: The current best parameters before any round or UPDATE_PARAMS (wire order kept).
    initial_params: Params
    #: Session keys. One key: everything is one session. Several: one session per
    #: ``model_id``, and command ids encode the key's index (``number * len(keys) + index``).
    keys: tuple[str, ...] = (DEFAULT_KEY,)
    report_timeout_ms: int = 600_000
    max_retries: int = 2
    #: Observations from an offline optimisation; the newest ``profile.keep`` seed round 0.
    warm_start: tuple[Observation, ...] = ()
    initial_model_id: int | str = NO_MODEL
    #: An OPTIMIZE or RETRAIN is coalesced (dead-lettered, no round) when an instruction of
    #: at least its rank was admitted less than this before it, in the instructions' own
    #: timestamp units. 0: only instructions no newer than that one are coalesced.
    instruction_min_gap: int = 0
    #: Admitted instructions waiting for their round; beyond, dead-lettered (a safety valve:
    #: how full the queue is depends on timing, see the module docstring).
    max_queued: int = 1000
    #: Reports for commands not sent yet (replay) held at most; also how far ahead they may be.
    max_held: int = 1024

    def validate(self) -> None:
        """Raise ``ConfigError`` listing every inconsistency."""
        self.profile.validate()
        problems = []
        if not self.keys or len(set(self.keys)) != len(self.keys):
            problems.append(f"keys must be distinct and non-empty, got {self.keys}")
        if sorted(n for n, _ in self.initial_params) != sorted(self.profile.names):
            names = [n for n, _ in self.initial_params]
            problems.append(f"initial params {names} must name exactly {list(self.profile.names)}")
        if self.report_timeout_ms <= 0 or self.max_retries < 0:
            problems.append("report_timeout_ms must be > 0 and max_retries >= 0")
        if self.instruction_min_gap < 0 or self.max_queued < 1 or self.max_held < 1:
            problems.append("instruction_min_gap must be >= 0, max_queued and max_held >= 1")
        if problems:
            raise ConfigError("; ".join(problems))


# --------------------------------------------------------------------------- events


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


# --------------------------------------------------------------------------- effects


class SendCommand(msgspec.Struct, frozen=True, tag="command"):
    """Send ``command`` to the factory. ``message_id`` is stable across replays."""

    key: str
    message_id: str
    command: FactoryCommand


class SendSync(msgspec.Struct, frozen=True, tag="sync"):
    """Send a pause/play to the engine. ``message_id`` is stable across replays."""

    key: str
    message_id: str
    sync: SyncMessage


class Reject(msgspec.Struct, frozen=True, tag="reject"):
    """The event was not used; ``reason`` says why (for the dead-letter topic)."""

    key: str
    reason: str


NoteKind: TypeAlias = Literal[
    "round_started", "round_completed", "round_aborted", "step", "score",
    "retry", "timeout", "queued", "held", "params_updated",
]  # fmt: skip


class Note(msgspec.Struct, frozen=True, tag="note"):
    """Something worth a log line and a metric."""

    key: str
    kind: NoteKind
    round: int
    step: int | None = None
    detail: str = ""
    value: float | None = None


Effect: TypeAlias = SendCommand | SendSync | Reject | Note


# --------------------------------------------------------------------------- state


class Outstanding(msgspec.Struct, frozen=True):
    """The one command awaiting a report."""

    command: FactoryCommand
    number: int
    attempt: int
    deadline_ms: int


class Round(msgspec.Struct, frozen=True):
    """The round in progress."""

    kind: Literal["train", "optimise"]
    #: Rounds started by this session so far, this one included (names sync message ids).
    number: int
    #: The instruction's timestamp, copied to every command and sync of the round.
    timestamp: int
    train_id: int
    optimisation_id: int
    #: Counter of the round's first command: older replies are stale, newer duplicates.
    first_command: int
    optimiser: OptimiserSnapshot | None = None


class Session(msgspec.Struct, frozen=True):
    """Everything one key's controller remembers. Small, plain, versioned."""

    key: str
    phase: Phase
    best_params: Params
    model_id: int | str
    #: Counters: never restart, persisted with the session.
    next_command: int = 0
    trains: int = 0
    optimisations: int = 0
    rounds: int = 0
    #: Observations the next OPTIMIZE round starts from.
    history: tuple[Observation, ...] = ()
    round: Round | None = None
    outstanding: Outstanding | None = None
    #: Version 1's single queued instruction; always None from version 2 on (see ``upgrade``).
    pending: Instruction | None = None
    version: int = STATE_VERSION
    # Version 2. New fields go last, with defaults: states are pickled positionally.
    #: Admitted instructions not started yet, oldest first.
    queue: tuple[Instruction, ...] = ()
    #: Reports whose command is not sent yet (a replay read them early), in arrival order.
    held: tuple[Report, ...] = ()
    #: Timestamps of the last admitted OPTIMIZE or RETRAIN, and of the last OPTIMIZE.
    last_admitted: int | None = None
    last_optimize: int | None = None


def new_session(key: str, config: MachineConfig) -> Session:
    """The state of a key that has seen nothing yet."""
    keep = config.profile.keep
    return Session(
        key=key,
        phase=Phase.IDLE,
        best_params=config.initial_params,
        model_id=config.initial_model_id,
        history=config.warm_start[-keep:] if keep else (),
    )


# --------------------------------------------------------------------------- routing


def route_instruction(instruction: Instruction, config: MachineConfig) -> str | Rejection:
    """The session key of an instruction: its ``model_id`` in multi-model mode."""
    if len(config.keys) == 1:
        return config.keys[0]
    if instruction.model_id in config.keys:
        return instruction.model_id
    return Rejection(
        f"instruction: `$.model_id` {instruction.model_id!r} is not one of the "
        f"configured models {list(config.keys)}"
    )


def route_report(report: Report, config: MachineConfig) -> str | Rejection:
    """The session key of a report, read back from its ``reply_id``."""
    number = command_number(report.reply_id)
    if number is None:
        return Rejection(f"report: `$.reply_id` {report.reply_id!r:.40} is not a command id")
    return config.keys[number % len(config.keys)]


# --------------------------------------------------------------------------- advance

Result: TypeAlias = tuple[Session, list[Effect]]
#: Each handler takes the event type its table rows dispatch (instruction, report or tick).
Handler: TypeAlias = Callable[[Session, Any, MachineConfig], Result]


def advance(
    state: Session | None, event: Event, *, key: str, config: MachineConfig
) -> tuple[Session | None, list[Effect]]:
    """Apply one event to one key's session: the whole controller.

    ``state`` is ``None`` for a key never seen. Bad or unexpected input never
    raises: it is returned as a ``Reject`` effect and leaves the state unchanged.
    Raises ``IllegalTransitionError`` only for a state that no event sequence produces,
    ``StateVersionError`` for a state newer than this code, and ``ConfigError`` for a
    key that is not configured (the router never makes one).
    """
    if key not in config.keys:
        raise ConfigError(f"session key {key!r} is not one of {list(config.keys)}")
    if state is None:
        if isinstance(event, Tick):
            return None, []  # nothing to time out; do not materialise the session
        created, effects = advance(new_session(key, config), event, key=key, config=config)
        if effects and all(isinstance(effect, Reject) for effect in effects):
            return None, effects  # a rejected event changes nothing, not even existence
        return created, effects
    state = upgrade(state)
    handler = TRANSITIONS.get((state.phase, _event_kind(event)))
    if handler is None:
        raise IllegalTransitionError(f"no transition from {state.phase} on {_event_kind(event)}")
    state, effects = handler(state, event, config)
    return _settle(state, effects, event.at_ms, config)


def upgrade(state: Session) -> Session:
    """The state in the current version: version 1 is migrated, a newer one refused."""
    if state.version == STATE_VERSION:
        return state
    if state.version == 1:
        # v1 queued at most one instruction (``pending``) and never coalesced: the running
        # round and the pending instruction are what was admitted last.
        queue = () if state.pending is None else (state.pending,)
        admitted = [i.timestamp for i in queue]
        optimised = [i.timestamp for i in queue if i.kind is InstructionKind.OPTIMIZE]
        if state.round is not None:
            admitted.append(state.round.timestamp)
            if state.round.kind == "optimise":
                optimised.append(state.round.timestamp)
        return msgspec.structs.replace(
            state, pending=None, queue=queue, version=STATE_VERSION,
            last_admitted=max(admitted, default=None), last_optimize=max(optimised, default=None),
        )  # fmt: skip
    raise StateVersionError(
        f"session {state.key!r} was saved by a controller with state version {state.version}; "
        f"this controller reads versions 1 to {STATE_VERSION}. Run a release that writes "
        f"version {state.version} (or newer) on this recovery directory, or start from a fresh "
        "one with new, empty input topics (a fresh directory re-reads the topics from their "
        "start; the sessions' rounds, counters and optimiser history are lost)."
    )


def _event_kind(event: Event) -> str:
    if isinstance(event, InstructionArrived):
        return event.instruction.kind.value
    return "REPORT" if isinstance(event, ReportArrived) else "TICK"


def _settle(state: Session, effects: list[Effect], at_ms: int, config: MachineConfig) -> Result:
    """Feed in held reports whose command has now been sent, oldest first.

    A held report was read before its command was (re-)sent. Once the command is
    sent, it goes through the same row as if it had arrived just now: the answer
    to the outstanding command, or a duplicate or stale one.
    """
    while True:
        sent = [(_counter(report, config, state.key) or 0) < state.next_command
                for report in state.held]  # fmt: skip
        ripe = sent.index(True) if True in sent else None
        if ripe is None:
            return state, effects
        report = state.held[ripe]
        state = msgspec.structs.replace(state, held=state.held[:ripe] + state.held[ripe + 1 :])
        handler = TRANSITIONS[(state.phase, "REPORT")]
        state, more = handler(state, ReportArrived(report, at_ms), config)
        effects = [*effects, *more]


# --------------------------------------------------------------------------- handlers


def _admit(state: Session, event: InstructionArrived, config: MachineConfig) -> Result:
    """Queue an instruction, decided by the instruction sequence alone; start it if idle."""
    instruction = event.instruction
    if instruction.kind is InstructionKind.UPDATE_PARAMS:
        problem = _check_params(instruction.parameters or (), config.profile)
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
    if state.phase is not Phase.IDLE:
        detail = f"{instruction.kind.value} queued, {len(state.queue)} waiting"
        return state, [Note(state.key, "queued", _round_of(state).number, detail=detail)]
    return _start_next(state, event.at_ms, config, [])


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


def _start_next(state: Session, at_ms: int, config: MachineConfig, out: list[Effect]) -> Result:
    """While idle, take the queue's head: apply an UPDATE_PARAMS, or start its round."""
    while state.phase is Phase.IDLE and state.queue:
        head = state.queue[0]
        state = msgspec.structs.replace(state, queue=state.queue[1:])
        if head.kind is InstructionKind.UPDATE_PARAMS:
            params = head.parameters or ()
            detail = params_text(params, named=True)
            out.append(Note(state.key, "params_updated", state.rounds, detail=detail))
            state = msgspec.structs.replace(state, best_params=params)
        else:
            state, out = _begin(state, head, at_ms, config, out)
    return state, out


def _begin(
    state: Session, instruction: Instruction, at_ms: int, config: MachineConfig, out: list[Effect]
) -> Result:
    rounds = state.rounds + 1
    ts = instruction.timestamp
    pause = SyncMessage(SyncType.PAUSE.value, ts, NO_MODEL)
    out.append(Note(state.key, "round_started", rounds, detail=instruction.kind.value))
    out.append(SendSync(state.key, _sync_id(state.key, rounds, SyncType.PAUSE), pause))
    if instruction.kind is InstructionKind.RETRAIN:
        round_ = Round("train", rounds, ts, state.trains, -1, state.next_command)
        state = msgspec.structs.replace(state, rounds=rounds, trains=state.trains + 1, round=round_)
        params = params_text(state.best_params, named=True)
        return _issue(state, config, CommandType.TRAIN, Phase.TRAINING, at_ms, out, params)
    if instruction.kind is not InstructionKind.OPTIMIZE:
        raise IllegalTransitionError(f"{instruction.kind.value} starts no round")
    # OPTIMIZE: IDLE -> INITIALIZING (opt_initialise) -> WAITING_FOR_REPORT (first step).
    opt_id = state.optimisations
    snapshot = optimizer.start(config.profile, state.key, opt_id, state.history)
    round_ = Round("optimise", rounds, ts, -1, opt_id, state.next_command, snapshot)
    state = msgspec.structs.replace(state, rounds=rounds, optimisations=opt_id + 1, round=round_)
    state, out = _issue(state, config, CommandType.OPT_INITIALISE, Phase.INITIALIZING, at_ms, out,
                        _NO_PARAMS, answered=False)  # fmt: skip
    return _propose_step(state, at_ms, config, out)


def _propose_step(state: Session, at_ms: int, config: MachineConfig, out: list[Effect]) -> Result:
    round_ = _round_of(state)
    point, snapshot = optimizer.propose(_optimiser_of(round_))
    params = params_text(point, named=False)
    out.append(Note(state.key, "step", round_.number, step=len(snapshot.observations),
                    detail=params))  # fmt: skip
    state = msgspec.structs.replace(
        state, round=msgspec.structs.replace(round_, optimiser=snapshot)
    )
    return _issue(state, config, CommandType.OPT_STEP, Phase.WAITING_FOR_REPORT, at_ms, out, params)


def _on_step_report(state: Session, event: ReportArrived, config: MachineConfig) -> Result:
    report, at_ms, round_ = event.report, event.at_ms, _round_of(state)
    if _answers_initialise(state, report, config):
        return _on_initialise_report(state, event, config)
    if not _matches(state, report, config):
        return state, [Reject(state.key, _unmatched(state, report, config, state.key))]
    if not report.ok or report.f_val is None:
        return _failed(state, report.error or "step report carries no metrics.f_val", at_ms, config)
    snapshot = optimizer.learn(_optimiser_of(round_), report.f_val)
    step = len(snapshot.observations) - 1
    out: list[Effect] = [Note(state.key, "score", round_.number, step=step, value=report.f_val)]
    state = msgspec.structs.replace(
        state, phase=Phase.OPTIMIZING, outstanding=None,
        round=msgspec.structs.replace(round_, optimiser=snapshot),
    )  # fmt: skip
    if snapshot.remaining > 0:
        return _propose_step(state, at_ms, config, out)
    return _issue(state, config, CommandType.OPT_FINALISE, Phase.FINALIZING, at_ms, out,
                  _NO_PARAMS, best_i=optimizer.best_index(snapshot))  # fmt: skip


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
    return _end_round(state, state.model_id, note, event.at_ms, config)


def _answers_initialise(state: Session, report: Report, config: MachineConfig) -> bool:
    round_ = state.round
    return (
        round_ is not None
        and round_.kind == "optimise"
        and _counter(report, config, state.key) == round_.first_command
    )


def _on_final_report(state: Session, event: ReportArrived, config: MachineConfig) -> Result:
    """The report that ends a round: of ``train`` (TRAINING) or ``opt_finalise`` (FINALIZING)."""
    report, at_ms, round_ = event.report, event.at_ms, _round_of(state)
    if _answers_initialise(state, report, config):
        return _on_initialise_report(state, event, config)
    if not _matches(state, report, config):
        return state, [Reject(state.key, _unmatched(state, report, config, state.key))]
    if not report.ok or report.model_id is None:
        return _failed(state, report.error or "report carries no model_id", at_ms, config)
    best_params, history = state.best_params, state.history
    snapshot = round_.optimiser
    if snapshot is not None:
        history = optimizer.carried(snapshot) if snapshot.profile.keep else ()
        best_params = _winning_params(report.params, snapshot)
    state = msgspec.structs.replace(state, best_params=best_params, history=history)
    note = Note(state.key, "round_completed", round_.number, detail=str(report.model_id))
    return _end_round(state, report.model_id, note, at_ms, config)


def _winning_params(reported: Params | None, snapshot: OptimiserSnapshot) -> Params:
    # The factory's params_dict is what it actually built (and the originals used it,
    # keeping its key order); fall back to our own record of the best step.
    if reported is not None and sorted(n for n, _ in reported) == sorted(snapshot.profile.names):
        return reported
    return optimizer.finalise(snapshot)[1]


def _on_tick(state: Session, event: Tick, config: MachineConfig) -> Result:
    outstanding = state.outstanding
    if outstanding is None or event.at_ms < outstanding.deadline_ms:
        return state, []
    if event.at_ms < event.since_ms + config.report_timeout_ms:
        return state, []  # the process restarted meanwhile: give the factory its full time
    command = outstanding.command
    note = Note(state.key, "timeout", _round_of(state).number, step=_step_of(state),
                detail=f"no report for {command.type} {command.id!r}")  # fmt: skip
    return _failed(state, "deadline passed without a report", event.at_ms, config, [note])


def _nothing(state: Session, event: Tick, config: MachineConfig) -> Result:
    return state, []


def _reject_idle_report(state: Session, event: ReportArrived, config: MachineConfig) -> Result:
    return state, [Reject(state.key, _unmatched(state, event.report, config, state.key))]


def _or_hold(handler: Handler) -> Handler:
    """``handler`` for reports whose command was sent; a report for a later command is held."""

    def hold_early(state: Session, event: ReportArrived, config: MachineConfig) -> Result:
        report = event.report
        counter = _counter(report, config, state.key)
        if counter is None or counter < state.next_command:
            return handler(state, event, config)
        reply = f"report {report.reply_id!r:.40}: foreign reply_id (no such command was sent"
        if counter - state.next_command >= config.max_held:
            return state, [Reject(state.key, f"{reply}, nor within {config.max_held} of the next)")]
        if len(state.held) >= config.max_held:
            return state, [Reject(state.key, f"{reply}; {config.max_held} reports held already)")]
        number = state.round.number if state.round else state.rounds
        detail = f"report {report.reply_id!r:.40} held until its command is sent"
        held = msgspec.structs.replace(state, held=(*state.held, report))
        return held, [Note(state.key, "held", number, detail=detail)]

    hold_early.__name__ = f"hold_early_or_{handler.__name__}"
    return hold_early


def _check_params(params: Params, profile: Profile) -> str | None:
    names = [n for n, _ in params]
    if sorted(names) != sorted(profile.names):
        return f"parameters {names} must name exactly {list(profile.names)}"
    bounds = {d.name: d for d in profile.dimensions}
    for name, value in params:
        d = bounds[name]
        if d.kind == "Integer" and not isinstance(value, int):
            return f"parameter {name} must be an integer, got {value!r}"
        if not d.low <= value <= d.high:
            return f"parameter {name}={value!r} is outside [{d.low}, {d.high}]"
    return None


# --------------------------------------------------------------------------- the table
#
# (phase, event kind) -> handler. Event kinds: the three instruction kinds, REPORT
# and TICK. Every instruction is admitted (or coalesced) the same way in every
# phase, and started in order once the session is idle. A report for a command
# not sent yet is held (``_or_hold``); otherwise it is only ever the answer to the
# outstanding command of the phase it arrives in. INITIALIZING and OPTIMIZING have
# no rows: a session never rests in them (see the module docstring). Why each row
# is independent of how the two inputs interleave: see "Replay in any interleaving".

_ROUND_PHASES: Final = (Phase.TRAINING, Phase.WAITING_FOR_REPORT, Phase.FINALIZING)
_INSTRUCTION_KINDS: Final = tuple(kind.value for kind in InstructionKind)

TRANSITIONS: Final[dict[tuple[Phase, str], Handler]] = {
    **{(phase, kind): _admit for phase in (Phase.IDLE, *_ROUND_PHASES)
       for kind in _INSTRUCTION_KINDS},
    (Phase.IDLE, "REPORT"): _or_hold(_reject_idle_report),
    (Phase.IDLE, "TICK"): _nothing,
    **{(phase, "TICK"): _on_tick for phase in _ROUND_PHASES},
    (Phase.TRAINING, "REPORT"): _or_hold(_on_final_report),
    (Phase.WAITING_FOR_REPORT, "REPORT"): _or_hold(_on_step_report),
    (Phase.FINALIZING, "REPORT"): _or_hold(_on_final_report),
}  # fmt: skip


# --------------------------------------------------------------------------- shared steps


def _issue(
    state: Session,
    config: MachineConfig,
    kind: CommandType,
    phase: Phase,
    at_ms: int,
    out: list[Effect],
    params: str,
    *,
    best_i: int = -1,
    answered: bool = True,
) -> Result:
    """Send the round's next command (the next counter value) and move to ``phase``.

    An answered command becomes the outstanding one, with a deadline;
    ``opt_initialise`` is never answered, so nothing waits for it.
    """
    round_ = _round_of(state)
    number = state.next_command
    command = FactoryCommand(
        train_id=round_.train_id,
        optimisation_id=round_.optimisation_id,
        id=command_id(config.dialect, number * len(config.keys) + config.keys.index(state.key)),
        timestamp=round_.timestamp,
        type=kind.value,
        params=params,
        best_i=best_i,
    )
    state = msgspec.structs.replace(state, phase=phase, next_command=number + 1)
    if not answered:
        out.append(SendCommand(state.key, _command_message_id(state.key, command, 0), command))
        return state, out
    return _send(state, command, number, 0, at_ms, config, out)


def _send(
    state: Session,
    command: FactoryCommand,
    number: int,
    attempt: int,
    at_ms: int,
    config: MachineConfig,
    out: list[Effect],
) -> Result:
    out.append(SendCommand(state.key, _command_message_id(state.key, command, attempt), command))
    outstanding = Outstanding(command, number, attempt, at_ms + config.report_timeout_ms)
    return msgspec.structs.replace(state, outstanding=outstanding), out


def _failed(
    state: Session, reason: str, at_ms: int, config: MachineConfig, out: list[Effect] | None = None
) -> Result:
    """The outstanding command failed: resend it (bounded), then abort the round."""
    out = out if out is not None else []
    outstanding, number = state.outstanding, _round_of(state).number
    if outstanding is None:
        raise IllegalTransitionError(f"session {state.key!r} in {state.phase} awaits nothing")
    kind, step = outstanding.command.type, _step_of(state)
    if outstanding.attempt < config.max_retries:
        attempt = outstanding.attempt + 1
        detail = f"attempt {attempt + 1} of {kind}: {reason}"
        out.append(Note(state.key, "retry", number, step=step, detail=detail))
        return _send(state, outstanding.command, outstanding.number, attempt, at_ms, config, out)
    detail = f"{kind} failed {outstanding.attempt + 1} times: {reason}"
    note = Note(state.key, "round_aborted", number, step=step, detail=detail)
    return _end_round(state, state.model_id, note, at_ms, config, out)


def _end_round(
    state: Session,
    model_id: int | str,
    note: Note,
    at_ms: int,
    config: MachineConfig,
    out: list[Effect] | None = None,
) -> Result:
    """Play the engine with ``model_id``, go IDLE, and start the next queued instruction if any."""
    round_ = _round_of(state)
    out = out if out is not None else []
    play = SyncMessage(SyncType.PLAY.value, round_.timestamp, model_id)
    out.append(note)
    out.append(SendSync(state.key, _sync_id(state.key, round_.number, SyncType.PLAY), play))
    state = msgspec.structs.replace(
        state, phase=Phase.IDLE, model_id=model_id, round=None, outstanding=None
    )
    return _start_next(state, at_ms, config, out)


def _matches(state: Session, report: Report, config: MachineConfig) -> bool:
    outstanding = state.outstanding
    return outstanding is not None and _counter(report, config, state.key) == outstanding.number


def _counter(report: Report, config: MachineConfig, key: str) -> int | None:
    """The session-local command counter a reply id names, or None if not this key's."""
    number = command_number(report.reply_id)
    if number is None or config.keys[number % len(config.keys)] != key:
        return None
    return number // len(config.keys)


def _unmatched(state: Session | None, report: Report, config: MachineConfig, key: str) -> str:
    reply = f"report {report.reply_id!r:.40}"
    counter = _counter(report, config, key)
    if counter is None:
        return f"{reply}: foreign reply_id (not a command of session {key!r})"
    if state is None or counter >= state.next_command:
        return f"{reply}: foreign reply_id (no such command was sent)"
    if state.round is not None and counter >= state.round.first_command:
        awaited = state.outstanding.command.id if state.outstanding else None
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


def _command_message_id(key: str, command: FactoryCommand, attempt: int) -> str:
    return f"{key}/cmd/{command.id}/{attempt}"


def _sync_id(key: str, round_number: int, kind: SyncType) -> str:
    return f"{key}/sync/{round_number}/{kind.value}"
