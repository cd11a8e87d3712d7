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
  ``COMMIT_EVERY_S`` old, out of the flow's way: a commit in a hop would cost the
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
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Final, Protocol

import msgspec
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Message, Producer
from confluent_kafka import KafkaError as ConfluentKafkaError
from typing_extensions import override

from dataflow.adapters.config import Settings
from dataflow.adapters.kafka import (
    DIGEST_HEADER,
    MESSAGE_ID_HEADER,
    DeliveryError,
    OutMessage,
    client_config,
    end_offset,
    read_to_ends,
)
from dataflow.adapters.recovery import stop_stale

log = logging.getLogger(__name__)

#: How old the output transaction gets before a timer commits it (seconds); the broker
#: aborts one older than ``TRANSACTION_TIMEOUT_MS``, which fences its producer.
COMMIT_EVERY_S: Final = 10.0
TRANSACTION_TIMEOUT_MS: Final = 60_000
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


# --------------------------------------------------------------------------- Kafka


class KafkaLog:
    """The outbox's log on Kafka: a transactional producer, and a consumer to read back.

    ``config``: the controller's client settings (brokers, security, logger).
    """

    def __init__(
        self, config: Mapping[str, Any], transactional_id: str, timeout_s: float,
        max_message_bytes: int, commit_every_s: float = COMMIT_EVERY_S,
    ) -> None:  # fmt: skip
        self._config = dict(config)
        self._timeout = timeout_s
        self._transactional_id = transactional_id
        self._commit_every = commit_every_s
        self._fenced = False
        #: When the open transaction began (monotonic), or None.
        self._began: float | None = None
        #: Fenced by a newer writer: every later failure is that.
        self._stale = False
        # The flow's worker writes, the timer commits: one at a time.
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._timer: threading.Thread | None = None
        #: What the timer's commit raised, for the flow to raise (``settle``, ``write``).
        self._failed: Exception | None = None
        #: A read done ahead (``fenced_at_start``): its start, and what it found.
        self._ahead: tuple[Offsets, list[tuple[str, bytes | None]], Offsets] | None = None
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
            "transaction.timeout.ms": str(TRANSACTION_TIMEOUT_MS),
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

    def read_ahead(self, start: Offsets) -> None:
        """Read back now, for a ``read`` from the same ``start`` later.

        Fenced first, so nothing of this log's can be written in between: a stale writer
        cannot, and this one has not.
        """
        found, ends = self.read(start)
        self._ahead = (dict(start), found, ends)

    def read(self, start: Offsets) -> tuple[list[tuple[str, bytes | None]], Offsets]:
        """Every message id and digest from ``start`` to the high watermark, read uncommitted."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] == start:
            return ahead[1], ahead[2]
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
            ends = {tp: end_offset(consumer, tp, self._timeout, DeliveryError) for tp in start}
            for message in read_to_ends(consumer, start, ends, self._timeout, DeliveryError):
                headers = dict(message.headers() or [])
                mid = headers.get(MESSAGE_ID_HEADER)
                if mid is not None:
                    found.append((_text(mid), _bytes(headers.get(DIGEST_HEADER))))
        finally:
            consumer.close()
        return found, ends

    def write(self, messages: Sequence[tuple[str, OutMessage]]) -> Offsets:
        """Each message in order, in the open transaction, a barrier acknowledged first."""
        self.settle()
        failures: list[str] = []
        written: Offsets = {}

        def on_delivery(error: ConfluentKafkaError | None, message: Message) -> None:
            if error is not None:
                failures.append(f"{message.topic()}: {error.name()}: {error.str()}")
            else:
                tp = (str(message.topic()), int(message.partition() or 0))
                written[tp] = max(written.get(tp, 0), int(message.offset() or 0) + 1)

        with self._lock:
            try:
                if self._began is None:
                    self._producer.begin_transaction()
                    self._began = time.monotonic()
                    self._start_timer()
                for index, (topic, item) in enumerate(messages):
                    self._produce(topic, item, on_delivery)
                    if item.barrier and index + 1 < len(messages):
                        self._acknowledged(failures)
                self._acknowledged(failures)
            except KafkaException as error:
                raise self._failure(error) from error
        return written

    def settle(self) -> None:
        """Raise what the timer's commit raised, if anything (the flow's thread stops)."""
        if self._failed is not None:
            raise self._failed

    def commit(self) -> None:
        """Commit the open transaction now, if there is one."""
        self._commit(older_than=0.0)
        self.settle()

    def close(self) -> None:
        """Commit the open transaction, if any, and stop the timer."""
        self._closed.set()
        self.commit()

    def _start_timer(self) -> None:
        if self._timer is None:
            self._timer = threading.Thread(target=self._commit_old, name="outbox-commit",
                                           daemon=True)  # fmt: skip
            self._timer.start()

    def _commit_old(self) -> None:
        """The timer: commit the open transaction once it is ``commit_every`` old."""
        while not self._closed.wait(min(1.0, self._commit_every / 4)):
            self._commit(older_than=self._commit_every)
            if self._failed is not None:
                log.error(f"outbox: {self._failed}")
                return

    def _commit(self, older_than: float) -> None:
        with self._lock:
            if self._began is None or time.monotonic() - self._began < older_than:
                return
            try:
                self._producer.commit_transaction(self._timeout)
            except KafkaException as error:
                self._failed = self._failed or self._failure(error)
                return
            self._began = None

    def _produce(self, topic: str, item: OutMessage, on_delivery: Any) -> None:
        while True:
            try:
                headers: list[tuple[str, str | bytes | None]] = list(item.headers)
                self._producer.produce(topic, value=item.value, key=item.key, headers=headers,
                                       on_delivery=on_delivery)  # fmt: skip
                return
            except BufferError:
                self._producer.poll(0.1)  # local queue full: let deliveries drain

    def _failure(self, error: KafkaException) -> Exception:
        """What a producer error means: fenced (this process is stale), or crash to replay.

        Once fenced, the producer is in a fatal state and says only "Fatal error": every
        later error of it is the fencing's.
        """
        kafka_error = error.args[0]
        text = kafka_error.str() if hasattr(kafka_error, "str") else str(kafka_error)
        if "fenced" in text.lower() or self._stale:
            self._stale = True
            return FencedError(_fenced_text(self._transactional_id, text))
        return DeliveryError(f"transaction of {self._transactional_id!r} failed: {error}; "
                             "crashing to replay")  # fmt: skip

    def _acknowledged(self, failures: list[str]) -> None:
        remaining = self._producer.flush(self._timeout)
        if remaining or failures:
            fenced = [f for f in failures if "fenced" in f.lower()]
            if fenced or (self._stale and failures):
                self._stale = True
                raise FencedError(_fenced_text(self._transactional_id, (fenced or failures)[0]))
            raise DeliveryError(
                f"{remaining} message(s) unacknowledged after {self._timeout:g}s, "
                f"{len(failures)} failed ({'; '.join(failures[:3])}); crashing to replay"
            )


def _fenced_text(transactional_id: str, detail: str) -> str:
    return (f"another controller process took over the outputs of transactional id "
            f"{transactional_id!r} ({detail}): this process is stale and stops without "
            "writing")  # fmt: skip


def _text(value: str | bytes) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _bytes(value: str | bytes | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


def fenced_at_start(settings: Settings, start: Mapping[tuple[str, int], int]) -> KafkaLog:
    """A writer that has fenced every earlier one and read back from ``start``, now.

    The outbox partition fences and reads back when Bytewax builds it: at resume,
    before any input is read, or, without recovery state, lazily at its first write,
    which would then wait for both (on a new broker, for the transaction coordinator's
    own start: ~3 s). One process of a cluster does both here, before the cluster
    forms (no partition of this run exists yet), and its partition takes this writer
    if Bytewax builds it there (the read is used if it starts from ``start``, the
    directory's origin: a partition without state).
    """
    writer = KafkaLog(client_config(settings), settings.transactional_id,
                      settings.delivery_timeout_s, settings.max_message_bytes)  # fmt: skip
    writer.fence()
    writer.read_ahead(read_back_from(writer, _read_back_topics(settings), dict(start)))
    return writer


def _read_back_topics(settings: Settings) -> tuple[str, ...]:
    """The topics whose messages carry ids: commands, syncs, deadline markers (reports)."""
    return settings.topics.commands, settings.topics.sync, settings.topics.reports


def kafka_outbox(
    settings: Settings, start: Mapping[tuple[str, int], int], fenced: KafkaLog | None = None
) -> Outbox:
    """The outbox on Kafka, one ``KafkaLog`` per built partition (``fenced`` first, if given).

    It writes and reads back the command, sync and report topics (deadline markers),
    and writes the dead-letter topic.
    """
    ready = [fenced] if fenced is not None else []

    def make_log() -> KafkaLog:
        if ready:
            return ready.pop()
        return KafkaLog(client_config(settings), settings.transactional_id,
                        settings.delivery_timeout_s, settings.max_message_bytes)  # fmt: skip

    return Outbox(make_log, settings.topics.commands, _read_back_topics(settings), start,
                  on_stale=stop_stale)  # fmt: skip
