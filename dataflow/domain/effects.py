"""What a session asks the world to do: the effects ``advance`` returns."""

from __future__ import annotations

from typing import Literal, TypeAlias

import msgspec

from dataflow.domain.messages import Deadline, FactoryCommand, SyncMessage


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


class MarkDeadline(msgspec.Struct, frozen=True, tag="deadline"):
    """Write a deadline marker to the report topic; ``message_id`` is stable across replays.

    Read back, it becomes a ``DeadlinePassed`` event: the timeout is decided then.
    """

    key: str
    message_id: str
    deadline: Deadline


class Reject(msgspec.Struct, frozen=True, tag="reject"):
    """The event was not used; ``reason`` says why (for the dead-letter topic)."""

    key: str
    reason: str
    #: The report topic's partition and offset of a held report or marker refused when
    #: another input released it (None: the input being advanced is the one refused).
    source: tuple[int, int] | None = None


NoteKind: TypeAlias = Literal[
    "round_started", "round_completed", "round_aborted", "step", "score",
    "retry", "overdue", "timeout", "queued", "held", "params_updated",
    "budget_spent", "over_budget",
]  # fmt: skip


class Note(msgspec.Struct, frozen=True, tag="note"):
    """Something worth a log line and a metric."""

    key: str
    kind: NoteKind
    round: int
    step: int | None = None
    detail: str = ""
    value: float | None = None
    #: A scored step's factory seconds (``dataflow.domain.cost``), when measured.
    seconds: float | None = None


Effect: TypeAlias = SendCommand | SendSync | MarkDeadline | Reject | Note


def send_command(key: str, command: FactoryCommand, attempt: int) -> SendCommand:
    """The effect sending ``command`` (its ``attempt``-th resend; 0 the first time)."""
    return SendCommand(key, f"{key}/cmd/{command.id}/{attempt}", command)


def mark_deadline(key: str, command_id: int | str) -> MarkDeadline:
    """The effect asking for the deadline marker of command ``command_id``."""
    return MarkDeadline(key, f"{key}/deadline/{command_id}", Deadline(command_id))


def send_sync(key: str, round_number: int, sync: SyncMessage) -> SendSync:
    """The effect sending the pause or play of round ``round_number``."""
    return SendSync(key, f"{key}/sync/{round_number}/{sync.type}", sync)
