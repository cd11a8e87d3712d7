"""Command ids: which session's command a wire id names, decoded once.

Role: the one place that knows how a session's command counter becomes the id on
the wire and back. Every command attempt has a counter of its own in its session
(``Session.next_command``); with several sessions the counters are interleaved
(``counter * len(keys) + index``), so a report's ``reply_id`` (or a deadline
marker's id) names both the session it belongs to and the command within it. The
dialect writes the number (``17`` or ``"cmd-17"``); ``messages.command_number``
reads either form back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from dataflow.domain.messages import command_number


class CommandId(NamedTuple):
    """Session ``key``'s command number ``counter``."""

    key: str
    counter: int

    @classmethod
    def read(cls, wire: int | str, keys: tuple[str, ...]) -> CommandId | None:
        """The command a wire id names, or None for anything never issued."""
        number = command_number(wire)
        if number is None:
            return None
        return cls(keys[number % len(keys)], number // len(keys))

    def wire(self, keys: tuple[str, ...], write: Callable[[int], int | str]) -> int | str:
        """The id on the wire, written by a dialect's ``command_id``."""
        return write(self.counter * len(keys) + keys.index(self.key))
