"""Re-scoring a loop's models on fixed data: which models, which records, which figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.rtcef import rescore, stack
from tests.rtcef.rescore import Model, Round, Scored

BEGUN = 1454308261


def params(order: int, confidence: float, wrapped: bool = False) -> str:
    inner = {"order": order, "confidence": confidence, "pmin": 0.001, "gamma": 0.001}
    return json.dumps({"params": inner} if wrapped else inner)


def metrics(f_val: float) -> str:
    return json.dumps({"tp": 1.0, "tn": 1.0, "fp": 0.0, "fn": 0.0, "mcc": -f_val, "f_val": f_val})


def command(id_: int, kind: str, optimisation_id: int = -1, best_i: int = -1,
            timestamp: int = BEGUN) -> dict[str, Any]:  # fmt: skip
    return {"train_id": -1, "optimisation_id": optimisation_id, "id": id_, "timestamp": timestamp,
            "type": kind, "params": '{"params": null}', "best_i": best_i}  # fmt: skip


def report(reply_id: int, model_id: int, params_dict: str, metric: str = "") -> dict[str, Any]:
    return {"reply_id": reply_id, "params_dict": params_dict, "model_id": model_id,
            "metrics": metric}  # fmt: skip


def write_run(run_dir: Path, commands: list[dict[str, Any]], reports: list[dict[str, Any]]) -> Path:
    traffic = run_dir / "traffic"
    traffic.mkdir(parents=True)
    for name, values in (("factory_commands", commands), ("factory_reports", reports)):
        (traffic / f"{name}.jsonl").write_text("".join(json.dumps(v) + "\n" for v in values))
    return run_dir


def test_each_finalised_round_gives_its_steps_models_and_the_model_built_at_finalise(
    tmp_path: Path,
) -> None:
    run = write_run(
        tmp_path / "ours-3",
        [
            command(0, "train") | {"train_id": 0},
            command(1, "opt_initialise", 0),
            command(2, "opt_step", 0),
            command(3, "opt_step", 0),
            command(4, "opt_finalise", 0, best_i=1),
            command(5, "opt_initialise", 1, timestamp=BEGUN + 2 * rescore.WEEK),
            command(6, "opt_step", 1, timestamp=BEGUN + 2 * rescore.WEEK),
            command(7, "opt_finalise", 1, best_i=0, timestamp=BEGUN + 2 * rescore.WEEK),
            command(8, "opt_initialise", 2),  # never finalised: the run ended first
            command(9, "opt_step", 2),
        ],
        [
            report(0, 0, params(4, 0.11, wrapped=True)),
            report(2, 1, params(3, 0.15), metrics(-0.66)),
            report(3, 2, params(5, 0.37), metrics(-0.72)),
            report(4, 3, params(5, 0.37)),  # the finalise report: the step's parameters
            report(6, 4, params(2, 0.5, wrapped=True), metrics(-0.6)),
            report(7, 5, params(2, 0.5, wrapped=True)),
            report(9, 6, params(1, 0.9), metrics(-0.1)),
        ],
    )
    models = run / "models"

    assert rescore.rounds_of(run, "ours-3-b78") == [
        Round("ours-3-b78", 0, BEGUN,
              (Model(1, models / "wayeb_1.model", 0.15, -0.66),
               Model(2, models / "wayeb_2.model", 0.37, -0.72)),
              1, Model(3, models / "wayeb_3.model", 0.37, -0.72)),
        Round("ours-3-b78", 1, BEGUN + 2 * rescore.WEEK,
              (Model(4, models / "wayeb_4.model", 0.5, -0.6),),
              0, Model(5, models / "wayeb_5.model", 0.5, -0.6)),
    ]  # fmt: skip


def test_best_i_counts_unanswered_steps_and_may_not_name_one(tmp_path: Path) -> None:
    commands = [
        command(1, "opt_initialise", 0),
        command(2, "opt_step", 0),  # its report was never recorded
        command(3, "opt_step", 0),
        command(4, "opt_finalise", 0, best_i=1),
    ]
    reports = [
        report(3, 2, params(5, 0.37), metrics(-0.72)),
        report(4, 3, params(5, 0.37)),
    ]
    run = write_run(tmp_path / "original-2", commands, reports)
    models = run / "models"

    assert rescore.rounds_of(run) == [
        Round("original-2", 0, BEGUN, (Model(2, models / "wayeb_2.model", 0.37, -0.72),), 1,
              Model(3, models / "wayeb_3.model", 0.37, -0.72)),
    ]  # fmt: skip
    commands[-1] = command(4, "opt_finalise", 0, best_i=0)
    other = write_run(tmp_path / "original-3", commands, reports)
    with pytest.raises(stack.StackError, match="names step 0, of which no report was recorded"):
        rescore.rounds_of(other)


def test_runs_are_grouped_by_name_less_the_seed() -> None:
    def group(run: str) -> str:
        model = Model(1, Path("m"), 0.5, None)
        return Round(run, 0, BEGUN, (), 0, model).group

    names = ("ours-3-b78", "original-12-six", "ours-3", "ours", "ours-x-b78")
    assert [group(n) for n in names] == ["ours-b78", "original-six", "ours", "ours", "ours-x-b78"]


def test_a_window_holds_the_records_after_the_round_began_for_its_weeks(tmp_path: Path) -> None:
    stamps = [BEGUN - 60, BEGUN, BEGUN + 60, BEGUN + rescore.WEEK, BEGUN + rescore.WEEK + 60]
    stream = tmp_path / "stream.json"
    stream.write_text("".join(json.dumps({"timestamp": t, "speed": 1.0}) + "\n" for t in stamps))
    out = tmp_path / "window.json"

    assert rescore.write_window(stream, BEGUN, 1, out) == 2
    assert out.read_text().splitlines() == [
        json.dumps({"timestamp": BEGUN + 60, "speed": 1.0}),
        json.dumps({"timestamp": BEGUN + rescore.WEEK, "speed": 1.0}),
    ]


def test_mcc_is_matthews_and_zero_when_a_margin_is_empty() -> None:
    assert rescore.mcc(452, 4692, 357, 63) == 0.663453226512922  # a factory report's own
    assert rescore.mcc(0, 5416, 0, 515) == 0.0  # never forecasts: no positive margin
    assert rescore.mcc(515, 0, 5416, 0) == 0.0  # always forecasts
    assert rescore.mcc(10, 10, 0, 0) == 1.0


def scored(run: str, begun: int, f_val: float | None, window_mcc: float,
           steps: tuple[float, ...] | None = None) -> Scored:  # fmt: skip
    model = Model(1, Path("m"), 0.5, f_val)
    return Scored(Round(run, 0, begun, (model,), 0, model), 100, window_mcc, steps)


def test_the_report_gives_a_row_per_round_then_medians_per_group_overall_and_per_start() -> None:
    text = rescore.report(
        [
            scored("ours-1-b78", BEGUN, -0.70, 0.71),
            scored("ours-2-b78", BEGUN, -0.74, 0.73),
            scored("ours-3-b78", BEGUN + rescore.WEEK, -0.80, 0.60),
            scored("ours-3-b88", BEGUN, -0.50, 0.50, steps=(0.50, 0.52)),
            scored("original-1-six", BEGUN, None, 0.72),
        ],
        "4 weeks",
    )
    head, summary_text = text.split("Medians over rounds")
    assert head.splitlines()[2:] == [
        "| ours-1-b78 | 0 | 1454308261 | 100 | 1 | -0.7000 | 0.7100 | - |",
        "| ours-2-b78 | 0 | 1454308261 | 100 | 1 | -0.7400 | 0.7300 | - |",
        "| ours-3-b78 | 0 | 1454913061 | 100 | 1 | -0.8000 | 0.6000 | - |",
        "| ours-3-b88 | 0 | 1454308261 | 100 | 1 | -0.5000 | 0.5000 | 0.5200 |",
        "| original-1-six | 0 | 1454308261 | 100 | 1 | - | 0.7200 | - |",
        "",
    ]
    summary = summary_text.splitlines()
    separator = summary.index("|---|---|---|---|---|")
    rows = summary[separator + 1 : summary.index("", separator)]

    assert rows == [
        "| all | original-six | 1 | - | 0.7200 |",
        "| all | ours-b78 | 3 | -0.7400 | 0.7100 |",
        "| all | ours-b88 | 1 | -0.5000 | 0.5000 |",
        f"| begun at {BEGUN} | original-six | 1 | - | 0.7200 |",
        f"| begun at {BEGUN} | ours-b78 | 2 | -0.7200 | 0.7200 |",
        f"| begun at {BEGUN} | ours-b88 | 1 | -0.5000 | 0.5000 |",
        f"| begun at {BEGUN + rescore.WEEK} | ours-b78 | 1 | -0.8000 | 0.6000 |",
    ]
    assert summary[summary.index("", separator) + 1 :] == [
        # f_vals -0.80, -0.74, -0.70, -0.50 rank 1-4; their MCCs rank 2, 4, 3, 1
        "Rank correlation of the factory's f_val with the window's MCC, over 4 rounds: "
        "Spearman -0.40.",
        "Finalised models' window MCC, original-six (1) against ours-b78 (3): "
        "Mann-Whitney two-sided p = 1.00.",
        "Finalised models' window MCC, original-six (1) against ours-b88 (1): "
        "Mann-Whitney two-sided p = 1.00.",
        "Finalised models' window MCC, ours-b78 (3) against ours-b88 (1): "
        "Mann-Whitney two-sided p = 0.50.",
    ]
