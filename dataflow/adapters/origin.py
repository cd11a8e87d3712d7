"""Where a recovery directory began: its first input offsets, output offsets and counters.

Role: start-up, before the flow is built. Bytewax keeps the input offsets and the
sessions in the recovery store, and has nothing for a directory that holds no
state yet. Without this module such a controller would re-read both input topics
from their start (old instructions becoming rounds again, old reports answering
new commands that reuse their ids). Instead, the first start of a directory
records, in the directory, once:

* ``inputs``: where the two input topics are read from while they have no
  recovery state (``INPUT_START``: their end, as a new production consumer would,
  by default). Recorded before anything is read, so a crash before the first
  snapshot starts again at the same place, not at the new end;
* ``outputs``: where the outbox (``dataflow.adapters.outbox``) reads back from while
  it has no recovery state: the ends of the command, sync and report topics then,
  so that only this directory's own writes are found there;
* ``baseline``: where new sessions' counters start: after every command id,
  ``train_id``, ``optimisation_id`` and round already on the command and sync
  topics, so that no new command reuses an id an old report answers.

A directory that already holds state (written by an earlier release, which had
no origin) records no inputs and no baseline, and its outbox reads the command
and sync topics back from their start: the earlier release's copies of what the
replay emits again are found there.

One file per process (``controller-origin-<process>.json``): processes sharing a
directory (``bytewax.testing -p``) do not race, and a pod's volume holds its own.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

import msgspec
from confluent_kafka import OFFSET_BEGINNING, Consumer
from confluent_kafka.cimpl import TopicPartition

from dataflow.adapters import recovery
from dataflow.adapters.config import Settings
from dataflow.adapters.kafka import (
    MESSAGE_ID_HEADER,
    StartupError,
    client_config,
    consumer_group,
    end_offset,
    read_to_ends,
)
from dataflow.domain import messages as msg
from dataflow.domain.config import Baseline

log = logging.getLogger(__name__)

#: topic -> partition -> offset (JSON keys are text; msgspec converts them).
TopicOffsets = dict[str, dict[int, int]]

ORIGIN_VERSION: Final = 1


class Origin(msgspec.Struct, frozen=True):
    """What a recovery directory's first start saw (see the module docstring)."""

    created_ms: int
    #: Whether the directory held no state then (else: written by an earlier release).
    fresh: bool
    inputs: TopicOffsets
    outputs: TopicOffsets
    baseline: Baseline = Baseline()
    version: int = ORIGIN_VERSION

    def input_offsets(self, topic: str) -> dict[int, int]:
        """Where each partition of input ``topic`` starts without state (absent: its start)."""
        return dict(self.inputs.get(topic, {}))

    def output_offsets(self) -> dict[tuple[str, int], int]:
        """Where the outbox reads back from without state."""
        return {(t, p): o for t, parts in self.outputs.items() for p, o in parts.items()}


def path_for(directory: Path, process: int) -> Path:
    """The origin file of process ``process`` in ``directory``."""
    return directory / f"controller-origin-{process}.json"


def establish(settings: Settings, directory: Path | None, process: int = 0) -> Origin:
    """The directory's origin: read if recorded, else found on the topics and recorded.

    Without a recovery directory nothing is kept: every start is a first start.
    """
    path = None if directory is None else path_for(directory, process)
    if path is not None and path.exists():
        return msgspec.json.decode(path.read_bytes(), type=Origin)
    fresh = directory is None or not holds_state(directory)
    origin = _found(settings, fresh)
    if path is not None:
        _write(path, origin)
    log.info("recovery directory origin recorded" if path else "origin (no recovery directory)",
             extra={"fields": {"fresh": fresh, "inputs": origin.inputs,
                               "outputs": origin.outputs,
                               "baseline": msgspec.structs.asdict(origin.baseline)}})  # fmt: skip
    return origin


def holds_state(directory: Path) -> bool:
    """Whether any recovery partition in ``directory`` holds a snapshot."""
    for part in recovery.partition_files(directory):
        connection = sqlite3.connect(f"file:{part}?mode=ro", uri=True)
        try:
            if connection.execute("SELECT 1 FROM snaps LIMIT 1").fetchone():
                return True
        except sqlite3.OperationalError:
            continue  # not initialised by Bytewax yet
        finally:
            connection.close()
    return False


