"""``EpochClock``: the input partitions end each epoch together, in a process and across.

Bytewax 0.21.1 times each input partition's epochs on its own and stops reading a
partition that ended an epoch until all have; a partition that ends its epochs
later than the others drags them all (``dataflow.adapters.sources``). The flow
tier runs the same clock under Bytewax (``tests/flow/test_epochs.py``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY

from dataflow.adapters import sources
from dataflow.adapters.sources import HOLD_MARGIN, EpochClock

EPOCH = timedelta(seconds=5)
T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def ms(value: float) -> timedelta:
    return timedelta(milliseconds=value)


def learned(*starts: tuple[int, datetime]) -> EpochClock:
    """A clock on 5 s epochs that has seen the given epoch starts."""
    clock = EpochClock(EPOCH)
    for epoch, at in starts:
        clock.began(epoch, at)
    return clock


def test_without_the_epoch_interval_the_clock_leaves_every_wake_up_as_asked() -> None:
    clock = EpochClock()
    clock.began(0, T0)
    clock.began(0, T0 + ms(300))

    assert clock.wake(0, T0, T0 + EPOCH) == T0 + EPOCH
    assert clock.wake(0, T0, T0 + EPOCH + ms(300)) == T0 + EPOCH + ms(300)


def test_a_wake_up_well_before_the_epochs_end_is_left_as_asked() -> None:
    clock = learned((3, T0), (3, T0 + ms(25)))
    wanted = T0 + EPOCH - HOLD_MARGIN - ms(1)

    assert clock.wake(3, T0, wanted) == wanted


def test_a_partition_near_its_epochs_end_waits_for_the_last_partition_to_begin_that_epoch() -> None:
    clock = learned((3, T0), (3, T0 + ms(25)))

    assert clock.wake(3, T0, T0 + EPOCH - HOLD_MARGIN) == T0 + EPOCH + ms(25)
    assert clock.wake(3, T0, T0 + EPOCH + ms(3)) == T0 + EPOCH + ms(25)


def test_a_wake_up_asked_for_past_the_epochs_end_comes_forward_to_it() -> None:
    clock = learned((3, T0), (3, T0 + ms(25)))

    # The last to begin wakes at its own end, not 50 ms later: it would lag the others.
    assert clock.wake(3, T0 + ms(25), T0 + EPOCH + ms(70)) == T0 + EPOCH + ms(25)
    assert clock.wake(3, T0, T0 + EPOCH + ms(70)) == T0 + EPOCH + ms(25)


def test_partitions_a_whole_epoch_apart_do_not_wait_for_each_other() -> None:
    clock = learned((3, T0), (4, T0 + EPOCH))

    assert clock.wake(3, T0, T0 + EPOCH) == T0 + EPOCH
    assert clock.wake(4, T0 + EPOCH, T0 + 2 * EPOCH) == T0 + 2 * EPOCH


def test_epochs_more_than_two_behind_the_newest_are_forgotten() -> None:
    clock = learned(*((epoch, T0 + epoch * EPOCH) for epoch in range(3, 50)))

    assert sorted(clock._latest) == [47, 48, 49]


def test_once_every_partition_has_begun_an_epoch_the_lag_is_how_far_apart_they_did() -> None:
    clock = EpochClock(EPOCH)
    for _ in range(3):
        clock.began(0, T0)
    clock.began(1, T0 + EPOCH)
    clock.began(1, T0 + EPOCH + ms(4))
    assert clock.lag is None  # the third has not begun it yet

    clock.began(1, T0 + EPOCH + ms(30))

    assert clock.lag == ms(30)
    assert REGISTRY.get_sample_value("controller_input_epoch_lag_seconds") == 0.030


def test_a_partition_kept_waiting_after_its_last_epoch_ends_the_next_that_much_later() -> None:
    clock = learned((3, T0))

    assert clock.wake(3, T0, T0 + EPOCH, behind=ms(300)) == T0 + EPOCH + ms(300)


class FakeTime:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = T0
        monkeypatch.setattr(sources, "_now", lambda: self.now)


def test_a_partition_measures_how_long_its_epochs_end_kept_it_from_its_next_poll(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    time = FakeTime(monkeypatch)
    timer = sources._EpochTimer(EpochClock(EPOCH))
    time.now = T0 + EPOCH + ms(2)
    timer.ended()  # not polled in this wake-up: the epoch began now
    time.now += ms(700)  # not polled until the others ended the epoch too
    timer.polling()  # the first poll of the new epoch, 3 ms long
    time.now += ms(3)

    wake = timer.wake(time.now + ms(10))

    assert wake == time.now + ms(10)
    assert timer.wake(T0 + 2 * EPOCH) == T0 + 2 * EPOCH + ms(2) + ms(700)


def test_an_epoch_ended_in_a_wake_up_that_polled_began_when_the_poll_did(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    time = FakeTime(monkeypatch)
    clock = EpochClock(EPOCH)
    timer = sources._EpochTimer(clock)
    time.now = T0 + EPOCH
    timer.polling()
    time.now += ms(3)  # the poll
    timer.wake(None)
    timer.ended()

    assert clock._latest[1] == T0 + EPOCH
