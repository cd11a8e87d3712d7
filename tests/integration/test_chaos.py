"""Crash at the worst moments: recorded runs killed and restarted reach the services once.

Each test replays a recorded RTCEF run through the real broker (see
``tests/integration/chaos.py``) while the controller, at the shipped snapshot
interval, is SIGKILLed at least five times: right after its first command (before
any snapshot), right after a resend, right after a finalise, right after the
abort of the last round, and at random moments, with restart delays of 0-3 s.
The factory and the engine act on every copy they read and count them: every
command id, sync message and deadline marker must arrive once, and the commands
and plays must be those of the run without a crash. ``just chaos`` runs all 21
recorded runs the same way.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.chaos import ChaosResult, run_card
from tests.support import RECORDINGS

pytestmark = pytest.mark.integration

#: Five recorded runs (train-only, short and long optimising runs), each with its own seed.
RUNS = {"month_14": 11, "month_3": 12, "month_5": 13, "month_0": 14, "month_19": 15}


def assert_exactly_once(result: ChaosResult, kills: int) -> None:
    assert result.problems == []
    assert result.completed
    assert len(result.kills) >= kills
    assert result.first_kill_before_snapshot
    moments = {moment for moment, _ in result.kills}
    assert {"first command", "resend", "abort"} <= moments, result.kills
    assert (result.duplicates, result.two_payloads) == ({}, {})
    assert (result.matches_reference, result.matches_recording, result.plays_match) == (
        True, True, True,
    )  # fmt: skip
    assert result.resends >= 2  # the ignored command's, and the aborted one's
    assert result.withheld > 0  # the restarts did emit copies: the outbox kept them back


@pytest.mark.parametrize(("run", "seed"), list(RUNS.items()))
def test_a_recorded_run_killed_at_its_worst_moments_reaches_the_services_exactly_once(
    run: str, seed: int, kafka_bootstrap: str, tmp_path: Path
) -> None:
    result = run_card(RECORDINGS / run, kafka_bootstrap, tmp_path, seed=seed, kills=5)

    assert_exactly_once(result, 5)
    if run != "month_14":  # the only run with no OPTIMIZE round
        assert "finalise" in {moment for moment, _ in result.kills}


def test_a_recorded_run_on_two_workers_killed_five_times_reaches_the_services_exactly_once(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    result = run_card(RECORDINGS / "month_1", kafka_bootstrap, tmp_path, seed=21, kills=5,
                      workers=2)  # fmt: skip

    assert_exactly_once(result, 5)


def test_a_two_process_cluster_losing_a_pod_five_times_reaches_the_services_exactly_once(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    result = run_card(RECORDINGS / "month_13", kafka_bootstrap, tmp_path, seed=22, kills=5,
                      processes=2)  # fmt: skip

    assert_exactly_once(result, 5)
