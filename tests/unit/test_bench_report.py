"""Benchmark bookkeeping: a rerun section replaces its own; the finalised step is truly scored."""

from __future__ import annotations

from dataflow.domain import dialects
from tests.bench import optimiser
from tests.bench.bench import merged


def test_a_rerun_section_replaces_the_one_of_its_number_in_order_with_a_note() -> None:
    results = "# R\n\nhead\n\n### 1. a\n\nx\n\n### 3. old\n\nold\n\n### 2. b\n\ny\n"

    out = merged(results, ["### 3. new\n\nnew\n"], "today, commit abc")

    note = "Rerun alone (`just bench --only ... --update`): today, commit abc\n"
    assert out == "# R\n\nhead\n\n### 1. a\n\nx\n\n### 2. b\n\ny\n\n### 3. new\n\nnew\n\n" + note


def test_the_finalised_step_is_the_lowest_reported_one_scored_by_its_true_value() -> None:
    profile = dialects.PROFILES["seed"]
    truth = {0.01: -0.5, 0.02: -0.9, 0.03: -0.7}

    def score(params: tuple[tuple[str, float], ...]) -> float:
        return truth[dict(params)["pMin"]]

    trial = optimiser.Trial(0, lambda: score, score)
    # Reported (noisy) scores rank 0.03 best after the third step, though 0.02 is truly better.
    steps = [((0.01, 0.0), -0.4), ((0.02, 0.0), -0.6), ((0.03, 0.0), -0.8)]

    assert optimiser._finalised(profile, trial, steps) == [-0.5, -0.9, -0.7]


def test_at_equal_seconds_a_round_stops_before_its_steps_and_finalise_would_pass_them() -> None:
    from tests.bench import costs

    # (point, reported score, seconds): the finalise builds the best step again.
    steps = [((1,), -0.5, 10.0), ((2,), -0.7, 20.0), ((3,), -0.6, 5.0), ((4,), -0.9, 30.0)]

    assert costs.cut(steps, 50.0) == steps[:2]  # 10 + 20 + 20 (the best built again)
    assert costs.cut(steps, 55.0) == steps[:3]  # 35 + 20
    assert costs.cut(steps, 5.0) == steps[:1]  # a round always takes its first step


def test_recorded_step_costs_are_exact_where_recorded_and_log_interpolated_between(
    tmp_path,
) -> None:
    import json
    import math

    from dataflow.sim.surfaces import recorded_costs

    profile = dialects.PROFILES["seed"]
    path = tmp_path / "step_costs.jsonl"
    rows = [{"params": {"pMin": 0.001, "gamma": 0.0}, "f_val": -0.5, "seconds": 2.0},
            {"params": {"pMin": 0.1, "gamma": 0.0}, "f_val": -0.6, "seconds": 8.0},
            {"params": {"order": 3}, "f_val": -0.1, "seconds": 99.0}]  # fmt: skip
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))

    cost = recorded_costs(profile, [path], neighbours=2)

    assert cost((("pMin", 0.001), ("gamma", 0.0))) == 2.0
    assert math.isclose(cost((("pMin", 0.0505), ("gamma", 0.0))), 4.0)  # the geometric mean
