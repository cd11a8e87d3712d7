"""The inputs' epochs under Bytewax itself: the shared ``EpochClock`` keeps them in step.

Bytewax 0.21.1 ends each input partition's epoch at the partition's first wake-up
past the interval, then reads nothing from it until every input has ended that
epoch. Two tick sources woken at different paces (7 ms, 30 ms) stand in for the
Kafka inputs and the tick input: the epoch ends of each are recorded and compared
epoch by epoch: with one clock that knows the epoch interval, and with a clock
each (as two processes have). How far apart Bytewax alone lets them drift is its
behaviour, not ours, and depends on the machine's load: it is described in
``dataflow.adapters.sources``, and not asserted here.
"""

from __future__ import annotations

import importlib.machinery
import statistics
import sys
import time
import types
from datetime import datetime, timedelta

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.inputs import StatefulSourcePartition
from bytewax.testing import TestingSink, run_main

from dataflow.adapters.config import Settings
from dataflow.adapters.origin import Origin
from dataflow.adapters.runtime import bytewax_epoch_interval
from dataflow.adapters.sources import EpochClock, TickSource
from dataflow.flow import kafka_io

EPOCH = timedelta(milliseconds=100)
RUN_S = 3.0


class _Recorded(StatefulSourcePartition[int, None]):
    """A partition that notes when each of its epochs ends, and stops at ``stop_at``.

    Each poll takes ``poll_s`` (a Kafka poll takes ~1 ms): the partition sees its
    epoch begin that much after Bytewax began it.
    """

    def __init__(self, inner: StatefulSourcePartition[int, None], ends: list[float],
                 stop_at: float, poll_s: float) -> None:  # fmt: skip
        self._inner, self._ends, self._stop_at, self._poll_s = inner, ends, stop_at, poll_s

    def next_batch(self) -> list[int]:
        if time.monotonic() >= self._stop_at:
            raise StopIteration
        time.sleep(self._poll_s)
        return self._inner.next_batch()

    def next_awake(self) -> datetime | None:
        return self._inner.next_awake()

    def snapshot(self) -> None:
        self._ends.append(time.monotonic())
        return self._inner.snapshot()


class _RecordedTicks(TickSource):
    def __init__(self, wake_every_ms: int, clock: EpochClock, stop_at: float,
                 poll_ms: float = 0) -> None:  # fmt: skip
        super().__init__(timedelta(hours=1), timedelta(milliseconds=wake_every_ms), clock)
        self.ends: list[float] = []
        self.stop_at, self.poll_s = stop_at, poll_ms / 1000

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _Recorded:  # type: ignore[override]
        return _Recorded(super().build_part(step_id, for_part, resume_state), self.ends,
                         self.stop_at, self.poll_s)  # fmt: skip


def epoch_lags_ms(fast_clock: EpochClock, slow_clock: EpochClock) -> list[float]:
    """How far apart the two inputs ended each epoch (ms), in order."""
    stop_at = time.monotonic() + RUN_S
    fast = _RecordedTicks(7, fast_clock, stop_at, poll_ms=3)
    slow = _RecordedTicks(30, slow_clock, stop_at)
    flow = Dataflow("epochs")
    merged = op.merge("merge", op.input("fast", flow, fast), op.input("slow", flow, slow))
    op.output("out", merged, TestingSink([]))
    run_main(flow, epoch_interval=EPOCH)
    pairs = list(zip(fast.ends, slow.ends, strict=False))
    assert len(pairs) >= 15, f"only {len(pairs)} epochs in {RUN_S} s"
    return [abs(b - a) * 1e3 for a, b in pairs[:-1]]  # the last ends at the stop


def test_inputs_woken_at_different_paces_end_every_epoch_together() -> None:
    clock = EpochClock(EPOCH)

    lags = epoch_lags_ms(clock, clock)

    assert statistics.median(lags[-10:]) <= 15, [round(lag) for lag in lags]


def test_inputs_with_a_clock_each_as_in_two_processes_end_every_epoch_together() -> None:
    lags = epoch_lags_ms(EpochClock(EPOCH), EpochClock(EPOCH))

    assert statistics.median(lags[-10:]) <= 15, [round(lag) for lag in lags]


def test_with_a_clock_each_and_no_heed_of_the_wait_the_inputs_drift_apart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wake = EpochClock.wake
    monkeypatch.setattr(EpochClock, "wake", lambda self, epoch, began, wanted, behind=None:
                        wake(self, epoch, began, wanted))  # fmt: skip

    lags = epoch_lags_ms(EpochClock(EPOCH), EpochClock(EPOCH))

    # The fast input sees each epoch begin 3 ms late (its poll), so ends each 3 ms later.
    assert statistics.median(lags[-10:]) >= 30, [round(lag) for lag in lags]


def test_the_flow_aligns_its_inputs_on_the_interval_bytewax_run_was_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run = types.ModuleType("__main__")
    run.__spec__ = importlib.machinery.ModuleSpec("bytewax.run", None)
    run.kwargs = {"epoch_interval": timedelta(seconds=5), "recovery_config": None}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "__main__", run)
    settings = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "unused:9092"})

    io = kafka_io(settings, Origin(0, True, {}, {}))

    assert bytewax_epoch_interval() == timedelta(seconds=5)
    sources = [io.instructions, io.reports, io.ticks]
    assert {id(source.clock) for source in sources} == {id(sources[0].clock)}  # type: ignore[attr-defined]
    assert sources[0].clock.interval == timedelta(seconds=5)  # type: ignore[attr-defined]


def test_outside_bytewax_run_the_inputs_are_left_unaligned() -> None:
    assert bytewax_epoch_interval() is None  # pytest is this process's __main__
