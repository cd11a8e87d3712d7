"""The outbox's decisions, on topics in memory: what it writes, withholds, or refuses."""

from __future__ import annotations

import pytest

from dataflow.adapters.kafka import OutMessage
from dataflow.adapters.outbox import (
    FencedError,
    OutboxPartition,
    OutboxState,
    ReplayDivergedError,
    digest,
)
from tests.memory_log import MemoryLog, Topics

TOPICS = ("commands", "sync", "reports")


def message(value: bytes, message_id: str | None = "k/cmd/1/0", topic: str = "commands"):
    return OutMessage(b"k", value, [("session-key", b"k")], topic, message_id=message_id)


def partition(topics: Topics, state: OutboxState | None = None) -> OutboxPartition:
    start = {} if state is None else state.as_offsets()
    return OutboxPartition(MemoryLog(topics), "commands", TOPICS, start)


def test_a_message_is_written_with_its_id_and_the_digest_of_its_payload() -> None:
    topics = Topics()

    partition(topics).write_batch([message(b"train")])

    (written,) = topics.of("commands")
    assert written.headers == [
        ("session-key", b"k"), ("message-id", b"k/cmd/1/0"),
        ("message-digest", digest(OutMessage(b"k", b"train"), "commands")),
    ]  # fmt: skip
    assert written.value == b"train"


def test_a_replayed_message_found_on_its_topic_is_not_written_again() -> None:
    topics = Topics()
    first = partition(topics)
    first.write_batch([message(b"train"), message(b"pause", "k/sync/1/pause", "sync")])

    replay = partition(topics)  # resumed from no snapshot: reads back from the start
    replay.write_batch([message(b"train"), message(b"pause", "k/sync/1/pause", "sync"),
                        message(b"step", "k/cmd/2/0")])  # fmt: skip

    assert [m.value for m in topics.of("commands")] == [b"train", b"step"]
    assert [m.value for m in topics.of("sync")] == [b"pause"]
    assert topics.duplicates() == {}


def test_a_fenced_writer_stops_at_its_next_snapshot_even_without_writing() -> None:
    topics = Topics()
    stale = partition(topics)
    partition(topics)

    with pytest.raises(FencedError):
        stale.snapshot()


def test_a_resumed_partition_reads_back_only_from_its_snapshot_offsets() -> None:
    topics = Topics()
    first = partition(topics)
    first.write_batch([message(b"train")])
    state = first.snapshot()
    first.write_batch([message(b"step", "k/cmd/2/0")])

    resumed = partition(topics, state)
    resumed.write_batch([message(b"step", "k/cmd/2/0")])

    assert state == OutboxState((("commands", 0, 1), ("reports", 0, 0), ("sync", 0, 0)))
    assert topics.read_back == [0, 1]  # the step only: the train is before the snapshot
    assert [m.value for m in topics.of("commands")] == [b"train", b"step"]


def test_a_replayed_id_with_another_payload_stops_the_controller_and_writes_nothing() -> None:
    topics = Topics()
    partition(topics).write_batch([message(b"step at 0.5")])

    with pytest.raises(ReplayDivergedError, match="'k/cmd/1/0' is on topic 'commands' with "
                       "another payload"):  # fmt: skip
        partition(topics).write_batch([message(b"step at 0.7"), message(b"x", "k/cmd/2/0")])
    assert [m.value for m in topics.of("commands")] == [b"step at 0.5"]


def test_dead_letters_carry_no_id_and_are_written_each_time() -> None:
    topics = Topics()
    letter = message(b"garbage", None, "dead")

    partition(topics).write_batch([letter])
    partition(topics).write_batch([letter])

    assert [m.headers for m in topics.of("dead")] == [letter.headers] * 2


def test_a_writer_fenced_by_a_newer_one_cannot_write() -> None:
    topics = Topics()
    stale = partition(topics)
    partition(topics)  # the replacement: fences every earlier writer

    with pytest.raises(FencedError):
        stale.write_batch([message(b"train")])
    assert topics.of("commands") == []
