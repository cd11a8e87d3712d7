"""Wire encodings: JSON (every dialect) or schemaless Avro (the dialects that speak it).

Role: the bytes boundary of every topic, for the flow and the stand-ins. JSON is
the domain's own encoding (``dataflow.domain.messages``). Avro is what the
original RTCEF services really write and read: ``fastavro.schemaless_writer``
for the value and, separately, for the key (no magic byte, no schema id, no
registry), with the schemas shipped in ``dataflow/adapters/schemas/<dialect>/``,
named after the dialect's topics (``Dialect.topics``), and keys built from the
record fields ``AVRO_KEYS`` names, as the originals build them.

An Avro record is read, then converted to the same wire struct with the same
validation as JSON is decoded with (``messages.decode_payload``), so a message
means the same in both encodings; bytes that are not a record of the topic's
schema (truncated, another schema, trailing garbage) are a ``Rejection``.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Final, Literal, TypeAlias

import fastavro
import msgspec

from dataflow.domain import dialects
from dataflow.domain import messages as msg

Encoding: TypeAlias = Literal["json", "avro"]
ENCODINGS: Final = ("json", "avro")
#: Each Avro-speaking dialect's schemas: ``schemas/<dialect>/<topic>-{key,value}.avsc``,
#: named after the dialect's own topic names (``Dialect.topics``).
SCHEMAS: Final = Path(__file__).resolve().parent / "schemas"
#: The record fields each Avro-speaking dialect's services build a topic's key from, in
#: order (``fastavro.schemaless_writer`` for value and key alike).
AVRO_KEYS: Final[Mapping[str, Mapping[dialects.TopicRole, tuple[str, ...]]]] = {
    "rtcef": {
        "instructions": ("id",), "commands": ("id",), "reports": ("reply_id",),
        "sync": ("timestamp", "type"),
    },
}  # fmt: skip
if {d.name for d in dialects.REGISTRY.values() if "avro" in d.encodings} != set(AVRO_KEYS):
    raise ValueError("a dialect speaks avro exactly when its Avro keys (and schemas) are here")
_INT32: Final = (-(2**31), 2**31 - 1)
#: The ``metrics`` field of a deadline marker that names its command.
DEADLINE_FIELD: Final = "deadline_passed"


def _stem(dialect: str, role: dialects.TopicRole) -> str:
    if dialect not in AVRO_KEYS:
        raise ValueError(f"the {dialect} dialect has no Avro schemas")
    return dialects.get(dialect).topics[role]


@cache
def schema(dialect: str, role: dialects.TopicRole, part: Literal["key", "value"]) -> Any:
    """The parsed Avro schema of a dialect's topic's key or value."""
    path = SCHEMAS / dialect / f"{_stem(dialect, role)}-{part}.avsc"
    return fastavro.parse_schema(json.loads(path.read_text()))


def avro_write(
    dialect: str, role: dialects.TopicRole, part: Literal["key", "value"], record: dict[str, Any]
) -> bytes:
    """Schemaless Avro bytes of ``record``, exactly as ``fastavro.schemaless_writer`` writes."""
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, schema(dialect, role, part), record)
    return buffer.getvalue()


def avro_read(
    dialect: str, role: dialects.TopicRole, part: Literal["key", "value"], data: bytes
) -> dict[str, Any] | str:
    """The record in ``data``, or why it is not one (as text)."""
    stem = _stem(dialect, role)
    buffer = io.BytesIO(data)
    try:
        record = fastavro.schemaless_reader(buffer, schema(dialect, role, part), None)
    except (EOFError, ValueError, TypeError, IndexError, UnicodeDecodeError, OverflowError) as e:
        return f"not an Avro {stem} {part} ({type(e).__name__}: {e})"
    if buffer.tell() != len(data):
        return f"not an Avro {stem} {part} ({len(data) - buffer.tell()} trailing bytes)"
    if not isinstance(record, dict):
        return f"not an Avro {stem} {part} record"
    return record


@dataclass(frozen=True)
class Codec:
    """Encode and decode every topic's messages for one dialect and encoding.

    Encoders return ``(key, value)``; a ``None`` key means "the caller's key"
    (JSON messages are keyed by session in the flow).
    """

    dialect: str
    encoding: Encoding = "json"

    def __post_init__(self) -> None:
        spoken = dialects.get(self.dialect).encodings
        if self.encoding not in spoken:
            raise ValueError(f"the {self.dialect} dialect is spoken in {', '.join(spoken)}, "
                             f"not {self.encoding}")  # fmt: skip

    @property
    def avro(self) -> bool:
        """Whether messages are schemaless Avro."""
        return self.encoding == "avro"

    def _payload(
        self, role: dialects.TopicRole, data: bytes, what: str, max_bytes: int
    ) -> msg.Payload | msg.Rejection:
        """The message, size-checked on the wire: its JSON bytes, or its Avro record."""
        too_large = msg.oversized(data, what, max_bytes)
        if too_large is not None:
            return too_large
        if not self.avro:
            return data
        record = avro_read(self.dialect, role, "value", data)
        if isinstance(record, str):
            return msg.Rejection(f"{what}: {record}")
        return record

    # ------------------------------------------------------------------ inputs

    def decode_instruction(
        self, data: bytes, max_bytes: int = msg.DEFAULT_MAX_MESSAGE_BYTES
    ) -> msg.Instruction | msg.Rejection:
        """An Observer instruction."""
        payload = self._payload("instructions", data, "instruction", max_bytes)
        if isinstance(payload, msg.Rejection):
            return payload
        return dialects.decode_instruction(payload, self.dialect, max_bytes)

    def decode_report(
        self, data: bytes, max_bytes: int = msg.DEFAULT_MAX_MESSAGE_BYTES
    ) -> msg.Report | msg.Rejection:
        """A factory report, normalised.

        In Avro, a model id the engine's sync schema cannot carry (an ``int``,
        while reports carry a ``long``) is refused here: accepted, it would make
        the play unwritable and crash the flow on every replay.
        """
        payload = self._payload("reports", data, "report", max_bytes)
        if isinstance(payload, msg.Rejection):
            return payload
        report = dialects.decode_report(payload, self.dialect, max_bytes)
        model = report.model_id if isinstance(report, msg.Report) else None
        if self.avro and isinstance(model, int) and not _INT32[0] <= model <= _INT32[1]:
            return msg.Rejection(
                f"report: `$.model_id` {model} does not fit engine_sync's Avro int (32 bits)"
            )
        return report

    def decode_deadline(
        self, data: bytes, max_bytes: int = msg.DEFAULT_MAX_MESSAGE_BYTES
    ) -> msg.Deadline | msg.Rejection:
        """A deadline marker the controller wrote to the report topic (``encode_deadline``)."""
        payload = self._payload("reports", data, "deadline marker", max_bytes)
        if isinstance(payload, msg.Rejection):
            return payload
        try:
            record = payload if isinstance(payload, dict) else json.loads(payload)
            named = json.loads(record["metrics"])[DEADLINE_FIELD]
        except (ValueError, KeyError, TypeError) as error:
            return msg.Rejection(f"deadline marker: `$.metrics.{DEADLINE_FIELD}` unreadable "
                                 f"({type(error).__name__}: {error})")  # fmt: skip
        if isinstance(named, bool) or not isinstance(named, int | str):
            return msg.Rejection(f"deadline marker: `$.metrics.{DEADLINE_FIELD}` must be a "
                                 f"command id, got {named!r:.40}")  # fmt: skip
        return msg.Deadline(named)

    def decode_command(self, data: bytes) -> msg.FactoryCommand | msg.Rejection:
        """A factory command (read by the factory stand-in and the tests)."""
        payload = self._payload("commands", data, "command", msg.DEFAULT_MAX_MESSAGE_BYTES)
        if isinstance(payload, msg.Rejection):
            return payload
        return msg.decode_command(payload)

    def decode_sync(self, data: bytes) -> msg.SyncMessage | msg.Rejection:
        """A pause/play message (read by the engine stand-in and the tests)."""
        payload = self._payload("sync", data, "sync", msg.DEFAULT_MAX_MESSAGE_BYTES)
        if isinstance(payload, msg.Rejection):
            return payload
        return msg.decode_sync(payload)

    # ------------------------------------------------------------------ outputs

    def encode_command(self, command: msg.FactoryCommand) -> tuple[bytes | None, bytes]:
        """A factory command's key and value."""
        if not self.avro:
            return None, msg.encode_command(command)
        return self._avro("commands", msgspec.structs.asdict(command))

    def encode_sync(self, sync: msg.SyncMessage) -> tuple[bytes | None, bytes]:
        """A pause/play message's key and value."""
        if not self.avro:
            return None, msg.encode_sync(sync)
        return self._avro("sync", msgspec.structs.asdict(sync))

    def encode_deadline(self, deadline: msg.Deadline) -> tuple[bytes | None, bytes]:
        """A deadline marker for the report topic, in the shape of the topic's reports.

        Every reader of the topic can decode it, and none would take it for an answer:
        its ``reply_id`` is -1 (no command has it), its ``model_id`` -1, and it names its
        command in ``metrics`` only. In Avro its key is the one the factory's report to
        that command has, so that on a topic of several partitions both land in the same
        one (the timeout is decided by which is read first).
        """
        metrics = json.dumps({DEADLINE_FIELD: deadline.command_id})
        record = {"reply_id": -1, "params_dict": "", "model_id": -1, "metrics": metrics}
        if not self.avro:
            return None, msgspec.json.encode(record)
        key = {"reply_id": deadline.command_id}
        return (avro_write(self.dialect, "reports", "key", key),
                avro_write(self.dialect, "reports", "value", record))  # fmt: skip

    def encode_report(self, report: msgspec.Struct) -> tuple[bytes | None, bytes]:
        """A factory report's key and value (the factory stand-in writes these)."""
        if not self.avro:
            return None, msg.encode_json(report)
        return self._avro("reports", msgspec.structs.asdict(report))

    def encode_instruction(self, instruction: msg.Instruction) -> tuple[bytes | None, bytes]:
        """An Observer instruction's key and value (the Observer stand-in writes these)."""
        record = dialects.get(self.dialect).encode_instruction(instruction)
        if not self.avro:
            return None, msg.encode_json(record)
        return self._avro("instructions", msgspec.structs.asdict(record))

    def _avro(self, role: dialects.TopicRole, record: dict[str, Any]) -> tuple[bytes, bytes]:
        key = {name: record[name] for name in AVRO_KEYS[self.dialect][role]}
        return (avro_write(self.dialect, role, "key", key),
                avro_write(self.dialect, role, "value", record))  # fmt: skip
