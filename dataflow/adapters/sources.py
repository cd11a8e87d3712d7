"""Input sources paced for latency and idle cost: the deadline tick and the Kafka inputs.

Role: adapters between time, Kafka and the flow's inputs. Three Bytewax 0.21.1
behaviours, found by running them (``tests/flow/test_epochs.py`` pins the first), decide
their shape:

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
* Every input partition keeps its own epoch timer: it ends an epoch at its first
  wake-up at least the epoch interval (``-s``) after it ended the last one, and
  then reads nothing until every input of the flow has ended that epoch too
  (backpressure). A partition woken later than the others ends each epoch later
  by that much, and the lag *accumulates*: measured, the tick source (woken every
  50 ms) fell ~20 ms an epoch behind the Kafka inputs (every ~11 ms), and four
  minutes after start both Kafka inputs read nothing for 0.8 s at every epoch's
  end (the flow test shows the end of that road under Bytewax alone: the faster
  input read once an epoch). ``EpochClock`` stops the drift: every partition of
  the process reports when it began each epoch, and one that is about to end an
  epoch first sleeps until the latest of them can end it too. Inputs in other
  processes are seen the only way they can be: by how long a partition is kept
  waiting after it ends an epoch; it ends the next one that much later
  (``_EpochTimer``). The inputs end every epoch together and the lag stays at
  the wake-up jitter. The price: each epoch a partition also sleeps, before its
  end, ``HOLD_MARGIN`` plus as long as the last end kept it waiting (the time to
  write the epoch and hear from every input: a few ms in one process).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from bytewax.connectors.kafka import KafkaSource
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING
from confluent_kafka.admin import AdminClient
from typing_extensions import override

from dataflow.adapters.clock import now_ms
from dataflow.adapters.kafka import stop_if_refused
from dataflow.adapters.observability import INPUT_EPOCH_LAG

#: Set when the controller was asked to stop (SIGTERM): every input partition ends at
#: its next poll, so Bytewax finishes the dataflow as at the end of its input: the last
#: epoch is snapshotted, the sinks flush and close, and ``bytewax.run`` returns (status 0).
STOP_REQUESTED: Final = threading.Event()


def _ended_if_stopping() -> None:
    if STOP_REQUESTED.is_set():
        raise StopIteration


#: The tick source's one partition; the same name as Bytewax's ``SimplePollingSource``
#: used before, so existing recovery stores keep matching it.
TICK_PARTITION = "singleton"

#: How long before its own epoch end (as it sees it) a partition starts waiting for
#: the others. Bytewax times an epoch from the start of the operator activation that
#: ended the last one, and ends it at any activation of the operator past the
#: interval; the partition sees its epoch begin a little later (after its own poll,
#: ~1 ms for Kafka, and after the polls of the input's other partitions on the worker).
HOLD_MARGIN: Final = timedelta(milliseconds=15)
#: A snapshot this soon after the partition's last ``next_awake`` is in the same wake-up.
_SAME_WAKE_UP: Final = timedelta(milliseconds=0.5)


def _now() -> datetime:
    return datetime.now(UTC)


class EpochClock:
    """When the input partitions of one process began their epochs, so that they end them together.

    ``interval`` is Bytewax's epoch interval (``-s``, ``runtime.bytewax_epoch_interval``);
    without it the clock aligns nothing and only measures. Partitions count the
    epochs they have ended since they were built; all of a flow's partitions are
    built at its start, in the same epoch, so equal counts are the same epoch. One
    clock serves every source of a flow, in every worker thread of the process.
    Once every partition has begun an epoch, how far apart they did is ``lag`` and
    the ``controller_input_epoch_lag_seconds`` gauge. ``on_epoch_end`` runs in every
    partition at every epoch's end, before Bytewax writes the epoch (the flow checks
    there that the recovery directory is still this process's, ``recovery.Claim``).
    """

    def __init__(
        self, interval: timedelta | None = None, on_epoch_end: Callable[[], None] | None = None
    ) -> None:
        self.interval = interval
        self.on_epoch_end = on_epoch_end
        self._lock = threading.Lock()  # worker threads switch between any two bytecodes
        #: Per epoch count: the earliest and the latest time a partition began that
        #: epoch, and how many partitions have.
        self._first: dict[int, datetime] = {}
        self._latest: dict[int, datetime] = {}
        self._count: dict[int, int] = {}
        #: The partitions that began the first epoch (all are built at the start).
        self._partitions = 0
        #: How far apart the partitions began the last epoch all of them began.
        self.lag: timedelta | None = None

    def began(self, epoch: int, at: datetime) -> None:
        """A partition began its ``epoch``-th epoch ``at`` (its 0th when it was built)."""
        with self._lock:
            self._first[epoch] = min(self._first.get(epoch, at), at)
            self._latest[epoch] = max(self._latest.get(epoch, at), at)
            self._count[epoch] = self._count.get(epoch, 0) + 1
            if epoch == 0:
                self._partitions += 1
            elif self._count[epoch] == self._partitions:
                self.lag = self._latest[epoch] - self._first[epoch]
                INPUT_EPOCH_LAG.set(self.lag.total_seconds())
            # A partition is never more than one epoch ahead of another (it reads
            # nothing until the others catch up), so older epochs are not needed.
            for old in [count for count in self._latest if count < epoch - 2]:
                del self._first[old], self._latest[old], self._count[old]

    def wake(
        self, epoch: int, began: datetime, wanted: datetime, behind: timedelta = timedelta(0)
    ) -> datetime:
        """When a partition that wants to wake at ``wanted`` should wake.

        The partition is in its ``epoch``-th epoch, begun at ``began``; at the end of
        its last one it was kept waiting ``behind`` (for the inputs, in this process or
        another, that ended it later, and for the epoch to be written). As wanted,
        unless that is near or past the epoch's end; then when the last partition of
        the process to begin this epoch can end it, and not before ``behind`` past its
        own end (earlier than ``wanted`` if that is later, so that no partition ends
        its epoch late).
        """
        if self.interval is None:
            return wanted
        own_end = began + self.interval
        if wanted < own_end - HOLD_MARGIN:
            return wanted
        with self._lock:
            latest = self._latest.get(epoch, began)
        return max(own_end + behind, latest + self.interval)


class _EpochTimer:
    """One partition's view of the clock, and how long its last epoch's end kept it waiting.

    It knows its epoch count and when the current epoch began. After ending an epoch
    a partition is not polled until every input, in every process, has ended it too
    (and the epoch is written): the time to its first poll after its end is how far
    it was ahead plus that writing, and it ends the next epoch that much later. So
    one epoch later it ends its epochs with the inputs that were behind, wherever
    they run, if they were less than an epoch (less that wait) behind. Further
    behind, Bytewax ends the partition's next epoch at the very wake-up that lets it
    read again, and no wake-up time can prevent that.
    """

    def __init__(self, clock: EpochClock) -> None:
        self._clock = clock
        self._epoch = 0
        self._began = _now()
        self._kept = timedelta(0)  # how long the last epoch's end kept it waiting
        self._polled = True  # since the epoch began
        self._poll_began = self._woken = self._began
        clock.began(self._epoch, self._began)

    def polling(self) -> None:
        """A poll begins (its wake-up may be the one that ends the epoch)."""
        self._poll_began = _now()

    def ended(self) -> None:
        """Bytewax ended this partition's epoch (it asks for a snapshot exactly then).

        Bytewax began the new epoch at the start of this wake-up: if the partition was
        polled in it (its ``wake`` came just now), the poll's start is the closer guess.
        """
        if self._clock.on_epoch_end is not None:
            self._clock.on_epoch_end()
        now = _now()
        self._began = self._poll_began if now - self._woken < _SAME_WAKE_UP else now
        self._epoch += 1
        self._polled = False
        self._clock.began(self._epoch, self._began)

    def wake(self, wanted: datetime | None) -> datetime | None:
        """After a poll: ``wanted`` (``None``: at once), adjusted to end epochs in step."""
        now = self._woken = _now()
        if not self._polled:  # the first poll of this epoch: how long was it kept?
            polled_at = self._poll_began if self._poll_began >= self._began else now
            self._polled, self._kept = True, polled_at - self._began
        adjusted = self._clock.wake(self._epoch, self._began, wanted or now, self._kept)
        return None if wanted is None and adjusted <= now else adjusted


class _TickPartition(StatefulSourcePartition[int, None]):
    def __init__(self, interval: timedelta, idle_wait: timedelta, clock: EpochClock) -> None:
        self._interval = interval
        self._idle_wait = idle_wait
        self._due = _now()
        self._awake = self._due
        self._timer = _EpochTimer(clock)

    @override
    def next_batch(self) -> list[int]:
        _ended_if_stopping()
        self._timer.polling()
        now = _now()
        self._awake = now + self._idle_wait
        if now < self._due:
            return []
        self._due = max(self._due + self._interval, now)  # no burst after a stall
        return [now_ms()]

    @override
    def next_awake(self) -> datetime | None:
        return self._timer.wake(min(self._awake, self._due))

    @override
    def snapshot(self) -> None:
        self._timer.ended()
        return None


class TickSource(FixedPartitionedSource[int, None]):
    """The wall-clock time (ms) once per ``interval``; awake every ``idle_wait`` for progress."""

    def __init__(
        self, interval: timedelta, idle_wait: timedelta, clock: EpochClock | None = None
    ) -> None:
        self.interval = interval
        self.idle_wait = idle_wait
        self.clock = clock or EpochClock()

    @override
    def list_parts(self) -> list[str]:
        return [TICK_PARTITION]

    @override
    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _TickPartition:
        return _TickPartition(self.interval, self.idle_wait, self.clock)


class _PacedPartition(StatefulSourcePartition[Any, Any]):
    """A Kafka partition that sleeps ``idle_wait`` after a poll that found nothing."""

    def __init__(
        self, inner: StatefulSourcePartition[Any, Any], idle_wait: timedelta, clock: EpochClock
    ) -> None:
        self._inner = inner
        self._idle_wait = idle_wait
        self._awake: datetime | None = None
        self._timer = _EpochTimer(clock)

    @override
    def next_batch(self) -> list[Any]:
        _ended_if_stopping()
        self._timer.polling()
        batch = list(self._inner.next_batch())
        self._awake = None if batch else _now() + self._idle_wait
        return batch

    @override
    def next_awake(self) -> datetime | None:
        return self._timer.wake(self._awake)

    @override
    def snapshot(self) -> Any:
        self._timer.ended()
        return self._inner.snapshot()

    @override
    def close(self) -> None:
        self._inner.close()


#: librdkafka properties only a consumer understands: any other client warns (CONFWARN).
CONSUMER_ONLY: Final = frozenset(
    {"auto.offset.reset", "fetch.message.max.bytes", "isolation.level", "group.id"}
)
#: Not given to the partition lister: nothing polls it, so its log lines would be lost;
#: without a logger librdkafka writes them to stderr itself.
_NOT_FOR_LISTER: Final = CONSUMER_ONLY | {"logger"}


def partition_names(
    admin: AdminClient, topics: list[str], config: Mapping[str, Any] | None = None,
    setting: str | None = None,
) -> list[str]:  # fmt: skip
    """Every partition of ``topics`` as ``KafkaSource`` names it: ``"<index>-<topic>"``.

    The names are Bytewax's recovery keys for the input's offsets (``build_part``
    parses them back), so they must stay exactly this; a test pins the format
    against ``KafkaSource.build_part``. Topics are listed one by one, so that a
    broker that creates topics on first use does so. A topic the broker refuses
    (an ACL removed since the start-up check) stops the process with one line
    (``kafka.stop_if_refused``; ``config``: the client's, ``setting``: the variable
    naming the topic).
    """
    names = []
    for topic in topics:
        metadata = admin.list_topics(topic).topics[topic]
        if metadata.error is not None:
            stop_if_refused(metadata.error, topic, setting, config or {})
            raise RuntimeError(f"error listing partitions for Kafka topic {topic!r}: "
                               f"{metadata.error.str()}")  # fmt: skip
        names += [f"{index}-{topic}" for index in metadata.partitions]
    return names


class PacedKafkaSource(KafkaSource):
    """Bytewax's ``KafkaSource`` (same partitions and resume state), paced when idle.

    ``clock``: the process's ``EpochClock``, shared with the flow's other sources.
    ``start``: where a partition without recovery state starts, by partition index (the
    recovery directory's origin, ``dataflow.adapters.origin``); one not named starts at
    the topic's beginning (it was added after the origin was recorded).
    """

    def __init__(
        self, brokers: list[str], topics: list[str], *, add_config: dict[str, str],
        idle_wait: timedelta, clock: EpochClock | None = None,
        start: Mapping[int, int] | None = None, setting: str | None = None, **kwargs: Any,
    ) -> None:  # fmt: skip
        super().__init__(brokers, topics, add_config=add_config, **kwargs)
        self.setting = setting
        self.brokers, self.topics, self.add_config = list(brokers), list(topics), dict(add_config)
        self.idle_wait = idle_wait
        self.clock = clock or EpochClock()
        self.start = dict(start or {})

    def admin_config(self) -> dict[str, str | int | float | bool]:
        """The partition lister's settings: the consumers' minus what only a consumer reads.

        Bytewax gives its admin client every consumer setting, and librdkafka logs a
        ``CONFWARN`` line for each one a non-consumer ignores, on every start.
        """
        config: dict[str, str | int | float | bool] = {"bootstrap.servers": ",".join(self.brokers)}
        config.update((k, v) for k, v in self.add_config.items() if k not in _NOT_FOR_LISTER)
        return config

    @override
    def list_parts(self) -> list[str]:
        return partition_names(AdminClient(self.admin_config()), self.topics, self.add_config,
                               self.setting)  # fmt: skip

    @override
    def build_part(  # type: ignore[override]
        self, step_id: str, for_part: str, resume_state: int | None
    ) -> _PacedPartition:
        if resume_state is None:
            resume_state = self.start.get(int(for_part.split("-", 1)[0]), OFFSET_BEGINNING)
        inner = super().build_part(step_id, for_part, resume_state)
        return _PacedPartition(inner, self.idle_wait, self.clock)
