"""The controller: ``advance(state, event) -> (state, effects)``, and routing inputs to sessions.

Role: the entry point of the pure core, and its public API (``__all__``). The
Bytewax step calls ``advance`` and turns the returned effects into Kafka
messages, log lines and metrics. The pieces, one concept per module:

* ``events``: what happens (``InstructionArrived``, ``ReportArrived``, ``DeadlinePassed``,
  ``Tick``);
* ``effects``: what a session asks for (``SendCommand``, ``SendSync``, ``MarkDeadline``,
  ``Reject``, ``Note``);
* ``state``: what it remembers (``Session``, ``Round``, ``Phase``) and its versions;
* ``config``: what no message tells it (``MachineConfig``);
* ``inputs``: what an event is to a session (each event classified once);
* ``table``: (phase, input class) -> one handler and the one phase it leads to;
* the handlers, one module per job: ``admission`` (queueing instructions),
  ``rounds`` (starting, stepping, finalising, ending), ``answers`` (which command a
  report answers), ``holding`` (early reports), ``retries`` (deadlines, resends);
* ``ids``: command ids, decoded once; ``strategy``: the optimiser behind ``propose``.

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
A factory error report, or the outstanding command's deadline marker read back,
resends the command (under a new id) up to ``max_retries`` times, then aborts the
round; a refused ``opt_initialise`` aborts it at once. An aborted round plays the engine
with the model it had. So every round that
pauses the engine ends with exactly one play.

A session rests in one of four phases: IDLE, TRAINING, WAITING_FOR_REPORT and
FINALIZING. (The seed's INITIALIZING and OPTIMIZING named moments that, here, pass
within one ``advance`` call: ``opt_initialise`` is not awaited, and a step's score
is learned and the next point sent in one row.)

Replay in any interleaving
--------------------------
Bytewax re-reads each input topic in its own order after a crash, but may merge
the two topics differently than the first run did. The commands must not
depend on that merge. Let *I* be the instruction sequence and *R* the report
sequence; the commands are a function of (I, R) alone because every row is:

* **Instruction rows (any phase) -> admit.** Whether an instruction is admitted
  depends only on the instructions before it (``admission.read_instruction``: its kind and
  timestamp against the last admitted ones; UPDATE_PARAMS on its own content),
  never on the phase it finds. Admitted instructions run strictly in order, so
  the sequence of rounds is a function of I. The one exception is a full queue
  (``max_queued``, 1,000), a safety valve outside this guarantee, documented for
  operators: admission by content (``instruction_min_gap``) keeps it short.
* **Report rows.** A report names its command by ``reply_id``, a counter. If that
  command has not been sent yet (a replay delivered the report before the
  instruction whose round sends it), the report is *held* in the state and
  fed in as soon as the command is sent (``advance``). Once sent, a report is
  either the answer to the outstanding command, a refusal of the round's
  ``opt_initialise`` (read before the first step's report, as the factory sent
  it), or a duplicate or stale one, whatever the merge order; or forged, if the
  report topic stamped it before its command's cause (``answers.forged``; a held
  one stamped before any later cause is refused as soon as that cause is read,
  ``holding.forged_ahead``): the log times compared are the records' own. So command ``c``
  sees exactly R's reports for ``c``, in R's order, and what it sends next
  depends on nothing else. (Also outside
  the guarantee: a hold that is full, ``max_held``, 1,024 reports; a replay
  holds at most the reports read since the last snapshot.)
* **Deadline rows.** A deadline is a message too. A tick (wall clock) only asks
  for a *deadline marker* of an overdue command (``MarkDeadline``), written to the
  report topic; the timeout is decided when the marker is read back
  (``DeadlinePassed``), in R's order: a report ahead of it answers the command,
  one behind it is late. Markers are held like early reports. So a timeout, the
  resend under a new id and an abort are functions of R too, whatever the clock
  did in a replay. A restart makes no marker due: none is asked for until
  ``report_timeout_ms`` after the running process began (``Tick.since_ms``).

Every output therefore depends only on the key's own (I, R): reports are
matched by id, proposals are seeded by key, round and observation count. Times
(``at_ms``) only decide when a marker is asked for and never appear in an output,
so a replay re-emits byte-identical messages under the same message ids, which
the output sink (``dataflow.adapters.outbox``) finds on their topics and does not
write again. Every command attempt has an id of its own: no id is sent twice.

State versions: see ``dataflow.domain.state``. Recovery stores written before
the split pickled ``Session``, ``Round``, ``Outstanding`` and ``Phase`` under this
module's path, so they stay importable from here.
"""

from __future__ import annotations

import msgspec

