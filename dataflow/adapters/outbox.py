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
  aborts their open transaction and makes the broker refuse their writes. Each
  ``write_batch`` is one transaction, committed before it returns (so that a
  write is fenceable; the services read uncommitted messages anyway, and a
  transaction a crash left open is read back like any other).

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
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Protocol

import msgspec
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Message, Producer
from confluent_kafka import KafkaError as ConfluentKafkaError
from confluent_kafka.cimpl import TopicPartition
from typing_extensions import override

from dataflow.adapters.config import Settings
from dataflow.adapters.kafka import (
    DIGEST_HEADER,
    MESSAGE_ID_HEADER,
    DeliveryError,
    OutMessage,
    client_config,
)

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
        """Write ``(topic, message)`` pairs in order, atomically; the next offsets written."""


class OutboxPartition(StatefulSinkPartition[OutMessage, OutboxState]):
    """The one writer of the flow's outputs; see the module docstring."""

    def __init__(
        self, log_: Log, default_topic: str, topics: Sequence[str], start: Offsets
    ) -> None:
        self._log = log_
        self._default_topic = default_topic
        began = time.monotonic()
        log_.fence()
        fenced = time.monotonic()
        # Every partition of every topic: one added since the last snapshot is read whole.
        offsets = {(topic, part): start.get((topic, part), OFFSET_BEGINNING)
                   for topic in topics for part in log_.partitions(topic)}  # fmt: skip
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
            self._offsets.update(self._log.write(todo))

    @override
    def snapshot(self) -> OutboxState:
        return OutboxState(tuple((t, p, o) for (t, p), o in sorted(self._offsets.items())))


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
    ) -> None:
        self._make_log = make_log
        self._default_topic = default_topic
        self._topics = tuple(topics)
        self._start = dict(start)

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
        return OutboxPartition(self._make_log(), self._default_topic, self._topics, start)


# --------------------------------------------------------------------------- Kafka


class KafkaLog:
    """The outbox's log on Kafka: a transactional producer, and a consumer to read back.

    ``config``: the controller's client settings (brokers, security, logger).
    """

    def __init__(
        self, config: Mapping[str, Any], transactional_id: str, timeout_s: float,
        max_message_bytes: int,
    ) -> None:  # fmt: skip
        self._config = dict(config)
        self._timeout = timeout_s
        self._transactional_id = transactional_id
        self._fenced = False
        self._producer = Producer({
            **self._config,
            "transactional.id": transactional_id,
            "enable.idempotence": "true",
            "acks": "all",
            "linger.ms": "0",
            "message.max.bytes": str(max(1_048_576, max_message_bytes * 2)),
            # Keyed as Java's and kafka-python's producers key: an Avro key lands where
            # the original services would put it.
            "partitioner": "murmur2_random",
        })  # fmt: skip

    def fence(self) -> None:
        """``init_transactions``: earlier producers with this id are fenced.

        Their open transaction is aborted; its messages stay in the log, where ``read``
        finds them (the services may have read them already).
        """
        if self._fenced:
            return  # once per producer: it stays the newest until a newer one fences it
        try:
            self._producer.init_transactions(self._timeout)
        except KafkaException as error:
            raise DeliveryError(f"cannot start the transactional producer "
                                f"{self._transactional_id!r}: {error}") from error  # fmt: skip
        self._fenced = True

    def partitions(self, topic: str) -> list[int]:
        """Partitions of ``topic`` from the broker's metadata."""
        metadata = self._producer.list_topics(topic, timeout=self._timeout)
        found = metadata.topics.get(topic)
        if found is None or found.error is not None:
            raise DeliveryError(f"cannot describe topic {topic!r}: {found and found.error}")
        return sorted(found.partitions)

    def read(self, start: Offsets) -> tuple[list[tuple[str, bytes | None]], Offsets]:
        """Every message id and digest from ``start`` to the high watermark, read uncommitted."""
        consumer = Consumer({
            **self._config,
            "group.id": f"{self._transactional_id}.read-back",
            "enable.auto.commit": "false",
            "isolation.level": "read_uncommitted",
            "auto.offset.reset": "earliest",
            "enable.partition.eof": "true",
            # The end is known only from an empty fetch: do not wait 500 ms for one.
            "fetch.wait.max.ms": "10",
        })  # fmt: skip
        found: list[tuple[str, bytes | None]] = []
        try:
            ends = {tp: self._end(consumer, tp) for tp in start}
            todo = {tp for tp, end in ends.items() if start[tp] < end or start[tp] < 0}
            consumer.assign([TopicPartition(t, p, start[(t, p)]) for t, p in sorted(todo)])
            deadline = time.monotonic() + self._timeout
            while todo:
                if time.monotonic() > deadline:
                    raise DeliveryError(f"reading back {sorted(todo)} took over {self._timeout}s")
                message = consumer.poll(0.1)
                if message is None:
                    continue
                tp = (str(message.topic()), int(message.partition() or 0))
                error = message.error()
                if error is not None and error.code() != ConfluentKafkaError._PARTITION_EOF:
                    raise DeliveryError(f"reading back {tp}: {error}")
                if error is None:
                    headers = dict(message.headers() or [])
                    mid = headers.get(MESSAGE_ID_HEADER)
                    if mid is not None:
                        found.append((_text(mid), _bytes(headers.get(DIGEST_HEADER))))
                if (message.offset() or 0) + (error is None) >= ends[tp]:
                    todo.discard(tp)
        finally:
            consumer.close()
        return found, ends

    def _end(self, consumer: Consumer, tp: tuple[str, int]) -> int:
        """The high watermark of ``tp``, retried while its leader moves (for ``_timeout``)."""
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                return int(consumer.get_watermark_offsets(TopicPartition(*tp), self._timeout,
                                                          cached=False)[1])  # fmt: skip
            except KafkaException as error:
                if time.monotonic() > deadline:
                    raise DeliveryError(f"cannot find the end of {tp}: {error}") from error
                time.sleep(0.2)

    def write(self, messages: Sequence[tuple[str, OutMessage]]) -> Offsets:
        """One transaction: each message in order, a barrier acknowledged before the next."""
        failures: list[str] = []
        written: Offsets = {}

        def on_delivery(error: ConfluentKafkaError | None, message: Message) -> None:
            if error is not None:
                failures.append(f"{message.topic()}: {error.name()}: {error.str()}")
            else:
                tp = (str(message.topic()), int(message.partition() or 0))
                written[tp] = max(written.get(tp, 0), int(message.offset() or 0) + 1)

        producer = self._producer
        try:
            producer.begin_transaction()
            for index, (topic, item) in enumerate(messages):
                self._produce(topic, item, on_delivery)
                if item.barrier and index + 1 < len(messages):
                    self._acknowledged(failures)
            self._acknowledged(failures)
            producer.commit_transaction(self._timeout)
        except KafkaException as error:
            self._abort()
            raise _delivery_error(error, self._transactional_id) from error
        except DeliveryError:
            self._abort()
            raise
        return written

    def _produce(self, topic: str, item: OutMessage, on_delivery: Any) -> None:
        while True:
            try:
                headers: list[tuple[str, str | bytes | None]] = list(item.headers)
                self._producer.produce(topic, value=item.value, key=item.key, headers=headers,
                                       on_delivery=on_delivery)  # fmt: skip
                return
            except BufferError:
                self._producer.poll(0.1)  # local queue full: let deliveries drain

    def _acknowledged(self, failures: list[str]) -> None:
        remaining = self._producer.flush(self._timeout)
        if remaining or failures:
            fenced = [f for f in failures if "FENCED" in f]
            if fenced:
                raise FencedError(_fenced_text(self._transactional_id, fenced[0]))
            raise DeliveryError(
                f"{remaining} message(s) unacknowledged after {self._timeout:g}s, "
                f"{len(failures)} failed ({'; '.join(failures[:3])}); crashing to replay"
            )

    def _abort(self) -> None:
        # Fenced or fatal: the next incarnation's init_transactions aborts it.
        with contextlib.suppress(KafkaException):
            self._producer.abort_transaction(self._timeout)


