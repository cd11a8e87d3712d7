"""The Kafka loop shared by the stand-ins: read a topic by assignment, answer, produce.

Reading by partition assignment (no consumer group) from a given offset keeps a
stand-in independent of group rebalances; ``stop`` ends the loop cleanly.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections.abc import Callable, Iterable

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, Producer
from confluent_kafka.cimpl import TopicPartition

from dataflow.adapters.wire import ENCODINGS
from dataflow.domain.messages import DIALECTS

Handler = Callable[[bytes, list[tuple[str, bytes]]], Iterable[tuple[str, bytes | None, bytes]]]


def add_wire_arguments(parser: argparse.ArgumentParser, role: str) -> None:
    """The options every stand-in shares: which broker, which dialect, which encoding."""
    parser.add_argument(
        "--dialect",
        choices=DIALECTS,
        default="seed",
        help=f"wire shape of the {role}: seed (Flink/Java services) or rtcef (the "
        "original services); default seed",
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


def serve(
    bootstrap: str,
    topic: str,
    handler: Handler,
    stop: threading.Event,
    *,
    from_start: bool = False,
    partitions: int = 1,
    delay_s: float = 0.0,
) -> None:
    """Call ``handler(value, headers)`` per message; produce the (topic, key, value) it yields."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "stand-in",
                         "enable.auto.commit": False})  # fmt: skip
    start = OFFSET_BEGINNING if from_start else OFFSET_END
    consumer.assign([TopicPartition(topic, p, start) for p in range(partitions)])
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    try:
        while not stop.is_set():
            message = consumer.poll(0.1)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    raise RuntimeError(f"stand-in consuming {topic}: {error}")
                continue
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
