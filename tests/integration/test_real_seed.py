"""The seed's loop, small: this controller drives the port's Flink factory and inference engine.

The PyFlink port's ``ModelFactoryJob`` and ``InferenceJob`` (built by
``tests/seed`` from ``../shared/vendor/flink-rtcef``, run in Flink's local
MiniCluster) get the maritime sample as their JSON lines. First an OPTIMIZE
arrives before the factory has any data set: it refuses ``opt_initialise`` and
the round must end at once, playing the model the engine had. Then their
Observer's first OPTIMIZE instruction is handed to the controller, verbatim,
once the factory has a data set to lock (their Observer writes to a topic the
controller does not read here, so that only the test's rounds run): an OPTIMIZE
round with a budget of 2. The factory must answer every command, the
controller must finalise with the best step and play the model the factory
made, and the engine must resume and swap to that model's file, then score on
with it. Deterministic by construction: the same records are fed before the
instruction and after the play, so the engine's automaton is in the same state
at the swap on every run (see "Their engine's swap" in the README).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.kafka.client import produce
from tests.rtcef.traffic import DEAD_LETTERS, wait_until
from tests.seed import loop, services

pytestmark = pytest.mark.integration

BUDGET = 2
#: Records fed before the instruction, then after the play.
BEFORE, AFTER = 3000, 300
INSTRUCTIONS = "smoke_instructions"
CHECKED = ("id", "train_id", "optimisation_id", "type", "timestamp", "best_i")


def test_this_controller_runs_an_optimize_round_of_the_seeds_factory_and_engine_plays_its_model(
    tmp_path: Path,
) -> None:
    prepared = loop.prepare(tmp_path)
    options = loop.Options(budget=BUDGET, report_timeout_s=120.0, min_gap=0)
    topics = {"INSTRUCTION_TOPIC": INSTRUCTIONS}
    with loop.started(prepared, tmp_path / "run", "ours", options, None, topics) as running:
        tap = running.tap

        # Before any data set: their factory refuses opt_initialise, the round ends at once.
        early = {"id": 0, "timestamp": prepared.data.infer_first_timestamp - 1,
                 "instruction_type": "optimize", "model_id": "dynamic_v0",
                 "instruction": "optimize"}  # fmt: skip
        produce(running.bootstrap, INSTRUCTIONS, [json.dumps(early).encode()])

        def plays() -> int:
            return sum(r.value.get("type") == "play" for r in tap.of(services.Topics.sync))

        wait_until(lambda: plays() == 1, 120, "the refused round's play", check=running.check)
        sent = services.feed(running.bootstrap, prepared.data.infer, limit=BEFORE)
        assert sent == BEFORE

        def ready() -> bool:
            optimize = [r for r in tap.of(services.Topics.instructions)
                        if r.value.get("instruction_type") == "optimize"]  # fmt: skip
            return (
                bool(optimize)
                and tap.count(services.Topics.assembly) > 0
                and (records_scored(running) >= BEFORE - 10)
            )

        wait_until(ready, 180, "an OPTIMIZE from their Observer, a data set, the records scored",
                   check=running.check)  # fmt: skip
        instruction = next(r.value for r in tap.of(services.Topics.instructions)
                           if r.value.get("instruction_type") == "optimize")  # fmt: skip
        produce(running.bootstrap, INSTRUCTIONS, [json.dumps(instruction).encode()])

        wait_until(lambda: plays() == 2, 300, "the round's play", check=running.check)
        services.feed(running.bootstrap, prepared.data.infer, skip=BEFORE, limit=AFTER)
        swapped = re.compile(r"Engine swapped successfully\.")

        def swapped_and_scored() -> bool:
            scored = records_scored(running) >= BEFORE + AFTER - 10
            return bool(swapped.search(inference_log(running))) and scored

        wait_until(swapped_and_scored, 120, "the engine to swap and score on",
                   check=running.check)  # fmt: skip
        time.sleep(3)  # anything late (a duplicate, a dead letter) would show now
        running.check()
        commands, reports, syncs, dead = traffic(running)
        engine_log = inference_log(running)

    ts, early_ts = instruction["timestamp"], early["timestamp"]
    assert reports[:2] == [
        {"reply_id": "cmd-0", "status": "error", "error": "No dataset available to lock"},
        {"reply_id": "cmd-1", "status": "error", "error": "No optimization session active"},
    ]
    steps = [r for r in reports if r["reply_id"] in ("cmd-3", "cmd-4")]
    assert [r["status"] for r in steps] == ["success", "success"], reports
    scores = [json.loads(r["metrics"])["f_val"] for r in steps]
    best_i = scores.index(min(scores))
    assert [{k: c[k] for k in CHECKED} for c in commands] == [
        command("cmd-0", "opt_initialise", early_ts),
        command("cmd-1", "opt_step", early_ts),
        command("cmd-2", "opt_initialise", ts, optimisation_id=1),
        command("cmd-3", "opt_step", ts, optimisation_id=1),
        command("cmd-4", "opt_step", ts, optimisation_id=1),
        command("cmd-5", "opt_finalise", ts, optimisation_id=1, best_i=best_i),
    ]
    assert [json.loads(c["params"])["params"] is None for c in commands] == [
        True, False, True, False, False, True
    ]  # fmt: skip
    final = [r for r in reports if r["reply_id"] == "cmd-5"]
    assert [r["status"] for r in final] == ["success"], reports
    model_id, model_path = final[0]["model_id"], final[0]["model_path"]
    assert json.loads(final[0]["params_dict"]) == json.loads(steps[best_i]["params_dict"])
    assert syncs == [
        {"type": "pause", "timestamp": early_ts, "model_id": -1},
        {"type": "play", "timestamp": early_ts, "model_id": -1},  # the model it had
        {"type": "pause", "timestamp": ts, "model_id": -1},
        {"type": "play", "timestamp": ts, "model_id": model_id},
    ]
    assert [d["dlq-reason"] for d in dead] == ["report 'cmd-1': stale (its round is over)"]
    assert tap.undecodable == []
    # The engine: told to pause, then to play, swapped to the model we named. (No record
    # reached it in between, so it never logs that it paused: it applies the latest sync
    # at its next record, which is our play's.)
    in_order = [
        "Broadcast: PLAY received - resuming with model_id=-1",
        "Broadcast: PAUSE received",
        f"Broadcast: PLAY received - resuming with model_id={model_id}",
        f"Scheduling model swap to {model_path}",
        f"Loading model from: {model_path}",
        "Engine swapped successfully.",
    ]
    at = 0
    for text in in_order:
        found = engine_log.find(text, at)
        assert found >= 0, f"the engine's log has no {text!r} after offset {at}"
        at = found
    assert "NoSuchElementException" not in engine_log
    assert "to FAILED" not in engine_log


def inference_log(running: loop.Running) -> str:
    """What their inference job (engine, Collector, Observer) has logged so far."""
    return (running.jobs.folder.root / "logs" / "inference.out").read_text(errors="replace")


def records_scored(running: loop.Running) -> int:
    """How many records their engine has scored (its heartbeat's count)."""
    counts = [int(m[1]) for m in loop.HEARTBEAT.finditer(inference_log(running))]
    return max(counts, default=0)


Values = list[dict[str, Any]]


def traffic(running: loop.Running) -> tuple[Values, Values, Values, Values]:
    """The commands, reports, syncs and dead letters on the topics, in order."""
    tap = running.tap
    dead = [r.value for r in tap.of(DEAD_LETTERS)] + list(tap.dead_letters)
    return ([r.value for r in tap.of(services.Topics.commands)],
            [r.value for r in tap.of(services.Topics.reports)],
            [r.value for r in tap.of(services.Topics.sync)], dead)  # fmt: skip


def command(
    id_: str, type_: str, ts: int, *, optimisation_id: int = 0, best_i: int = -1
) -> dict[str, Any]:
    return {"id": id_, "train_id": -1, "optimisation_id": optimisation_id, "type": type_,
            "timestamp": ts, "best_i": best_i}  # fmt: skip


def test_this_controller_crashed_mid_train_mid_optimize_and_after_a_finalise_acts_once_on_them(
    tmp_path: Path,
) -> None:
    """Their factory and engine, this controller SIGKILLed at the shipped ``-s 5``.

    Right after a ``train``, after an ``opt_step`` and right after the ``opt_finalise``,
    restarted each time on its recovery store: their factory answers each command once
    (a repeated ``train`` would build another model, a repeated finalise would be
    refused), the engine gets each sync once and swaps to the models the plays name.
    """
    prepared = loop.prepare(tmp_path)
    options = loop.Options(budget=BUDGET, report_timeout_s=120.0, min_gap=0)
    topics = {"INSTRUCTION_TOPIC": INSTRUCTIONS}
    with loop.started(prepared, tmp_path / "run", "ours", options, None, topics) as running:
        tap = running.tap
        controller = running.jobs.stack

        def count(topic: str, **fields: str) -> int:
            return sum(all(r.value.get(k) == v for k, v in fields.items())
                       for r in tap.of(topic))  # fmt: skip

        def crash_after(condition: Callable[[], bool], what: str, delay_s: float) -> None:
            wait_until(condition, 300, what, check=running.check)
            time.sleep(delay_s)
            controller.crash_controller()

        # As the smoke test: the same records scored before the rounds, the swap after them.
        services.feed(running.bootstrap, prepared.data.infer, limit=BEFORE)
        wait_until(lambda: tap.count(services.Topics.assembly) > 0
                   and records_scored(running) >= BEFORE - 10,
                   180, "a data set, the records scored", check=running.check)  # fmt: skip
        ts = prepared.data.infer_first_timestamp + 1
        for number, kind in enumerate(("retrain", "optimize")):
            instruction = {"id": number, "timestamp": ts, "instruction_type": kind,
                           "model_id": "dynamic_v0", "instruction": kind}  # fmt: skip
            produce(running.bootstrap, INSTRUCTIONS, [json.dumps(instruction).encode()])
            if kind == "retrain":
                crash_after(lambda: count(services.Topics.commands, type="train") == 1,
                            "the train", 0.1)  # fmt: skip
            else:
                crash_after(lambda: count(services.Topics.commands, type="opt_step") == 1,
                            "a step", 0.5)  # fmt: skip
                crash_after(lambda: count(services.Topics.commands, type="opt_finalise") == 1,
                            "the finalise", 0.23)  # fmt: skip
            wait_until(lambda n=number: count(services.Topics.sync, type="play") == n + 1, 300,
                       f"the play of round {number + 1}", check=running.check)  # fmt: skip
        services.feed(running.bootstrap, prepared.data.infer, skip=BEFORE, limit=AFTER)
        final = next(r.value for r in tap.of(services.Topics.reports)
                     if r.value.get("reply_id") == "cmd-4")  # fmt: skip
        swap = f"Scheduling model swap to {final['model_path']}"
        wait_until(lambda: swap in inference_log(running)
                   and records_scored(running) >= BEFORE + AFTER - 10, 120,
                   "the engine to swap and score on", check=running.check)  # fmt: skip
        time.sleep(6)  # a late copy of anything would be on the topics by now
        running.check()
        commands, reports, syncs, dead = traffic(running)
        engine_log = inference_log(running)

    assert [(c["id"], c["type"]) for c in commands] == [
        ("cmd-0", "train"), ("cmd-1", "opt_initialise"), ("cmd-2", "opt_step"),
        ("cmd-3", "opt_step"), ("cmd-4", "opt_finalise"),
    ]  # fmt: skip
    # Their factory answered each command once, successfully: one model per train and
    # finalise (and one per step), none built twice.
    answered = [(r["reply_id"], r["status"]) for r in reports]
    assert answered == [(f"cmd-{n}", "success") for n in (0, 2, 3, 4)], reports
    built = {r["reply_id"]: (r["model_id"], r.get("model_path")) for r in reports}
    assert [r["model_id"] for r in reports] == list(range(4))
    assert syncs == [
        {"type": "pause", "timestamp": ts, "model_id": -1},
        {"type": "play", "timestamp": ts, "model_id": built["cmd-0"][0]},
        {"type": "pause", "timestamp": ts, "model_id": -1},
        {"type": "play", "timestamp": ts, "model_id": built["cmd-4"][0]},
    ]
    assert dead == []
    # The engine read each sync once, and swapped to the finalised model.
    plays = [line for line in engine_log.splitlines() if "Broadcast: PLAY received" in line]
    assert [p.rsplit("model_id=", 1)[1] for p in plays] == [
        str(built["cmd-0"][0]), str(built["cmd-4"][0])
    ]  # fmt: skip
    assert engine_log.count("Broadcast: PAUSE received") == 2
