"""An output sink that does not repeat itself: each message id reaches its topic once.

Role: the flow's one output. Bytewax 0.21.1's output is at-least-once: after a
crash it resumes from the last snapshot and emits again everything emitted
since (byte for byte: the sessions decide the same). The services act on every
copy they read and read no header, so the copies must never reach them. Bytewax
has no transactional sink and no hook that runs once a snapshot is durable; this
sink does what can be done instead:

* **Its recovery state is where it has written.** ``Outbox`` is a
  ``FixedPartitionedSink`` of one partition (``outputs``); its state
  (``OutboxState``) is the next offset of every partition of its topics after its
  writes of the epoch, snapshotted in the same epoch as the sessions. A resume
  rolls both back together.
* **On resume it reads what it wrote since.** When the partition is built (resumed,
  or first used) it reads its topics from those offsets to their end, as the
  services read them (``read_uncommitted``), and remembers the ``message-id`` and
  ``message-digest`` headers it finds. A replayed message whose id is there is not
  written again; one whose payload differs raises ``ReplayDivergedError``: a bug,
  never skipped, never sent.
* **A process thought dead writes nothing after that read.** Before reading, the
  partition fences earlier writers: its producer is transactional, with a stable
  ``transactional.id`` (``KAFKA_TRANSACTIONAL_ID``), and ``init_transactions``
  aborts their open transaction and makes the broker refuse their writes. Every
  write is acknowledged before ``write_batch`` returns, inside a transaction (a
  write must be in one to be fenceable) that a timer commits once it is
  ``kafka_log.COMMIT_EVERY_S`` old, out of the flow's way: a commit in a hop would cost the
  commit, and the next write's transaction would wait for the broker to finish it
  (~30 ms measured) and to enrol each partition again. The services read
  uncommitted messages anyway, and a transaction a crash left open is read back
  like any other.

Messages without a ``message_id`` (dead letters) are written in the same
transactions but not deduplicated: a replay may repeat one.

The sink partition is built by Bytewax (``build_part``) from the loads of the
snapshot, before any input is read, or lazily at the first write of a flow that
has no state for it yet; its starting offsets then come from the recovery
directory's origin (``dataflow.adapters.origin``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Final, Protocol

import msgspec
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from confluent_kafka import OFFSET_BEGINNING
from typing_extensions import override

from dataflow.adapters.kafka import (
    DIGEST_HEADER,
    MESSAGE_ID_HEADER,
    OutMessage,
)
from dataflow.adapters.observability import LAST_SNAPSHOT

log = logging.getLogger(__name__)

#: The sink's one partition: a persisted name (its state is keyed by it).
PARTITION: Final = "outputs"

#: (topic, partition) -> offset.
Offsets = dict[tuple[str, int], int]


class ReplayDivergedError(RuntimeError):
    """A replayed message id is on its topic with another payload: a bug, so the flow stops."""


class FencedError(RuntimeError):
    """Another controller process took over the outputs: this one is stale and must stop."""


class OutboxState(msgspec.Struct, frozen=True):
    """The outbox partition's recovery state: the next offset of each topic partition."""

    offsets: tuple[tuple[str, int, int], ...]
    version: int = 1

    def as_offsets(self) -> Offsets:
        """The offsets by (topic, partition)."""
        return {(topic, part): offset for topic, part, offset in self.offsets}


def digest(message: OutMessage, topic: str) -> bytes:
    """What identifies a message's payload as the services see it: topic, key and value."""
    hashed = hashlib.blake2b(digest_size=16)
    for part in (topic.encode(), message.key or b"", message.value):
        hashed.update(len(part).to_bytes(8, "big"))
        hashed.update(part)
    return hashed.hexdigest().encode()


class Log(Protocol):
    """One writer's view of its output topics: fence, read back, write atomically."""

    def fence(self) -> None:
        """Make every earlier writer of this log unable to write (before ``read``)."""

    def partitions(self, topic: str) -> list[int]:
        """The partitions of ``topic``."""

    def read(self, start: Offsets) -> tuple[list[tuple[str, bytes | None]], Offsets]:
        """``(message id, digest)`` of every message from ``start`` to the end, and the ends."""

    def write(self, messages: Sequence[tuple[str, OutMessage]]) -> Offsets:
        """Write ``(topic, message)`` pairs in order, each acknowledged; the next offsets."""

    def settle(self) -> None:
        """Raise what went wrong since the last write, out of the flow's sight (a commit)."""

    def close(self) -> None:
        """End what was written (a transaction) and let go."""


