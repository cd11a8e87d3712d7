"""Crash at any moment, replay in any order: recorded runs survive seeded random SIGKILLs.

Each test replays a recorded RTCEF run through the real broker (see
``tests/integration/chaos.py``) while the controller is killed at least three
times, the first before any snapshot, with restart delays of 0-3 s. `just chaos`
runs all 21 recorded runs the same way.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.chaos import run_card
from tests.support import RECORDINGS

pytestmark = pytest.mark.integration

#: Five recorded runs (train-only, short and long optimising runs), each with its own seed.
RUNS = {"month_14": 11, "month_3": 12, "month_5": 13, "month_0": 14, "month_19": 15}


@pytest.mark.parametrize(("run", "seed"), list(RUNS.items()))
def test_a_recorded_run_killed_three_times_sends_the_recorded_commands_and_plays(
    run: str, seed: int, kafka_bootstrap: str, tmp_path: Path
) -> None:
    result = run_card(RECORDINGS / run, kafka_bootstrap, tmp_path, seed=seed, kills=3)

    assert result.problems == []
    assert result.completed
    assert len(result.kills) == 3
    assert (result.two_payloads, result.commands_match, result.plays_match) == ({}, True, True)
    assert result.rounds == result.rounds_expected


def test_a_recorded_run_on_two_workers_killed_four_times_sends_the_recorded_commands(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    result = run_card(RECORDINGS / "month_1", kafka_bootstrap, tmp_path, seed=21, kills=4,
                      workers=2)  # fmt: skip

    assert result.problems == []
    assert len(result.kills) == 4
    assert (result.two_payloads, result.commands_match, result.plays_match) == ({}, True, True)
