"""``EpochClock``: the input partitions of a process end each epoch together.

Bytewax 0.21.1 times each input partition's epochs on its own and stops reading a
partition that ended an epoch until all have; a partition that ends its epochs
later than the others drags them all (``dataflow.adapters.sources``). The flow
tier runs the same clock under Bytewax (``tests/flow/test_epochs.py``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prometheus_client import REGISTRY

from dataflow.adapters.sources import HOLD_MARGIN, EpochClock

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
EPOCH = timedelta(seconds=5)


def ms(value: float) -> timedelta:
    return timedelta(milliseconds=value)


def learned(*starts: tuple[int, datetime]) -> EpochClock:
    """A clock that has seen one partition end two 5 s epochs, then the given epoch starts."""
    clock = EpochClock()
    clock.began(1, T0 - 2 * EPOCH)
    clock.began(2, T0 - EPOCH, previous=T0 - 2 * EPOCH)
    for epoch, at in starts:
        clock.began(epoch, at)
    return clock


def test_until_it_has_seen_an_epoch_the_clock_leaves_every_wake_up_as_asked() -> None:
    clock = EpochClock()
    clock.began(0, T0)
    clock.began(0, T0 + ms(300))

    assert clock.interval is None
    assert clock.wake(0, T0, T0 + EPOCH) == T0 + EPOCH


def test_the_interval_is_the_shortest_time_between_two_epoch_ends_of_a_partition() -> None:
    clock = EpochClock()
    clock.began(1, T0)
    clock.began(2, T0 + EPOCH + ms(40), previous=T0)
    clock.began(3, T0 + 2 * EPOCH + ms(42), previous=T0 + EPOCH + ms(40))

    assert clock.interval == EPOCH + ms(2)


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
    clock = EpochClock()
    for _ in range(3):
        clock.began(0, T0)
    clock.began(1, T0 + EPOCH)
    clock.began(1, T0 + EPOCH + ms(4))
    assert clock.lag is None  # the third has not begun it yet

    clock.began(1, T0 + EPOCH + ms(30))

    assert clock.lag == ms(30)
    assert REGISTRY.get_sample_value("controller_input_epoch_lag_seconds") == 0.030
