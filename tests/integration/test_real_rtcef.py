"""The real loop, small: this controller drives the original factory, engine and collector.

It also crashes at its worst moments without the services ever seeing a copy.

The original RTCEF services (``../shared/vendor/rtcef``, their Python 3.9
environment and Wayeb compiled by ``tests/rtcef``) run against a broker on
``localhost:9092``, the real maritime sample is replayed, and instructions are
sent as the original Observer writes them: one RETRAIN, then one OPTIMIZE with a
budget of 3. The engine must end up scoring with the model each ``play`` named,
every message we wrote must decode with the original schemas, and the real
services must log no error.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.kafka.client import read_messages
from tests.rtcef import loop
from tests.rtcef.stack import BOOTSTRAP, Stack
from tests.rtcef.traffic import Record, Tap, decode, produce, wait_until

pytestmark = pytest.mark.integration

BUDGET = 3
CHECKED = ("id", "train_id", "optimisation_id", "type", "timestamp", "best_i")


def command(number: int, kind: str, timestamp: int, *, train_id: int = -1,
            optimisation_id: int = -1, best_i: int = -1) -> dict[str, Any]:  # fmt: skip
    """The checked fields of a command as the original controller numbers them."""
    return {"id": number, "train_id": train_id, "optimisation_id": optimisation_id,
            "type": kind, "timestamp": timestamp, "best_i": best_i}  # fmt: skip


def newest_dataset_end(run_dir: Path, tap: Tap) -> int:
    """The last timestamp of the factory's newest assembled data set (it checks commands by it).

    The factory deletes a data set's file once it has assembled a newer one: read
    the newest again when the file went away meanwhile.
    """
    for _ in range(20):
        version = tap.of("assembled_datasets")[-1].value["version"]
        path = run_dir / "assembled" / f"assembled_dataset_version_{version}"
        try:
            return int(json.loads(path.read_text().splitlines()[-1])["timestamp"])
        except FileNotFoundError:
            time.sleep(0.5)
    raise AssertionError("the factory's newest data set kept disappearing")


def first_data_set(services: Stack, tap: Tap, run_dir: Path) -> int:
    """Wait for the factory's first data set; its last timestamp (a round's stream time)."""
    wait_until(lambda: tap.count("assembled_datasets") > 0, 240, "the factory's first data set",
               check=lambda: healthy(services, tap))  # fmt: skip
    return newest_dataset_end(run_dir, tap)


def send_instruction(number: int, kind: str, timestamp: int) -> None:
    """An instruction exactly as the original Observer writes it (no key fields)."""
    produce("optimiser_instructions",
            [{"id": number, "timestamp": timestamp, "instruction": kind}], key={})  # fmt: skip


def healthy(services: Stack, tap: Tap) -> None:
    """Fail at once, with the reason, if a service died or the tap stopped reading."""
    services.check_alive()
    tap.check()


def play_for(tap: Tap, count: int, services: Stack) -> Record:
    wait_until(lambda: sum(r.value["type"] == "play" for r in tap.of("engine_sync")) >= count,
               300, f"play number {count}", check=lambda: healthy(services, tap))  # fmt: skip
    return [r for r in tap.of("engine_sync") if r.value["type"] == "play"][count - 1]


def scored_with(tap: Tap, model_id: int, services: Stack) -> Record:
    def found() -> bool:
        return any(r.value["model_version"] == model_id for r in tap.of("model_runtime_scores"))

    wait_until(
        found, 240, f"a score report of model {model_id}", check=lambda: healthy(services, tap)
    )
    return next(r for r in tap.of("model_runtime_scores") if r.value["model_version"] == model_id)


@pytest.mark.timeout(900)  # ~3 min warm; the first run also builds Wayeb and the 3.9 venv
def test_our_controller_drives_the_real_factory_and_engine_through_a_retrain_and_an_optimize(
    tmp_path: Path,
) -> None:
    prepared = loop.prepare(tmp_path)
    run_dir = tmp_path / "ours"

    with loop.services(prepared, run_dir, "ours", BUDGET, observer=False) as (services, tap):
        retrain_at = first_data_set(services, tap, run_dir)
        send_instruction(0, "train", retrain_at)
        first_play = play_for(tap, 1, services)
        first_score = scored_with(tap, first_play.value["model_id"], services)

        optimize_at = max(retrain_at + 1, newest_dataset_end(run_dir, tap))
        send_instruction(1, "optimise", optimize_at)
        second_play = play_for(tap, 2, services)
        second_score = scored_with(tap, second_play.value["model_id"], services)
        errors = loop.service_errors(services)
        keys = raw_keys(tap)

    commands = [r.value for r in tap.of("factory_commands")]
    reports = {r.value["reply_id"]: r.value for r in tap.of("factory_reports")}
    steps = commands[2 : 2 + BUDGET]
    scores = [json.loads(reports[c["id"]]["metrics"])["f_val"] for c in steps]
    expected = [
        command(0, "train", retrain_at, train_id=0),
        command(1, "opt_initialise", optimize_at, optimisation_id=0),
        *[command(2 + i, "opt_step", optimize_at, optimisation_id=0) for i in range(BUDGET)],
        command(2 + BUDGET, "opt_finalise", optimize_at, optimisation_id=0,
                best_i=scores.index(min(scores))),
    ]  # fmt: skip
    assert [{k: c[k] for k in CHECKED} for c in commands] == expected
    assert json.loads(commands[0]["params"]) == {"params": loop.INITIAL_PARAMS}
    assert all(math.isfinite(s) for s in scores)
    syncs = [
        (r.value["type"], r.value["timestamp"], r.value["model_id"]) for r in tap.of("engine_sync")
    ]
    assert syncs == [
        ("pause", retrain_at, -1), ("play", retrain_at, reports[0]["model_id"]),
        ("pause", optimize_at, -1), ("play", optimize_at, reports[2 + BUDGET]["model_id"]),
    ]  # fmt: skip
    # The engine swapped to exactly the models our plays named, and to no other.
    versions = [r.value["model_version"] for r in tap.of("model_runtime_scores")]
    assert [v for i, v in enumerate(versions) if i == 0 or v != versions[i - 1]] == [
        -1, first_play.value["model_id"], second_play.value["model_id"],
    ]  # fmt: skip
    assert first_score.value["model_version"] == first_play.value["model_id"]
    assert second_score.value["model_version"] == second_play.value["model_id"]
    assert first_score.value["creation_method"] == "retrain"
    assert second_score.value["creation_method"] == "optimisation"
    # Everything we wrote decodes with the original schemas, keys too; nothing was refused.
    assert tap.undecodable == []
    assert tap.dead_letters == []
    assert keys == {"factory_commands": len(commands), "engine_sync": 4}
    assert errors == []


def raw_keys(tap: Tap) -> dict[str, int]:
    """How many of our messages' keys decode with the original key schemas, per topic."""
    counted = {}
    for topic in ("factory_commands", "engine_sync"):
        messages = read_messages(BOOTSTRAP, topic, count=tap.count(topic), timeout=30)
        counted[topic] = sum(isinstance(decode(topic, m.key(), "key"), dict) for m in messages)
    return counted