def _delivery_error(error: KafkaException, transactional_id: str) -> Exception:
    kafka_error = error.args[0]
    name = kafka_error.name() if hasattr(kafka_error, "name") else str(kafka_error)
    if "FENCED" in name:
        return FencedError(_fenced_text(transactional_id, name))
    return DeliveryError(f"transaction of {transactional_id!r} failed: {error}; crashing to replay")


def _fenced_text(transactional_id: str, detail: str) -> str:
    return (f"another controller process took over the outputs of transactional id "
            f"{transactional_id!r} ({detail}): this process is stale and stops without "
            "writing")  # fmt: skip


def _text(value: str | bytes) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _bytes(value: str | bytes | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


def fenced_at_start(settings: Settings) -> KafkaLog:
    """A writer that has fenced every earlier one, now, before the flow runs.

    The outbox partition fences when Bytewax builds it: at resume, before any input is
    read, or, without recovery state, lazily at its first write, which would then wait
    for it (on a new broker, for the transaction coordinator's own start: ~3 s). One
    process of a cluster does it here, before the cluster forms (no partition of this
    run exists yet), and its partition takes this writer if Bytewax builds it there.
    """
    writer = KafkaLog(client_config(settings), settings.transactional_id,
                      settings.delivery_timeout_s, settings.max_message_bytes)  # fmt: skip
    writer.fence()
    return writer


def kafka_outbox(
    settings: Settings, start: Mapping[tuple[str, int], int], fenced: KafkaLog | None = None
) -> Outbox:
    """The outbox on Kafka, one ``KafkaLog`` per built partition (``fenced`` first, if given).

    It writes and reads back the command, sync and report topics (deadline markers),
    and writes the dead-letter topic.
    """
    topics = settings.topics
    ready = [fenced] if fenced is not None else []

    def make_log() -> KafkaLog:
        if ready:
            return ready.pop()
        return KafkaLog(client_config(settings), settings.transactional_id,
                        settings.delivery_timeout_s, settings.max_message_bytes)  # fmt: skip

    return Outbox(make_log, topics.commands, (topics.commands, topics.sync, topics.reports), start)
