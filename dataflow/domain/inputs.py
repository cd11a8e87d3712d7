"""What an event means to a session: the classes ``classify`` sorts every input into.

Role: an event is read once (``dataflow.domain.table.classify``, which asks the module
of each job: ``admission``, ``holding``, ``answers``, ``retries``), and what it is
decides the row of the table: (phase, class) -> one handler and one next phase. A
report, for instance, is early (its command is not sent yet), stray (a duplicate, a
stale or foreign one), the refusal of the round's ``opt_initialise``, an answer
(scored, scored last, or a model built), or a failure (resent, or given up on);
its command id is decoded once (``holding.counter_of``, through ``ids.CommandId``).

Every class is plain data. None is stored: a session's state holds only what the
handlers make of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, TypeAlias

from dataflow.domain.effects import Note
from dataflow.domain.messages import Deadline, Instruction, Report
from dataflow.domain.optimizer import OptimiserSnapshot, Point


class When(NamedTuple):
    """When a handler acts: the clock (deadlines only) and its cause's time in the logs."""

    at_ms: int
    #: The timestamp (ms) of the record that caused this, in its topic: costs are measured
    #: between such timestamps, so a replay measures the same (None: the log gave none).
    logged_ms: int | None


# --------------------------------------------------------------------------- instructions


@dataclass(frozen=True)
class Admitted:
    """An instruction that joins the queue (its round starts when the ones before it end)."""

    instruction: Instruction


@dataclass(frozen=True)
class Refused:
    """An instruction that is no new adaptation, or cannot be queued: dead-lettered."""

    reason: str


# --------------------------------------------------------------------------- reports, markers


@dataclass(frozen=True)
class Early:
    """A report or deadline marker for a command not sent yet (a replay read it first)."""

    item: Report | Deadline
    what: str


@dataclass(frozen=True)
class Stray:
    """A report or marker answering nothing awaited: duplicate, stale or foreign (dead-lettered)."""

    reason: str


@dataclass(frozen=True)
class InitialiseRefused:
    """The factory refused the round's ``opt_initialise``: every step would fail."""

    report: Report


@dataclass(frozen=True)
class ScoredLast:
    """A step's score, learned; the round's steps or its time are spent: finalise."""

    snapshot: OptimiserSnapshot
    notes: tuple[Note, ...]
    when: When


@dataclass(frozen=True)
class Scored(ScoredLast):
    """A step's score, learned; the optimiser's next point fits the round.

    (A subclass for its fields only: the table dispatches on the exact class.)
    """

    point: Point
    proposed: OptimiserSnapshot


@dataclass(frozen=True)
class Built:
    """The answer to ``train`` or ``opt_finalise``: the round's new model."""

    report: Report
    model_id: int | str


@dataclass(frozen=True)
class Failure:
    """The outstanding command failed: an error, or its deadline marker read back."""

    reason: str
    when: When
    #: Whether its deadline marker was read back (the log then says "timeout" first).
    timed_out: bool


class Resend(Failure):
    """A failure with retries left: the command is resent under a new id."""


class GiveUp(Failure):
    """A failure with the retries spent: the round is aborted."""


@dataclass(frozen=True)
class Spent:
    """A deadline marker for an attempt already answered or resent: nothing to do."""


# --------------------------------------------------------------------------- ticks


@dataclass(frozen=True)
class Due:
    """The outstanding command is overdue and its deadline marker not yet asked for."""


@dataclass(frozen=True)
class Quiet:
    """A tick with nothing overdue."""


Input: TypeAlias = (
    Admitted | Refused | Early | Stray | InitialiseRefused | Scored | ScoredLast | Built
    | Resend | GiveUp | Spent | Due | Quiet
)  # fmt: skip
