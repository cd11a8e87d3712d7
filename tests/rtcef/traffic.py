"""Follow the loop's topics: decode with the original schemas, record, report progress.

The decoding uses the vendored ``schemas/schemas_maritime`` files and the same
call the original services make (``fastavro.schemaless_reader``), so a message of
ours that decodes here is one the real services can read. Recorded files use
the layout of ``../shared/data/rtcef-recordings``: ``<topic>.jsonl``, one
decoded value a line, in topic order.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
from confluent_kafka import Consumer, KafkaError, TopicPartition

from tests.kafka import client
from tests.rtcef.stack import BOOTSTRAP, TOPICS, VENDOR

SCHEMAS = VENDOR / "schemas" / "schemas_maritime"
#: Topics too large to keep whole: only their count and newest value are kept.
BULK = frozenset({"input_stream", "output_stream", "engine_current_position"})
DEAD_LETTERS = "controller_dead_letters"


@cache
def schema(topic: str, part: str = "value") -> Any:
    """A vendored maritime schema, loaded as the originals load it."""
    return fastavro.schema.load_schema(str(SCHEMAS / f"{topic}-{part}.avsc"))


def decode(topic: str, data: bytes, part: str = "value") -> dict[str, Any]:
    """Decode schemaless Avro with the original schema; raise unless every byte is used."""
    buffer = io.BytesIO(data)
    record = fastavro.schemaless_reader(buffer, schema(topic, part), None)
    if buffer.tell() != len(data):
        raise ValueError(f"{len(data) - buffer.tell()} trailing bytes in a {topic} {part}")
    if not isinstance(record, dict):
        raise ValueError(f"a {topic} {part} that is not a record: {record!r}")
    return record


def encode(topic: str, record: dict[str, Any], part: str = "value") -> bytes:
    """Schemaless Avro, as the originals' serializer writes it."""
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, schema(topic, part), record)
    return buffer.getvalue()


@dataclass(frozen=True)
class Record:
    """One message: its topic, offset, broker time (ms) and decoded value."""

    topic: str
    offset: int
    broker_ms: int
    value: dict[str, Any]


@dataclass
class Tap:
    """A background reader of every loop topic, from the beginning, with a progress callback."""

    progress: Callable[[Record], None] | None = None
    #: The broker, the topics followed (the dead-letter one among them), how values decode
    #: and which topics are only counted: the RTCEF loop's unless told (the seed loop's JSON).
    bootstrap: str = BOOTSTRAP
    topics: tuple[str, ...] = (*TOPICS, DEAD_LETTERS)
    decoder: Callable[[str, bytes], dict[str, Any]] = decode
    bulk: frozenset[str] = BULK
    records: dict[str, list[Record]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    newest: dict[str, Record] = field(default_factory=dict)
    undecodable: list[str] = field(default_factory=list)
    dead_letters: list[dict[str, str]] = field(default_factory=list)
    #: Broker time of every engine position message: when the engine was consuming.
    positions_ms: list[int] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None
    _error: BaseException | None = None

    def __enter__(self) -> Tap:
        self._thread = threading.Thread(target=self._run, name="tap", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def check(self) -> None:
        """Re-raise a failure of the reading thread."""
        if self._error is not None:
            raise RuntimeError("the topic tap failed") from self._error

    def of(self, topic: str) -> list[Record]:
        with self._lock:
            return list(self.records.get(topic, ()))

    def count(self, topic: str) -> int:
        with self._lock:
            return self.counts.get(topic, 0)

    def last(self, topic: str) -> Record | None:
        with self._lock:
            return self.newest.get(topic)

    def write(self, folder: Path, topics: Iterable[str] | None = None) -> None:
        """``<topic>.jsonl`` for every kept topic (the recordings' layout)."""
        folder.mkdir(parents=True, exist_ok=True)
        with self._lock:
            kept = {t: list(rs) for t, rs in self.records.items()}
        for topic in topics or sorted(kept):
            lines = [json.dumps(r.value, separators=(",", ":")) for r in kept.get(topic, [])]
            (folder / f"{topic}.jsonl").write_text("".join(line + "\n" for line in lines))

    def _run(self) -> None:
        consumer = Consumer({
            "bootstrap.servers": self.bootstrap, "group.id": "rtcef-loop-tap",
            "enable.auto.commit": False, "enable.partition.eof": False,
            "isolation.level": "read_uncommitted",  # what the services read
        })  # fmt: skip
        try:
            consumer.assign([TopicPartition(t, 0, 0) for t in self.topics])
            while not self._stop.is_set():
                for message in consumer.consume(500, timeout=0.2):
                    error = message.error()
                    if error is not None:
                        if error.code() in (KafkaError._PARTITION_EOF,
                                            KafkaError.UNKNOWN_TOPIC_OR_PART):  # fmt: skip
                            continue
                        raise RuntimeError(f"tap: {error}")
                    self._take(message)
        except BaseException as error:  # surfaced by check()
            self._error = error
        finally:
            consumer.close()

    def _take(self, message: Any) -> None:
        topic = message.topic()
        if topic == DEAD_LETTERS:
            headers = {k: v.decode(errors="replace") for k, v in message.headers() or []}
            with self._lock:
                self.dead_letters.append(headers)
            return
        try:
            value = self.decoder(topic, message.value())
        except (ValueError, EOFError, TypeError, IndexError, UnicodeDecodeError) as error:
            with self._lock:
                self.undecodable.append(f"{topic}@{message.offset()}: {error}")
            return
        record = Record(topic, message.offset(), message.timestamp()[1], value)
        with self._lock:
            if topic == "engine_current_position":
                self.positions_ms.append(record.broker_ms)
            self.counts[topic] = self.counts.get(topic, 0) + 1
            self.newest[topic] = record
            if topic not in self.bulk:
                self.records.setdefault(topic, []).append(record)
        if self.progress is not None and topic not in self.bulk:
            try:
                self.progress(record)
            except (KeyError, TypeError, ValueError) as error:  # progress is only a display
                print(f"tap: cannot show {topic}@{record.offset}: {error}", flush=True)


def produce(topic: str, records: Iterable[dict[str, Any]], key: dict[str, Any]) -> None:
    """Write records as an original service would (Avro key and value), acknowledged."""
    values = [encode(topic, record) for record in records]
    client.produce(BOOTSTRAP, topic, values, key=encode(topic, key, "key"))


def wait_until(condition: Callable[[], bool], timeout: float, what: str,
               check: Callable[[], None] | None = None) -> None:  # fmt: skip
    """Poll ``condition`` until true; raise naming ``what`` after ``timeout`` seconds."""
    limit = time.monotonic() + timeout
    while not condition():
        if check is not None:
            check()
        if time.monotonic() > limit:
            raise TimeoutError(f"gave up after {timeout:.0f}s waiting for {what}")
        time.sleep(0.5)
