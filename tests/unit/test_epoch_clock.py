"""``EpochClock``: the input partitions end each epoch together, in a process and across.

Bytewax 0.21.1 times each input partition's epochs on its own and stops reading a
partition that ended an epoch until all have; a partition that ends its epochs
later than the others drags them all (``dataflow.adapters.sources``). The flow
tier runs the same clock under Bytewax (``tests/flow/test_epochs.py``).

``T0`` is 1 s past a point of the wall-clock grid (``GRID``): epochs that begin
there end far from the grid, so the process's own alignment shows alone.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prometheus_client import REGISTRY

from dataflow.adapters.sources import GRID_SLACK, HOLD_MARGIN, EpochClock

EPOCH = timedelta(seconds=5)
GRID = EPOCH + GRID_SLACK
#: A point of the grid, in 2026.
POINT = datetime(1970, 1, 1, tzinfo=UTC) + 354_000 * GRID
T0 = POINT + timedelta(seconds=1)


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


def test_an_epoch_that_ends_within_the_slack_before_a_grid_point_ends_on_it() -> None:
    clock = learned((3, POINT + ms(2)))

    assert clock.wake(3, POINT + ms(2), POINT + EPOCH) == POINT + GRID


def test_an_epoch_that_ends_just_short_of_a_grid_point_steps_onto_it_at_once() -> None:
    began = POINT + GRID_SLACK - ms(400)  # ends 400 ms before the next point

    assert learned((3, began)).wake(3, began, began + EPOCH) == POINT + GRID


def test_an_epoch_off_the_grid_reaches_it_by_the_slack_each_epoch_and_stays() -> None:
    clock = EpochClock(EPOCH)
    began, jitter = POINT + ms(130), ms(1)  # 130 ms past a point: off the grid
    clock.began(0, began)
    ends = []
    for epoch in range(12):
        began = clock.wake(epoch, began, began + EPOCH) + jitter
        clock.began(epoch + 1, began)
        ends.append(began - jitter)

    grid = [POINT + n * GRID for n in range(1, 13)]
    # Each end is an interval after the last (1 ms late): 19 ms closer to the grid ...
    assert ends[:6] == [grid[n] + ms(110 - 19 * n) for n in range(6)]
    # ... until within the slack: from then on every epoch ends on a grid point.
    assert ends[6:] == grid[6:]


def test_two_processes_started_apart_end_their_epochs_on_the_same_grid_points() -> None:
    ends: list[list[datetime]] = []
    for start in (POINT + ms(37), POINT + ms(90)):  # two processes, two clocks
        clock, began = EpochClock(EPOCH), start
        clock.began(0, began)
        ends.append([])
        for epoch in range(10):
            began = clock.wake(epoch, began, began + EPOCH)
            clock.began(epoch + 1, began)
            ends[-1].append(began)

    assert ends[0][-4:] == ends[1][-4:] == [POINT + n * GRID for n in range(7, 11)]
