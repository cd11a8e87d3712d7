"""The outbox's log on Kafka: a transactional producer that fences, and a consumer to read back.

Role: what ``dataflow.adapters.outbox`` needs of Kafka (its ``Log``): writes
acknowledged inside a transaction a timer commits once it is ``COMMIT_EVERY_S``
old, earlier writers fenced by a stable ``transactional.id``, and the topics read
back from given offsets as the services read them. ``kafka_outbox`` builds the
flow's sink on it; ``fenced_at_start`` fences and reads back before the flow starts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

from confluent_kafka import Consumer, KafkaException, Message, Producer
from confluent_kafka import KafkaError as ConfluentKafkaError

from dataflow.adapters.config import Settings
from dataflow.adapters.kafka import (
    DIGEST_HEADER,
    MESSAGE_ID_HEADER,
    DeliveryError,
    OutMessage,
    client_config,
    consumer_group,
    end_offset,
    not_authorised,
    read_to_ends,
    refusal,
)
from dataflow.adapters.outbox import FencedError, Offsets, Outbox, read_back_from
from dataflow.adapters.recovery import stop_stale

log = logging.getLogger(__name__)

#: How old the output transaction gets before a timer commits it (seconds); the broker
#: aborts one older than its timeout (``transaction_timeout_ms``), which fences its producer.
COMMIT_EVERY_S: Final = 10.0
TRANSACTION_TIMEOUT_MS: Final = 60_000


def transaction_timeout_ms(delivery_timeout_s: float, commit_every_s: float) -> int:
    """How old the broker lets the output transaction get before it aborts it.

    At least ``TRANSACTION_TIMEOUT_MS``, and long enough for the transaction's oldest
    message (written up to ``commit_every_s`` before the commit) to wait out the delivery
    timeout: librdkafka cuts a transactional producer's message timeout to this, so a
    shorter one would crash the flow before ``DELIVERY_TIMEOUT_S`` (a broker outage of a
    minute would not be ridden out however that was set).
    """
    return max(TRANSACTION_TIMEOUT_MS, round((delivery_timeout_s + commit_every_s) * 1000))


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
            "transaction.timeout.ms": str(transaction_timeout_ms(timeout_s, commit_every_s)),
            "message.timeout.ms": str(max(1, round(timeout_s * 1000))),
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
            code = error.args[0].code()
            if code == ConfluentKafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED:
                raise DeliveryError(not_authorised(
                    f"transactional id {self._transactional_id!r}", ["Write"],
                    f"TransactionalId:{self._transactional_id}", self._config,
                    "KAFKA_TRANSACTIONAL_ID")) from None  # fmt: skip
            refused = refusal(error.args[0], self._config)
            raise DeliveryError(refused or f"cannot start the transactional producer "
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
            "group.id": consumer_group(self._transactional_id, "read-back"),
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