class OutboxPartition(StatefulSinkPartition[OutMessage, OutboxState]):
    """The one writer of the flow's outputs; see the module docstring."""

    def __init__(
        self, log_: Log, default_topic: str, topics: Sequence[str], start: Offsets,
        on_stale: Callable[[FencedError], None] | None = None,
    ) -> None:  # fmt: skip
        self._log = log_
        self._default_topic = default_topic
        #: What a fenced write or commit does: raise (default), or stop the process.
        self._on_stale = on_stale
        began = time.monotonic()
        log_.fence()
        fenced = time.monotonic()
        offsets = read_back_from(log_, topics, start)
        found, ends = log_.read(offsets)
        #: Message id -> digest of what is on the topics since the snapshot.
        self._written: dict[str, bytes | None] = dict(found)
        self._offsets: Offsets = {**offsets, **ends}
        log.info("outbox ready", extra={"fields": {
            "fence_ms": round((fenced - began) * 1000, 1),
            "read_back_ms": round((time.monotonic() - fenced) * 1000, 1),
            "read_back_messages": len(found),
        }})  # fmt: skip

    @override
    def write_batch(self, items: list[OutMessage]) -> None:
        todo: list[tuple[str, OutMessage]] = []
        withheld: list[str] = []
        for item in items:
            topic = item.topic or self._default_topic
            if item.message_id is not None:
                item = _stamped(item, topic)
                if item.message_id in self._written:
                    _same_payload(item, self._written.pop(item.message_id))
                    withheld.append(item.message_id)
                    continue  # on its topic already: the services have it
            todo.append((topic, item))
        if withheld:
            fields = {"withheld": len(withheld), "ids": withheld[:20]}
            log.info("replayed messages already on their topics, not written again",
                     extra={"fields": fields})  # fmt: skip
        if todo:
            with self._stopping_if_stale():
                self._offsets.update(self._log.write(todo))

    @override
    def snapshot(self) -> OutboxState:
        with self._stopping_if_stale():
            self._log.settle()  # a failed commit stops the flow before it writes the epoch
        LAST_SNAPSHOT.set_to_current_time()
        return OutboxState(tuple((t, p, o) for (t, p), o in sorted(self._offsets.items())))

    @contextlib.contextmanager
    def _stopping_if_stale(self) -> Iterator[None]:
        try:
            yield
        except FencedError as error:
            if self._on_stale is None:
                raise
            self._on_stale(error)
            raise

    @override
    def close(self) -> None:
        self._log.close()


def read_back_from(log_: Log, topics: Sequence[str], start: Offsets) -> Offsets:
    """Where to read back: ``start``, and every partition not in it (one added since) whole."""
    return {(topic, part): start.get((topic, part), OFFSET_BEGINNING)
            for topic in topics for part in log_.partitions(topic)}  # fmt: skip


def _stamped(item: OutMessage, topic: str) -> OutMessage:
    """The message with its id and digest headers (the digest of what it carries)."""
    assert item.message_id is not None  # noqa: S101 - callers check
    headers = [
        *item.headers,
        (MESSAGE_ID_HEADER, item.message_id.encode()),
        (DIGEST_HEADER, digest(item, topic)),
    ]
    return OutMessage(item.key, item.value, headers, topic, item.barrier, item.message_id)


def _same_payload(item: OutMessage, seen: bytes | None) -> None:
    """Raise unless the replayed ``item`` carries what its id's message on the topic carries.

    A message written before digests were (by an earlier release) has none: its id is
    enough.
    """
    mine = dict(item.headers)[DIGEST_HEADER]
    if seen is not None and seen != mine:
        raise ReplayDivergedError(
            f"message {item.message_id!r} is on topic {item.topic!r} with another payload "
            f"(digest {seen.decode(errors='replace')}, replay {mine.decode()}): the "
            "replay decided otherwise than the first run. This is a bug; the controller stops "
            "rather than send a second version. Keep the recovery directory and the topics "
            "for the report."
        )


class Outbox(FixedPartitionedSink[OutMessage, OutboxState]):
    """The flow's output: one partition that writes every message once (module docstring).

    ``make_log`` builds the partition's ``Log`` (Kafka in production, in memory in the
    flow tier); ``topics`` are the topics it reads back; ``start`` is where a partition
    without state reads back from (the recovery directory's origin).
    """

    def __init__(
        self,
        make_log: Callable[[], Log],
        default_topic: str,
        topics: Sequence[str],
        start: Mapping[tuple[str, int], int],
        on_stale: Callable[[FencedError], None] | None = None,
    ) -> None:
        self._make_log = make_log
        self._default_topic = default_topic
        self._topics = tuple(topics)
        self._start = dict(start)
        self._on_stale = on_stale

    @override
    def list_parts(self) -> list[str]:
        return [PARTITION]

    @override
    def part_fn(self, item_key: str) -> int:
        return 0

    @override
    def build_part(
        self, step_id: str, for_part: str, resume_state: OutboxState | None
    ) -> OutboxPartition:
        start = self._start if resume_state is None else resume_state.as_offsets()
        return OutboxPartition(self._make_log(), self._default_topic, self._topics, start,
                               self._on_stale)  # fmt: skip
