"""An Engine stand-in: follows pause/play and complains about what a real engine would not survive.

Pure core (``EngineSimulator.apply``); the demo and tests feed it the sync topic.
Replayed messages (same ``message-id`` header) are dropped first, as a careful
consumer of an at-least-once stream does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dataflow.domain import messages as msg


@dataclass
class EngineSimulator:
    """Tracks playing/paused and the current model; records complaints."""

    model_id: int | str = -1
    paused: bool = False
    paused_since_ms: int | None = None
    seen: set[bytes] = field(default_factory=set)
    complaints: list[str] = field(default_factory=list)
    switches: list[int | str] = field(default_factory=list)

    def apply(self, value: bytes, message_id: bytes | None = None, now_ms: int = 0) -> None:
        """Handle one sync message."""
        if message_id is not None:
            if message_id in self.seen:
                return
            self.seen.add(message_id)
        sync = msg.decode_sync(value)
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
