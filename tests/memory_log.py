"""The outbox's log in memory: topics that outlive a flow's executions, as a broker's do.

``Topics`` stands in for the broker (one partition per topic, every message kept,
every delivery counted); ``MemoryLog`` is one writer, fenced as a transactional
producer is: once a newer writer has fenced, an older one's writes raise.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from dataflow.adapters.kafka import DIGEST_HEADER, MESSAGE_ID_HEADER, OutMessage
from dataflow.adapters.outbox import FencedError, Offsets, Outbox


class Topics:
    """The messages of every topic, in order (partition 0 only)."""

    def __init__(self) -> None:
        self.logs: dict[str, list[OutMessage]] = defaultdict(list)
        self.generation = 0
        self.fenced = 0
        self.closed = 0
        #: How many messages each writer found when it read back, in order.
        self.read_back: list[int] = []

    def of(self, topic: str) -> list[OutMessage]:
        return list(self.logs[topic])

    def duplicates(self) -> dict[str, int]:
        """Message ids written more than once, with how many times."""
        counts: dict[str, int] = defaultdict(int)
        for messages in self.logs.values():
            for message in messages:
                if message.message_id is not None:
                    counts[message.message_id] += 1
        return {mid: n for mid, n in counts.items() if n > 1}

    def outbox(self, default_topic: str, topics: Sequence[str]) -> Outbox:
        """An outbox writing here, reading ``topics`` back from their start without state."""
        return Outbox(lambda: MemoryLog(self), default_topic, topics, {})


class MemoryLog:
    """One writer of ``Topics``; ``fence`` makes every earlier one unable to write."""

    def __init__(self, topics: Topics) -> None:
        self.topics = topics
        self.generation = -1

    def fence(self) -> None:
        self.topics.generation += 1
        self.topics.fenced += 1
        self.generation = self.topics.generation

    def partitions(self, topic: str) -> list[int]:
        return [0]

    def read(self, start: Offsets) -> tuple[list[tuple[str, bytes | None]], Offsets]:
        found = []
        for (topic, _), offset in start.items():
            for message in self.topics.logs[topic][max(offset, 0) :]:
                headers = dict(message.headers)
                if MESSAGE_ID_HEADER in headers:
                    found.append((headers[MESSAGE_ID_HEADER].decode(), headers.get(DIGEST_HEADER)))
        self.topics.read_back.append(len(found))
        return found, {(t, p): len(self.topics.logs[t]) for t, p in start}

    def settle(self) -> None:
        if self.generation != self.topics.generation:
            raise FencedError("a newer writer fenced this one")

    def close(self) -> None:
        self.topics.closed += 1

    def write(self, messages: Sequence[tuple[str, OutMessage]]) -> Offsets:
        if self.generation != self.topics.generation:
            raise FencedError("a newer writer fenced this one")
        for topic, message in messages:
            self.topics.logs[topic].append(message)
        return {(topic, 0): len(self.topics.logs[topic]) for topic, _ in messages}
