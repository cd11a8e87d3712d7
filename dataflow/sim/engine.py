"""An Engine stand-in: follows pause/play and complains about what a real engine would not survive.

Pure core (``EngineSimulator.apply``); the demo and tests feed it the sync topic.
Like the real engines it acts on every message it reads and reads no header: a
repeated ``pause`` pauses again (and is a complaint). It also counts the
deliveries of each ``message-id`` it sees, for tests: a second one is a copy
the controller should never have written (``duplicates``).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, Message
from confluent_kafka.cimpl import TopicPartition

from dataflow.adapters.clock import now_ms
from dataflow.adapters.kafka import MESSAGE_ID_HEADER
from dataflow.adapters.wire import Codec
from dataflow.domain import dialects
from dataflow.domain import messages as msg
from dataflow.sim.runner import add_wire_arguments, client


@dataclass
class EngineSimulator:
    """Tracks playing/paused and the current model; records complaints."""

    model_id: int | str = -1
    paused: bool = False
    paused_since_ms: int | None = None
    #: Deliveries of each message id (only counted: the engine acts on every copy).
    deliveries: dict[bytes, int] = field(default_factory=dict)
    complaints: list[str] = field(default_factory=list)
    switches: list[int | str] = field(default_factory=list)
    #: Model ids the factory reported (when the engine also follows the reports).
    known_models: set[int | str] = field(default_factory=set)
    follows_reports: bool = False
    codec: Codec = field(default_factory=lambda: Codec(dialects.DIALECTS[0]))

    def follow(self, message: Message, now_ms: int) -> None:
        """Apply a sync message as read from Kafka (its ``message-id`` header only counted)."""
        found = dict(message.headers() or []).get(MESSAGE_ID_HEADER)
        message_id = found.encode() if isinstance(found, str) else found
        self.apply(message.value() or b"", message_id, now_ms)

    @property
    def duplicates(self) -> dict[bytes, int]:
        """Message ids delivered more than once, with how many deliveries."""
        return {mid: n for mid, n in self.deliveries.items() if n > 1}

    def learn_report(self, value: bytes) -> None:
        """Remember a model the factory built (a play may only name one of these)."""
        self.follows_reports = True
        report = self.codec.decode_report(value)
        if isinstance(report, msg.Report) and report.ok and report.model_id is not None:
            self.known_models.add(report.model_id)

    def apply(self, value: bytes, message_id: bytes | None = None, now_ms: int = 0) -> None:
        """Handle one sync message, as a real engine does: whatever copy of what it is."""
        if message_id is not None:
            self.deliveries[message_id] = self.deliveries.get(message_id, 0) + 1
        sync = self.codec.decode_sync(value)
        if isinstance(sync, msg.Rejection):
            self.complaints.append(f"unknown message: {sync.reason}")
            return
        if sync.type == "pause":
            if self.paused:
                self.complaints.append("pause while already paused")
            self.paused, self.paused_since_ms = True, now_ms
            return
        if not self.paused:
            self.complaints.append(f"play of model {sync.model_id!r} without a pause")
        unknown = sync.model_id not in self.known_models and sync.model_id != self.model_id
        if self.follows_reports and unknown:
            self.complaints.append(f"play of model {sync.model_id!r} the factory never reported")
        self.paused, self.paused_since_ms = False, None
        self.model_id = sync.model_id
        self.switches.append(sync.model_id)

    def check_stuck(self, now_ms: int, limit_ms: int) -> bool:
        """Record a complaint (once) if paused for longer than ``limit_ms``; True if stuck."""
        if (
            self.paused
            and self.paused_since_ms is not None
            and now_ms - self.paused_since_ms > limit_ms
        ):
            complaint = f"paused for over {limit_ms} ms: a pause never followed by a play"
            if complaint not in self.complaints:
                self.complaints.append(complaint)
            return True
        return False


def main(argv: list[str] | None = None) -> int:
    """Follow the sync (and report) topics until Ctrl-C; exit 1 if anything was wrong."""
    parser = argparse.ArgumentParser(prog="python -m dataflow.sim.engine", description=__doc__)
    add_wire_arguments(parser, "sync messages and reports")
    parser.add_argument("--sync-topic", default=None, help="default: the dialect's")
    parser.add_argument("--reports-topic", default=None, help="default: the dialect's")
    parser.add_argument(
        "--stuck-after",
        type=float,
        default=900.0,
        help="complain when paused longer than this many seconds",
    )
    parser.add_argument("--from-start", action="store_true", help="replay the topics from offset 0")
    args = parser.parse_args(argv)
    sync_topic = args.sync_topic or dialects.get(args.dialect).topics["sync"]
    reports_topic = args.reports_topic or dialects.get(args.dialect).topics["reports"]
    consumer = Consumer(
        client(
            {
                "bootstrap.servers": args.bootstrap,
                "group.id": "engine-stand-in",
                "isolation.level": "read_uncommitted",
            }
        )
    )  # as the real engines read
    start = OFFSET_BEGINNING if args.from_start else OFFSET_END
    consumer.assign([TopicPartition(sync_topic, 0, start), TopicPartition(reports_topic, 0, start)])
    engine = EngineSimulator(codec=Codec(args.dialect, args.encoding), follows_reports=True)
    shown = 0
    try:
        while True:
            message = consumer.poll(0.5)
            now = now_ms()
            if message is not None and message.error() is None:
                if message.topic() == reports_topic:
                    engine.learn_report(message.value() or b"")
                else:
                    engine.follow(message, now)
                    state = "PAUSED" if engine.paused else "PLAYING"
                    print(f"engine: {state} model {engine.model_id!r}", flush=True)
            engine.check_stuck(now, int(args.stuck_after * 1000))
            for complaint in engine.complaints[shown:]:
                print(f"ENGINE COMPLAINT: {complaint}", file=sys.stderr, flush=True)
            shown = len(engine.complaints)
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    if engine.duplicates:
        print(f"ENGINE COMPLAINT: messages delivered twice: {engine.duplicates}", file=sys.stderr)
    return 1 if engine.complaints or engine.duplicates else 0


if __name__ == "__main__":
    sys.exit(main())