def _found(settings: Settings, fresh: bool) -> Origin:
    topics = settings.topics
    consumer = _consumer(settings)
    try:
        every = (topics.instructions, topics.reports, topics.commands, topics.sync)
        ends = {t: _ends(consumer, t, settings.startup_timeout_s) for t in every}
        if not fresh:
            outputs = {topics.commands: {p: 0 for p in ends[topics.commands]},
                       topics.sync: {p: 0 for p in ends[topics.sync]},
                       topics.reports: ends[topics.reports]}  # fmt: skip
            return Origin(_now_ms(), False, {}, outputs)
        inputs = {t: _starts(consumer, t, ends[t], settings)
                  for t in (topics.instructions, topics.reports)}  # fmt: skip
        outputs = {t: ends[t] for t in (topics.commands, topics.sync, topics.reports)}
        baseline = _baseline(consumer, settings, ends[topics.commands], ends[topics.sync])
        return Origin(_now_ms(), True, inputs, outputs, baseline)
    finally:
        consumer.close()


def _consumer(settings: Settings) -> Consumer:
    return Consumer({
        **client_config(settings),
        "group.id": consumer_group(settings.transactional_id, "origin"),
        "enable.auto.commit": "false",
        "isolation.level": "read_uncommitted",
        "enable.partition.eof": "true",
        "auto.offset.reset": "earliest",
        "fetch.wait.max.ms": "10",  # the end is known only from an empty fetch
    })  # fmt: skip


def _ends(consumer: Consumer, topic: str, timeout: float) -> dict[int, int]:
    """The end of each partition of ``topic`` (retried while a new topic elects leaders)."""
    metadata = consumer.list_topics(topic, timeout=timeout)
    found = metadata.topics.get(topic)
    if found is None or found.error is not None:
        raise StartupError(f"cannot describe topic {topic!r}: {found and found.error}")
    return {p: end_offset(consumer, (topic, p), timeout, StartupError)
            for p in sorted(found.partitions)}  # fmt: skip


def _starts(
    consumer: Consumer, topic: str, ends: dict[int, int], settings: Settings
) -> dict[int, int]:
    """Where input ``topic`` starts: ``INPUT_START``."""
    start = settings.input_start
    if start == "end":
        return dict(ends)
    if start == "beginning":
        return {p: 0 for p in ends}
    wanted = [TopicPartition(topic, p, int(start)) for p in ends]
    found = consumer.offsets_for_times(wanted, timeout=settings.startup_timeout_s)
    # No message at or after the time: the partition's end.
    return {tp.partition: ends[tp.partition] if tp.offset < 0 else tp.offset for tp in found}


def _baseline(
    consumer: Consumer, settings: Settings, commands: dict[int, int], syncs: dict[int, int]
) -> Baseline:
    """Counters after everything on the command and sync topics (up to ``commands``, ``syncs``)."""
    counter = trains = optimisations = rounds = -1
    codec = settings.codec
    for message in _read(consumer, settings.topics.commands, commands, settings.startup_timeout_s):
        command = codec.decode_command(message.value() or b"")
        if isinstance(command, msg.Rejection):
            continue  # not a command (someone else's bytes): nothing to continue
        ref = settings.machine.read_command_id(command.id)
        counter = max(counter, -1 if ref is None else ref.counter)
        trains, optimisations = (
            max(trains, command.train_id),
            max(optimisations, command.optimisation_id),
        )
    for message in _read(consumer, settings.topics.sync, syncs, settings.startup_timeout_s):
        mid = dict(message.headers() or []).get(MESSAGE_ID_HEADER)
        parts = (mid.decode(errors="replace") if isinstance(mid, bytes) else str(mid)).split("/")
        if len(parts) >= 3 and parts[-3] == "sync" and parts[-2].isdigit():
            rounds = max(rounds, int(parts[-2]))
    return Baseline(next_command=counter + 1, trains=trains + 1,
                    optimisations=optimisations + 1, rounds=max(rounds, 0))  # fmt: skip


def _read(consumer: Consumer, topic: str, ends: dict[int, int], timeout: float) -> Iterable[Any]:
    """Every message of ``topic`` from its start up to ``ends``."""
    start = {(topic, p): OFFSET_BEGINNING for p in ends}
    return read_to_ends(consumer, start, {(topic, p): end for p, end in ends.items()}, timeout,
                        StartupError)  # fmt: skip


def _write(path: Path, origin: Origin) -> None:
    """Write atomically and durably: a crash leaves the old file or the new, never half."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(json.dumps(msgspec.to_builtins(origin), indent=1).encode() + b"\n")
    with partial.open("rb") as handle:
        os.fsync(handle.fileno())
    os.replace(partial, path)
    recovery.sync(path.parent)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