from dataflow.domain import table
from dataflow.domain.config import DEFAULT_KEY, NO_MODEL, Baseline, MachineConfig
from dataflow.domain.effects import (
    Effect,
    MarkDeadline,
    Note,
    NoteKind,
    Reject,
    SendCommand,
    SendSync,
)
from dataflow.domain.errors import ConfigError, IllegalTransitionError
from dataflow.domain.events import DeadlinePassed, Event, InstructionArrived, ReportArrived, Tick
from dataflow.domain.holding import forged_ahead, is_ripe
from dataflow.domain.inputs import Input
from dataflow.domain.messages import Deadline, Instruction, Rejection, Report
from dataflow.domain.results import Result
from dataflow.domain.state import (
    STATE_VERSION,
    Outstanding,
    Phase,
    Round,
    Session,
    new_session,
    upgrade,
)

__all__ = [
    "DEFAULT_KEY", "NO_MODEL", "STATE_VERSION", "Baseline", "Deadline", "DeadlinePassed",
    "Effect", "Event", "InstructionArrived", "MachineConfig", "MarkDeadline", "Note", "NoteKind",
    "Outstanding", "Phase", "Reject", "ReportArrived", "Round", "SendCommand", "SendSync",
    "Session", "Tick", "advance", "new_session", "route_deadline", "route_instruction",
    "route_report", "upgrade",
]  # fmt: skip

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
    return _route(report.reply_id, "report: `$.reply_id`", config)


def route_deadline(deadline: Deadline, config: MachineConfig) -> str | Rejection:
    """The session key of a deadline marker, read back from the command id it names."""
    return _route(deadline.command_id, "deadline marker: command id", config)


def _route(command_id: int | str, what: str, config: MachineConfig) -> str | Rejection:
    ref = config.read_command_id(command_id)
    if ref is None:
        return Rejection(f"{what} {command_id!r:.40} is not a command id")
    return ref.key


# --------------------------------------------------------------------------- advance


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
    state, effects = _step(upgrade(state), event, config)
    return _settle(state, effects, event.at_ms, config)


def _step(state: Session, event: Event, config: MachineConfig) -> Result:
    """One row of the table, then the queue's head if that left the session idle."""
    state, effects = _row(state, table.classify(state, event, config), config)
    return _start_queued(state, effects, event.at_ms, config)


def _row(state: Session, read: Input, config: MachineConfig) -> Result:
    """Run the row of (phase, class) and rest in the phase it names."""
    row = table.TABLE.get((state.phase, type(read)))
    if row is None:
        raise IllegalTransitionError(f"no transition from {state.phase} on {type(read).__name__}")
    after, effects = row.handler(state, read, config)
    return _rest(state, after, row.handler.__name__, row.to), effects


def _rest(before: Session, after: Session, handler: str, to: Phase) -> Session:
    """``after`` in the phase its row names; a handler never sets the phase itself."""
    if after.phase is not before.phase:
        raise IllegalTransitionError(f"{handler} set the phase itself ({before.phase} to "
                                     f"{after.phase}): the table sets it")  # fmt: skip
    return msgspec.structs.replace(after, phase=to)


def _start_queued(
    state: Session, effects: list[Effect], at_ms: int, config: MachineConfig
) -> Result:
    """While idle, begin the queue's head: an UPDATE_PARAMS applies, the others start a round."""
    while state.phase is Phase.IDLE and state.queue:
        head, state = state.queue[0], msgspec.structs.replace(state, queue=state.queue[1:])
        start = table.STARTS[head.kind]
        after, more = start.handler(state, head, at_ms, config)
        state, effects = _rest(state, after, start.handler.__name__, start.to), [*effects, *more]
    return state, effects


def _settle(state: Session, effects: list[Effect], at_ms: int, config: MachineConfig) -> Result:
    """Feed in held reports and deadline markers whose command has now been sent, oldest first.

    A held item was read before its command was (re-)sent. Once the command is
    sent, it goes through the same row as if it had arrived just now: a report is
    the answer to the outstanding command, or a duplicate or stale one; a marker
    times the command out if it is still awaited.
    """
    while True:
        ripe = next((i for i, item in enumerate(state.held) if is_ripe(state, item, config)),
                    None)  # fmt: skip
        if ripe is None:
            state, forged = forged_ahead(state, config)
            return state, [*effects, *forged]
        item = state.held[ripe]
        state = msgspec.structs.replace(state, held=state.held[:ripe] + state.held[ripe + 1 :])
        event: Event = (ReportArrived(item, at_ms) if isinstance(item, Report)
                        else DeadlinePassed(item, at_ms))  # fmt: skip
        state, more = _step(state, event, config)
        # A refusal here is of the held item, not of the input that released it.
        refused = [msgspec.structs.replace(e, source=item.source) if isinstance(e, Reject)
                   else e for e in more]  # fmt: skip
        effects = [*effects, *refused]
