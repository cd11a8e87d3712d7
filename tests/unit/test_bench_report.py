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
