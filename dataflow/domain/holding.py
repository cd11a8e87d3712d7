"""Holding: reports and deadline markers read before their command was sent.

Role: a replay may merge the two input topics in another order than the first run
did, and so read a report (or a deadline marker) before the instruction whose
round sends its command. Such an item is *early*: it waits in ``Session.held``
until its command is sent, and ``advance`` then feeds it in as if it had just
arrived (``machine._settle``). So each command sees exactly its own reports, in
the report topic's order, whatever the merge order.

A held item appended to the report topic before the latest cause the session
knows (the awaited command's, ``Outstanding.sent_ms``, or, idle, the end of its
last round, ``Session.ended_ms``) can be no genuine early one: its own command
comes later, from a cause no earlier than that, and a genuine report follows its
command's cause. It is refused as forged at once (``forged_ahead``), not kept until
its command is sent, so that a flood of them fills the hold for one command at
most. (Fed in at its command, it would be refused as forged too: only the moment
changes, never a command.)
"""

from __future__ import annotations

import msgspec

from dataflow.domain.config import MachineConfig
from dataflow.domain.effects import Note, Reject
from dataflow.domain.inputs import Early, Stray
from dataflow.domain.messages import Deadline, Report
from dataflow.domain.results import Result
from dataflow.domain.state import Session


def named(item: Report | Deadline) -> int | str:
    """The wire id of the command a report answers or a deadline marker names."""
    return item.reply_id if isinstance(item, Report) else item.command_id


def counter_of(state: Session, item: Report | Deadline, config: MachineConfig) -> int | None:
    """The session's command counter an item names, or None if not one of this session's."""
    ref = config.read_command_id(named(item))
    return ref.counter if ref is not None and ref.key == state.key else None


def read_early(
    state: Session, item: Report | Deadline, counter: int | None, config: MachineConfig
) -> Early | Stray | None:
    """Early if ``item``'s command (``counter``) is not sent yet (Stray if it cannot be held)."""
    if counter is None or counter < state.next_command:
        return None
    what, field = ("report", "reply_id") if isinstance(item, Report) else ("deadline marker", "id")
    reply = f"{what} {named(item)!r:.40}: foreign {field} (no such command was sent"
    if counter - state.next_command >= config.max_held:
        return Stray(f"{reply}, nor within {config.max_held} of the next)")
    if len(state.held) >= config.max_held:
        return Stray(f"{reply}; {config.max_held} held already)")
    return Early(item, what)


def hold(state: Session, early: Early, config: MachineConfig) -> Result:
    """Keep the item until its command is sent."""
    number = state.round.number if state.round else state.rounds
    detail = f"{early.what} {named(early.item)!r:.40} held until its command is sent"
    held = msgspec.structs.replace(state, held=(*state.held, early.item))
    return held, [Note(state.key, "held", number, detail=detail)]


def forged_ahead(state: Session, config: MachineConfig) -> tuple[Session, list[Reject]]:
    """Refuse the held items appended before the session's latest cause (see above)."""
    outstanding = state.outstanding
    cause = state.ended_ms if outstanding is None else outstanding.sent_ms
    if cause is None:
        return state, []
    skew = config.report_clock_skew_ms
    before = (f"{outstanding.command.id!r}, sent before it, followed" if outstanding
              else "the last round ended on")  # fmt: skip
    kept: list[Report | Deadline] = []
    refused: list[Reject] = []
    for item in state.held:
        if item.logged_ms is None or item.logged_ms + skew >= cause:
            kept.append(item)
            continue
        what = "report" if isinstance(item, Report) else "deadline marker"
        reason = (f"{what} {named(item)!r:.40}: forged (appended at {item.logged_ms} ms, "
                  f"before its command was sent: {before} a record appended at {cause} ms; "
                  f"REPORT_CLOCK_SKEW_MS {skew})")  # fmt: skip
        refused.append(Reject(state.key, reason, item.source))
    if not refused:
        return state, []
    return msgspec.structs.replace(state, held=tuple(kept)), refused


def is_ripe(state: Session, item: Report | Deadline, config: MachineConfig) -> bool:
    """Whether a held report's or deadline marker's command has been sent by now."""
    return (counter_of(state, item, config) or 0) < state.next_command
