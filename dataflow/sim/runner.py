"""The Kafka loop shared by the stand-ins: read a topic by assignment, answer, produce.

Reading by partition assignment (no consumer group) from a given offset keeps a
stand-in independent of group rebalances; ``stop`` ends the loop cleanly.
``messages`` is the poll loop itself (also for counting a topic to its end);
``answering`` turns a factory stand-in into ``serve``'s handler.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Protocol

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, Message, Producer
from confluent_kafka.cimpl import TopicPartition

from dataflow.adapters.kafka import SESSION_HEADER
from dataflow.adapters.wire import ENCODINGS, Codec
from dataflow.domain import messages as msg
from dataflow.domain.dialects import DIALECTS, REGISTRY

#: The stand-ins' own Kafka clients log through here, not straight to stderr: a fresh
#: broker's passing notices (its transaction coordinator still loading: "retrying")
#: are not news to someone watching the demo. Errors still show.
CLIENT_LOG = logging.getLogger("dataflow.sim.kafka")
CLIENT_LOG.setLevel(logging.ERROR)


def client(config: dict[str, object]) -> dict[str, object]:
    """A stand-in's Kafka client settings, its log lines routed through ``CLIENT_LOG``."""
    return {**config, "logger": CLIENT_LOG}


#: What a handler produces: (topic, key, value).
Produced = tuple[str, bytes | None, bytes]
Handler = Callable[[bytes, list[tuple[str, bytes]]], Iterable[Produced]]


def add_wire_arguments(parser: argparse.ArgumentParser, role: str) -> None:
    """The options every stand-in shares: which broker, which dialect, which encoding."""
    parser.add_argument(
        "--dialect",
        choices=DIALECTS,
        default=DIALECTS[0],
        help=f"wire shape of the {role}: "
        + ", ".join(f"{d.name} ({d.summary})" for d in REGISTRY.values())
        + f"; default {DIALECTS[0]}",
    )
    parser.add_argument(
        "--encoding",
        choices=ENCODINGS,
        default="json",
        help="json, or avro: schemaless Avro as the original services write (rtcef only)",
    )
    parser.add_argument(
        "--bootstrap",
        default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092"),
        help="Kafka bootstrap servers (default: $KAFKA_BOOTSTRAP_SERVERS or localhost:9092)",
    )


def messages(
    consumer: Consumer,
    stopped: Callable[[], bool],
    *,
    poll_s: float = 0.1,
    until_eof: bool = False,
    strict: bool = True,
    what: str = "consumer",
) -> Iterator[Message]:
    """Each message ``consumer`` returns until ``stopped()``.

    The end of a partition is passed over, or with ``until_eof`` ends the loop. Any
    other consumer error raises (``strict``; ``what`` names the reader in the
    message) or is passed over.
    """
    while not stopped():
        message = consumer.poll(poll_s)
        if message is None:
            continue
        error = message.error()
        if error is None:
            yield message
        elif error.code() == KafkaError._PARTITION_EOF:
            if until_eof:
                return
        elif strict:
            raise RuntimeError(f"{what}: {error}")


def serve(
    bootstrap: str,
    topic: str,
    handler: Handler,
    stop: threading.Event,
    *,
    from_start: bool = False,
    partitions: int = 1,
    delay_s: float = 0.0,
    security: Mapping[str, str] | None = None,
) -> None:
    """Call ``handler(value, headers)`` per message; produce the (topic, key, value) it yields.

    ``security``: librdkafka settings added to both clients (e.g. SASL_SSL as its own user).
    """
    extra = dict(security or {})
    consumer = Consumer(client({"bootstrap.servers": bootstrap, **extra, "group.id": "stand-in",
                                "enable.auto.commit": False,
                                # as the real services read: what a crash's transaction left
                                "isolation.level": "read_uncommitted"}))  # fmt: skip
    start = OFFSET_BEGINNING if from_start else OFFSET_END
    consumer.assign([TopicPartition(topic, p, start) for p in range(partitions)])
    producer = Producer(client({"bootstrap.servers": bootstrap, **extra,
                                "enable.idempotence": True}))  # fmt: skip
    try:
        for message in messages(consumer, stop.is_set, what=f"stand-in consuming {topic}"):
            if delay_s:
                time.sleep(delay_s)
            headers = [(str(k), v if isinstance(v, bytes) else str(v or "").encode())
                       for k, v in list(message.headers() or [])]  # fmt: skip
            for out_topic, key, value in handler(message.value() or b"", headers):
                producer.produce(out_topic, value=value, key=key)
            producer.flush(10)
    finally:
        consumer.close()
        producer.flush(10)


class Factory(Protocol):
    """What ``answering`` needs of a factory stand-in (``FactorySimulator``)."""

    @property
    def codec(self) -> Codec:
        """The codec of its dialect and encoding."""
        ...

    def respond(
        self, command: msg.FactoryCommand, model: str | None = None
    ) -> Sequence[tuple[bytes | None, bytes]]:
        """The (key, value) reports answering ``command`` (for ``model``'s factory)."""
        ...


def answering(
    factory: Factory,
    reports_topic: str,
    *,
    before: Callable[[msg.FactoryCommand], None] | None = None,
    rejected: Callable[[msg.Rejection], None] | None = None,
    answered: Callable[[msg.FactoryCommand, int], None] | None = None,
) -> Handler:
    """``serve``'s handler for a factory: each command decoded, answered to ``reports_topic``.

    ``before(command)`` runs before each answer (a test can hold one there);
    ``answered(command, count)`` after it, with how many reports answer it. A
    message that is no command is answered with nothing, after ``rejected(it)``.
    """

    def handle(value: bytes, headers: list[tuple[str, bytes]]) -> list[Produced]:
        command = factory.codec.decode_command(value)
        if isinstance(command, msg.Rejection):
            if rejected is not None:
                rejected(command)
            return []
        if before is not None:
            before(command)
        session = dict(headers).get(SESSION_HEADER)  # one factory per model in multi-model mode
        reports = factory.respond(command, None if session is None else session.decode())
        if answered is not None:
            answered(command, len(reports))
        return [(reports_topic, key, report) for key, report in reports]

    return handle
