"""What a session remembers: its phase, its round, its counters. Small, plain, versioned.

State versions
--------------
``Session.version`` is 4, and every state is read through ``upgrade``: version
1 (one ``pending`` instruction, UPDATE_PARAMS at once), version 2 (a resend
under the same id, deadlines decided by the clock) and version 3 (no costs, every
round paused) are migrated on first touch;
a newer one is refused with ``StateVersionError``, naming both versions.
States are pickled by Bytewax, positionally and by class path: new fields go
last with defaults, and ``dataflow.domain.machine`` keeps the classes importable
under the path that stores written before this module existed name.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final, Literal

import msgspec

from dataflow.domain.config import MachineConfig
from dataflow.domain.errors import StateVersionError
from dataflow.domain.messages import (
    Deadline,
    FactoryCommand,
    Instruction,
    InstructionKind,
    Params,
    Report,
)
from dataflow.domain.optimizer import Observation, OptimiserSnapshot

STATE_VERSION: Final = 5


class Phase(StrEnum):
    """Where a session rests in its conversation (``dataflow.domain.table`` moves it)."""

    IDLE = "IDLE"
    TRAINING = "TRAINING"
    WAITING_FOR_REPORT = "WAITING_FOR_REPORT"
    FINALIZING = "FINALIZING"


class Outstanding(msgspec.Struct, frozen=True):
    """The one command awaiting a report: its latest attempt, and the earlier ones."""

    command: FactoryCommand
    #: The attempt's command counter (every attempt is sent under an id of its own).
    number: int
    #: Resends so far (0: the first attempt).
    attempt: int
    #: Wall-clock time after which a tick asks for a deadline marker.
    deadline_ms: int
    # Version 3. New fields go last, with defaults: states are pickled positionally.
    #: Whether this attempt's deadline marker was asked for (once per attempt).
    marked: bool = False
    #: Counters of the earlier attempts: a late success of one of them answers the command.
    earlier: tuple[int, ...] = ()
    # Version 4.
    #: The log timestamp (ms) of what made the controller send this attempt: a step's cost
    #: is measured from it to its report's (``dataflow.domain.cost``).
    sent_ms: int | None = None


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
    # Version 4.
    #: Whether the engine was paused for this round (``MachineConfig.pause_engine``):
    #: an unpaused round ends without a play.
    paused: bool = True


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
    #: Reports and deadline markers whose command is not sent yet (a replay read them
    #: early), in arrival order.
    held: tuple[Report | Deadline, ...] = ()
    #: Timestamps of the last admitted OPTIMIZE or RETRAIN, and of the last OPTIMIZE.
    last_admitted: int | None = None
    last_optimize: int | None = None
    # Version 4.
    #: The log timestamp (ms) of what ended the last round (None: unknown): a queued
    #: round starts then.
    ended_ms: int | None = None


def new_session(key: str, config: MachineConfig) -> Session:
    """The state of a key that has seen nothing yet; its counters start at the baseline."""
    keep = config.profile.keep
    base = config.baseline
    return Session(
        key=key,
        phase=Phase.IDLE,
        best_params=config.initial_params,
        model_id=config.initial_model_id,
        history=config.warm_start[-keep:] if keep else (),
        next_command=base.next_command,
        trains=base.trains,
        optimisations=base.optimisations,
        rounds=base.rounds,
    )


def upgrade(state: Session) -> Session:
    """The state in the current version: version 1 is migrated, a newer one refused."""
    if state.version == STATE_VERSION:
        return state
    if state.version == 4:
        # v5 gave held reports and deadline markers their place in the report topic
        # (``source``, a field with a default, read as None: such an item refused later is
        # dead-lettered under the input that released it, as before).
        return msgspec.structs.replace(state, version=STATE_VERSION)
    if state.version == 3:
        # v4 added fields with defaults (read as they are): the log times costs are measured
        # from (unknown for a command sent before, so that step's cost is unknown), and
        # whether a round paused the engine (every round did, before).
        return upgrade(msgspec.structs.replace(state, version=4))
    if state.version == 2:
        # v3 added fields with defaults (read as they are) and changed what a resend is
        # (a new id) and when a timeout is decided (its marker read back): nothing to move.
        return upgrade(msgspec.structs.replace(state, version=3))
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
        return upgrade(msgspec.structs.replace(
            state, pending=None, queue=queue, version=2,
            last_admitted=max(admitted, default=None), last_optimize=max(optimised, default=None),
        ))  # fmt: skip
    raise StateVersionError(
        f"session {state.key!r} was saved by a controller with state version {state.version}; "
        f"this controller reads versions 1 to {STATE_VERSION}. Run a release that writes "
        f"version {state.version} (or newer) on this recovery directory, or start from a fresh "
        "one with new, empty input topics (a fresh directory re-reads the topics from their "
        "start; the sessions' rounds, counters and optimiser history are lost)."
    )
