"""The inputs' epochs under Bytewax itself: the shared ``EpochClock`` keeps them in step.

Bytewax 0.21.1 ends each input partition's epoch at the partition's first wake-up
past the interval, then reads nothing from it until every input has ended that
epoch. Two tick sources woken at different paces (7 ms, 30 ms) stand in for the
Kafka inputs and the tick input: the epoch ends of each are recorded and compared
epoch by epoch.
"""

from __future__ import annotations

import statistics
import time
from datetime import datetime, timedelta

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import StatefulSourcePartition
from bytewax.testing import TestingSink, run_main

from dataflow.adapters.sources import EpochClock, TickSource

EPOCH = timedelta(milliseconds=100)
RUN_S = 3.0


class _Recorded(StatefulSourcePartition[int, None]):
    """A partition that notes when each of its epochs ends, and stops at ``stop_at``."""

    def __init__(self, inner: StatefulSourcePartition[int, None], ends: list[float],
                 stop_at: float) -> None:  # fmt: skip
        self._inner, self._ends, self._stop_at = inner, ends, stop_at

    def next_batch(self) -> list[int]:
        if time.monotonic() >= self._stop_at:
            raise StopIteration
        return self._inner.next_batch()

    def next_awake(self) -> datetime | None:
        return self._inner.next_awake()

    def snapshot(self) -> None:
        self._ends.append(time.monotonic())
        return self._inner.snapshot()


class _RecordedTicks(TickSource):
    def __init__(self, wake_every_ms: int, clock: EpochClock, stop_at: float) -> None:
        super().__init__(timedelta(hours=1), timedelta(milliseconds=wake_every_ms), clock)
        self.ends: list[float] = []
        self.stop_at = stop_at

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _Recorded:  # type: ignore[override]
        return _Recorded(super().build_part(step_id, for_part, resume_state), self.ends,
                         self.stop_at)  # fmt: skip


def epoch_lags_ms(fast_clock: EpochClock, slow_clock: EpochClock) -> list[float]:
    """How far apart the two inputs ended each epoch (ms), in order."""
    stop_at = time.monotonic() + RUN_S
    fast = _RecordedTicks(7, fast_clock, stop_at)
    slow = _RecordedTicks(30, slow_clock, stop_at)
    flow = Dataflow("epochs")
    merged = op.merge("merge", op.input("fast", flow, fast), op.input("slow", flow, slow))
    op.output("out", merged, TestingSink([]))
    run_main(flow, epoch_interval=EPOCH)
    pairs = list(zip(fast.ends, slow.ends, strict=False))
    assert len(pairs) >= 20, f"only {len(pairs)} epochs in {RUN_S} s"
    return [abs(b - a) * 1e3 for a, b in pairs[:-1]]  # the last ends at the stop


def test_inputs_woken_at_different_paces_end_every_epoch_together() -> None:
    clock = EpochClock()

    lags = epoch_lags_ms(clock, clock)

    assert statistics.median(lags[-10:]) <= 10, [round(lag) for lag in lags]


def test_without_a_shared_clock_the_slower_input_falls_further_behind_every_epoch() -> None:
    lags = epoch_lags_ms(EpochClock(), EpochClock())

    # About 14 ms more each epoch, until the faster input reads once an epoch.
    assert statistics.median(lags[-10:]) >= 60, [round(lag) for lag in lags]
    assert lags[8] > lags[2] + 30, [round(lag) for lag in lags]