def engine_read(run_dir: Path) -> list[str]:
    """The sync messages the original engine acted on, in order (it prints each one's type)."""
    log = run_dir / "logs" / "wayeb_service.out"
    return [line for line in log.read_text().splitlines() if line in ("pause", "play")]


def crash_after(services: Stack, tap: Tap, topic_has: Callable[[], bool], what: str,
                delay_s: float) -> None:  # fmt: skip
    """SIGKILL the controller ``delay_s`` after ``topic_has()`` holds, and restart it."""
    wait_until(topic_has, 300, what, check=lambda: healthy(services, tap))
    time.sleep(delay_s)
    services.crash_controller()


def commands_of(tap: Tap, kind: str) -> int:
    return sum(r.value["type"] == kind for r in tap.of("factory_commands"))


@pytest.mark.timeout(1200)
def test_our_controller_killed_mid_train_mid_optimize_and_after_a_finalise_acts_on_them_once(
    tmp_path: Path,
) -> None:
    """Crashed right after a ``train``, after an ``opt_step`` and after the ``opt_finalise``.

    At the shipped snapshot interval (``-s 5``), restarted each time on its store: the
    real factory gets each command once and still answers the next round, it registers
    one model per train and finalise, the engine acts on three pauses and three plays, and
    it scores with each model the crashed rounds played.
    """
    prepared = loop.prepare(tmp_path)
    run_dir = tmp_path / "ours"

    with loop.services(prepared, run_dir, "ours", BUDGET, observer=False) as (services, tap):
        first_at = first_data_set(services, tap, run_dir)
        send_instruction(0, "train", first_at)
        crash_after(services, tap, lambda: commands_of(tap, "train") == 1, "the train", 0.1)
        plays = [play_for(tap, 1, services)]
        scored_with(tap, plays[0].value["model_id"], services)

        second_at = max(first_at + 1, newest_dataset_end(run_dir, tap))
        send_instruction(1, "optimise", second_at)
        crash_after(services, tap, lambda: commands_of(tap, "opt_step") == 2, "a step", 0.5)
        crash_after(services, tap, lambda: commands_of(tap, "opt_finalise") == 1,
                    "the finalise", 0.23)  # fmt: skip
        plays.append(play_for(tap, 2, services))
        scored_with(tap, plays[1].value["model_id"], services)

        # The factory's loop is alive, not only its process: it answers the next round.
        third_at = max(second_at + 1, newest_dataset_end(run_dir, tap))
        send_instruction(2, "train", third_at)
        plays.append(play_for(tap, 3, services))
        wait_until(lambda: engine_read(run_dir).count("play") == 3, 240, "the engine's third play",
                   check=lambda: healthy(services, tap))  # fmt: skip
        time.sleep(6)  # a late copy of anything would be on the topics by now
        errors = loop.service_errors(services)

    commands = [r.value for r in tap.of("factory_commands")]
    assert [(c["id"], c["type"]) for c in commands] == [
        (0, "train"), (1, "opt_initialise"),
        *[(2 + i, "opt_step") for i in range(BUDGET)],
        (2 + BUDGET, "opt_finalise"), (3 + BUDGET, "train"),
    ]  # fmt: skip
    syncs = [(r.value["type"], r.value["timestamp"]) for r in tap.of("engine_sync")]
    assert engine_read(run_dir) == ["pause", "play"] * 3  # what the engine acted on
    assert syncs == [("pause", first_at), ("play", first_at), ("pause", second_at),
                     ("play", second_at), ("pause", third_at), ("play", third_at)]  # fmt: skip
    # One model registered per train and finalise, and those are the models played.
    models = [r.value for r in tap.of("model_versions")]
    assert [m["id"] for m in models] == [p.value["model_id"] for p in plays]
    assert [m["creation_method"] for m in models] == ["retrain", "optimisation", "retrain"]
    # The engine swapped to the two models the crashed rounds played, and to no other. It
    # reads syncs only between batches of 10,000 stream records (~80 s here), and the whole
    # stream is in the topic within seconds: the third play may come after its last batch.
    versions = [r.value["model_version"] for r in tap.of("model_runtime_scores")]
    swaps = [v for i, v in enumerate(versions) if i == 0 or v != versions[i - 1]]
    played = [p.value["model_id"] for p in plays]
    assert swaps in ([-1, *played[:2]], [-1, *played])
    assert tap.undecodable == []
    assert tap.dead_letters == []
    assert errors == []
