"""Small confluent-kafka helpers shared by the integration tests, the demo and benchmarks.

Output topics are read back by **partition assignment** (``Consumer.assign``),
never by consumer-group subscription: there is no rebalance to wait for and no
committed offset to leak between tests.

A secured broker's clients need more than its address: ``SECURITY`` maps a
bootstrap address to the settings every helper here adds for it (the harness's
``admin`` on a secured broker, ``tests/integration/test_secured.py``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Sequence

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

#: Bootstrap address -> the librdkafka security settings of the helpers' clients for it.
SECURITY: dict[str, dict[str, str]] = {}


def connection(bootstrap: str) -> dict[str, str]:
    """``bootstrap.servers``, and the security settings registered for it, if any."""
    return {"bootstrap.servers": bootstrap, **SECURITY.get(bootstrap, {})}


def admin(bootstrap: str) -> AdminClient:
    """An admin client for ``bootstrap``."""
    return AdminClient(connection(bootstrap))


def create_topics(bootstrap: str, names: Iterable[str], partitions: int = 1) -> None:
    """Create topics and wait until each exists (raises on any failure)."""
    client = admin(bootstrap)  # must outlive the futures: destroying it cancels them
    futures = client.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1) for name in names],
        operation_timeout=30,
    )
    for future in futures.values():
        future.result(timeout=60)


def delete_topics(bootstrap: str, names: Iterable[str]) -> None:
    """Delete topics, ignoring the ones that are already gone."""
    names = list(names)
    if not names:
        return
    client = admin(bootstrap)
    for future in client.delete_topics(names, operation_timeout=30).values():
        try:
            future.result(timeout=60)
        except Exception as error:
            if "UNKNOWN_TOPIC" not in str(error):
                raise


def unique_topic(prefix: str = "t") -> str:
    """A topic name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def produce(
    bootstrap: str,
    topic: str,
    values: Sequence[bytes | str],
    *,
    key: bytes | str | None = None,
    headers: list[tuple[str, bytes]] | None = None,
    timeout: float = 30.0,
) -> None:
    """Produce ``values`` in order and fail if any delivery fails."""
    failures: list[KafkaError] = []

    def on_delivery(error: KafkaError | None, _msg: Message) -> None:
        if error is not None:
            failures.append(error)

    producer = Producer(
        {**connection(bootstrap), "enable.idempotence": True, "acks": "all",
         "message.max.bytes": 4_000_000}
    )  # fmt: skip
    for value in values:
        producer.produce(topic, value=value, key=key, headers=headers, on_delivery=on_delivery)
    remaining = producer.flush(timeout)
    if remaining or failures:
        raise RuntimeError(f"delivery failed: {remaining} undelivered, errors {failures}")


def read_messages(
    bootstrap: str,
    topic: str,
    *,
    count: int | None = None,
    timeout: float = 30.0,
    partitions: int = 1,
    idle: float | None = None,
) -> list[Message]:
    """Read a topic from the beginning by assignment.

    Stops after ``count`` messages, or after ``idle`` seconds without a new one,
    or at ``timeout`` (returning what was read).
    """
    consumer = Consumer(
        {**connection(bootstrap), "group.id": f"reader-{uuid.uuid4().hex}",
         "enable.auto.commit": False, "auto.offset.reset": "earliest",
         # As the services read (Java's and kafka-python's default): every copy they see.
         "isolation.level": "read_uncommitted"}
    )  # fmt: skip
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    messages: list[Message] = []
    deadline = time.monotonic() + timeout
    last = time.monotonic()
    try:
        while time.monotonic() < deadline:
            if count is not None and len(messages) >= count:
                break
            if idle is not None and time.monotonic() - last > idle:
                break
            message = consumer.poll(0.2)
            if message is None:
                continue
            if message.error():
                if message.error().code() == KafkaError._PARTITION_EOF:
                    continue
                raise RuntimeError(f"consume error: {message.error()}")
            messages.append(message)
            last = time.monotonic()
    finally:
        consumer.close()
    return messages
