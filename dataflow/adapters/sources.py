"""Input sources paced for latency and idle cost: the deadline tick and the Kafka inputs.

Role: adapters between time, Kafka and the flow's inputs. Two Bytewax 0.21.1
behaviours (``shared/docs/bytewax-notes.md``) decide their shape:

* A stateful step can only move past an epoch once *every* merged input has
  moved past it, and an input only moves on when it is woken. A tick source
  that sleeps ``TICK_INTERVAL_S`` between wake-ups therefore holds every report
  and instruction back by up to that long. ``TickSource`` wakes every
  ``idle_wait`` (the flow gives it 5 x ``INPUT_IDLE_WAIT_MS``, 50 ms) so that it
  holds the frontier back at most that long, and only at an epoch's end; it
  emits a tick only once per ``interval``: deadline resolution and hop latency
  are independent.
* A source that returns no items and no wake-up time is polled again after
  1 ms: two idle Kafka inputs cost most of a core. ``PacedKafkaSource`` waits
  ``idle_wait`` after an empty poll, and polls again at once after a non-empty
  one, so a burst is read at full speed and an idle controller sleeps.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Final

from bytewax.connectors.kafka import KafkaSource, _list_parts
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka.admin import AdminClient
from typing_extensions import override

from dataflow.adapters.clock import now_ms

#: The tick source's one partition; the same name as Bytewax's ``SimplePollingSource``
#: used before, so existing recovery stores keep matching it.
TICK_PARTITION = "singleton"


def _now() -> datetime:
    return datetime.now(UTC)


class _TickPartition(StatefulSourcePartition[int, None]):
    def __init__(self, interval: timedelta, idle_wait: timedelta) -> None:
        self._interval = interval
        self._idle_wait = idle_wait
        self._due = _now()
        self._awake = self._due

    @override
    def next_batch(self) -> list[int]:
        now = _now()
        self._awake = now + self._idle_wait
        if now < self._due:
            return []
        self._due = max(self._due + self._interval, now)  # no burst after a stall
        return [now_ms()]

    @override
    def next_awake(self) -> datetime | None:
        return min(self._awake, self._due)

    @override
    def snapshot(self) -> None:
        return None


class TickSource(FixedPartitionedSource[int, None]):
    """The wall-clock time (ms) once per ``interval``; awake every ``idle_wait`` for progress."""

    def __init__(self, interval: timedelta, idle_wait: timedelta) -> None:
        self.interval = interval
        self.idle_wait = idle_wait

    @override
    def list_parts(self) -> list[str]:
        return [TICK_PARTITION]

    @override
    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _TickPartition:
        return _TickPartition(self.interval, self.idle_wait)


class _PacedPartition(StatefulSourcePartition[Any, Any]):
    """A Kafka partition that sleeps ``idle_wait`` after a poll that found nothing."""

    def __init__(self, inner: StatefulSourcePartition[Any, Any], idle_wait: timedelta) -> None:
        self._inner = inner
        self._idle_wait = idle_wait
        self._awake: datetime | None = None

    @override
    def next_batch(self) -> list[Any]:
        batch = list(self._inner.next_batch())
        self._awake = None if batch else _now() + self._idle_wait
        return batch

    @override
    def next_awake(self) -> datetime | None:
        return self._awake

    @override
    def snapshot(self) -> Any:
        return self._inner.snapshot()

    @override
    def close(self) -> None:
        self._inner.close()


#: librdkafka properties only a consumer understands: any other client warns (CONFWARN).
CONSUMER_ONLY: Final = frozenset({"auto.offset.reset", "fetch.message.max.bytes"})
#: Not given to the partition lister: nothing polls it, so its log lines would be lost;
#: without a logger librdkafka writes them to stderr itself.
_NOT_FOR_LISTER: Final = CONSUMER_ONLY | {"logger"}


class PacedKafkaSource(KafkaSource):
    """Bytewax's ``KafkaSource`` (same partitions and resume state), paced when idle."""

    def __init__(self, *args: Any, idle_wait: timedelta, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.idle_wait = idle_wait

    def admin_config(self) -> dict[str, str | int | float | bool]:
        """The partition lister's settings: the consumers' minus what only a consumer reads.

        Bytewax gives its admin client every consumer setting, and librdkafka logs a
        ``CONFWARN`` line for each one a non-consumer ignores, on every start.
        """
        config: dict[str, str | int | float | bool] = {"bootstrap.servers": ",".join(self._brokers)}
        config.update((k, v) for k, v in self._add_config.items() if k not in _NOT_FOR_LISTER)
        return config

    @override
    def list_parts(self) -> list[str]:
        return list(_list_parts(AdminClient(self.admin_config()), self._topics))

    @override
    def build_part(  # type: ignore[override]
        self, step_id: str, for_part: str, resume_state: int | None
    ) -> _PacedPartition:
        return _PacedPartition(super().build_part(step_id, for_part, resume_state), self.idle_wait)
