"""The stand-ins answer and react exactly as the real services do."""

from __future__ import annotations

import json
import statistics

import msgspec
import pytest

from dataflow.adapters.wire import Codec
from dataflow.domain import dialects
from dataflow.domain import messages as msg
from dataflow.domain.dialects import PROFILES
from dataflow.sim import surfaces
from dataflow.sim.engine import EngineSimulator
from dataflow.sim.factory import Behaviour, FactorySimulator
from dataflow.sim.surfaces import SYNTHETIC, bowl, recorded
from tests.support import RECORDINGS, jsonl, loads, recorded_runs

RTCEF = PROFILES["rtcef"]


@pytest.mark.parametrize("run", recorded_runs()[:6], ids=lambda p: p.name)
def test_the_rtcef_factory_answers_recorded_commands_in_the_recorded_shape(run) -> None:
    commands = [msg.decode_command(line) for line in jsonl(run / "factory_commands.jsonl")]
    recorded_reports = {loads(line)["reply_id"]: loads(line)
                        for line in jsonl(run / "factory_reports.jsonl")}  # fmt: skip
    factory = FactorySimulator("rtcef", RTCEF, bowl(RTCEF))

    for command in commands:
        assert isinstance(command, msg.FactoryCommand)
        replies = factory.respond(command)
        if command.type == "opt_initialise":
            assert replies == []
            continue
        if command.id not in recorded_reports:
            continue  # the recording ended before this report
        ours, theirs = loads(replies[0][1]), recorded_reports[command.id]
        assert list(ours) == list(theirs)  # same fields, same order
        assert (ours["reply_id"], ours["model_id"]) == (theirs["reply_id"], theirs["model_id"])
        if command.type == "opt_step":
            assert json.loads(ours["params_dict"]) == json.loads(theirs["params_dict"])
            assert set(json.loads(ours["metrics"])) >= {"f_val"}
        else:
            assert ours["metrics"] == theirs["metrics"] == ""
        if command.type == "train":
            assert ours["params_dict"] == command.params  # the {"params": ...} wrapper kept


def test_the_seed_factory_reports_success_with_metadata_and_errors_as_status() -> None:
    profile = PROFILES["seed"]
    factory = FactorySimulator("seed", profile, bowl(profile),
                               Behaviour(failing_once=frozenset({"cmd-2"})))  # fmt: skip
    step = msg.FactoryCommand(-1, 0, "cmd-1", 5, "opt_step", '{"params": [0.05, 0.001]}', -1)
    failing = msg.FactoryCommand(-1, 0, "cmd-2", 5, "opt_step", '{"params": [0.06, 0.001]}', -1)
    finalise = msg.FactoryCommand(-1, 0, "cmd-3", 5, "opt_finalise", '{"params": null}', 0)

    assert factory.respond(msgspec.structs.replace(INIT, id="cmd-0")) == []
    ((_, report),) = factory.respond(step)
    ((_, error),) = factory.respond(failing)
    ((_, retried),) = factory.respond(failing)
    ((key, final),) = factory.respond(finalise)

    assert dialects.decode_report(report, "seed") == msg.Report(
        "cmd-1", True, 0, bowl(profile)((("pMin", 0.05), ("gamma", 0.001))),
        (("pMin", 0.05), ("gamma", 0.001)),
    )  # fmt: skip
    assert loads(error) == {"reply_id": "cmd-2", "status": "error",
                            "error": "simulated factory failure"}  # fmt: skip
    assert dialects.decode_report(retried, "seed").ok  # type: ignore[union-attr]
    assert key is None  # JSON reports are unkeyed, as the seed factory sends them
    assert loads(final) == {
        "reply_id": "cmd-3", "params_dict": '{"pMin": 0.05, "gamma": 0.001}', "model_id": 2,
        "metrics": "", "status": "success", "model_path": "/models/wayeb_2.model",
        "creation_method": "optimisation",
    }  # fmt: skip


STEP = msg.FactoryCommand(-1, 0, 1, 5, "opt_step", '{"params": [0.5, 3, 0.001, 0.001]}', -1)
INIT = msg.FactoryCommand(-1, 0, 0, 5, "opt_initialise", '{"params": null}', -1)
FINAL = msg.FactoryCommand(-1, 0, 2, 5, "opt_finalise", '{"params": null}', 0)


def test_a_factory_acts_on_a_repeated_train_building_another_model_and_counts_it() -> None:
    train = msg.FactoryCommand(0, -1, 0, 5, "train", '{"params": {"pmin": 0.1}}', -1)
    factory = FactorySimulator("rtcef", RTCEF, bowl(RTCEF))

    ((_, first),) = factory.respond(train)
    ((_, second),) = factory.respond(train)

    assert (loads(first)["model_id"], loads(second)["model_id"]) == (0, 1)
    assert factory.duplicates == {0: 2}


def test_a_repeated_opt_finalise_kills_the_original_factorys_loop() -> None:
    factory = FactorySimulator("rtcef", RTCEF, bowl(RTCEF))
    factory.respond(INIT)
    factory.respond(STEP)
    assert len(factory.respond(FINAL)) == 1

    assert factory.respond(FINAL) == []  # the copy: no optimisation in progress, it raises
    assert factory.dead == "opt_finalise 2 without an optimisation in progress"
    assert factory.respond(msg.FactoryCommand(1, -1, 3, 5, "train", '{"params": {}}', -1)) == []


def test_a_repeated_opt_finalise_is_refused_by_the_seed_factory() -> None:
    profile = PROFILES["seed"]
    factory = FactorySimulator("seed", profile, bowl(profile))
    factory.respond(msgspec.structs.replace(INIT, id="cmd-0"))
    factory.respond(msgspec.structs.replace(STEP, id="cmd-1", params='{"params": [0.05, 0.001]}'))
    factory.respond(msgspec.structs.replace(FINAL, id="cmd-2"))

    ((_, copy),) = factory.respond(msgspec.structs.replace(FINAL, id="cmd-2"))

    assert loads(copy) == {"reply_id": "cmd-2", "status": "error",
                           "error": "No optimization session active"}  # fmt: skip
    assert (factory.dead, factory.duplicates) == (None, {"cmd-2": 2})


def test_silence_and_duplicates_are_configurable() -> None:
    train = msg.FactoryCommand(0, -1, 0, 5, "train", '{"params": {"pmin": 0.1}}', -1)
    silent = FactorySimulator("rtcef", RTCEF, bowl(RTCEF), Behaviour(silence_rate=1.0))
    doubled = FactorySimulator("rtcef", RTCEF, bowl(RTCEF), Behaviour(duplicate_rate=1.0))

    assert silent.respond(train) == []
    first, second = doubled.respond(train)
    assert first == second


@pytest.mark.parametrize("name", sorted(SYNTHETIC))
def test_synthetic_surfaces_have_their_optimum_of_minus_one(name: str) -> None:
    profile = PROFILES["seed"]
    surface = SYNTHETIC[name](profile)
    at = 0.3 if name == "bowl" else 0.5
    best = tuple((d.name, d.low + at * (d.high - d.low)) for d in profile.dimensions)
    assert surface(best) == pytest.approx(-1.0)
    assert surface(tuple((d.name, d.high) for d in profile.dimensions)) > -1.0


def test_the_recorded_surface_scores_a_recorded_point_as_recorded() -> None:
    surface = recorded(RTCEF, RECORDINGS)
    # month_0's second report answers its first opt_step (the first is a train, unscored).
    report = loads(list(jsonl(RECORDINGS / "month_0" / "factory_reports.jsonl"))[1])
    params = tuple(json.loads(report["params_dict"]).items())
    assert surface(params) == json.loads(report["metrics"])["f_val"]


def test_each_recorded_run_with_step_reports_is_a_surface_of_its_own() -> None:
    runs = surfaces.recorded_runs(RTCEF, RECORDINGS)

    with_steps = [path.name for path in sorted(RECORDINGS.glob("month_*"))
                  if '\\"f_val\\"' in (path / "factory_reports.jsonl").read_text()]  # fmt: skip
    assert sorted(runs) == with_steps
    for run, surface in runs.items():
        for line in jsonl(RECORDINGS / run / "factory_reports.jsonl"):
            report = loads(line)
            if '"f_val"' in report["metrics"]:
                params = tuple(json.loads(report["params_dict"]).items())
                assert surface(params) == json.loads(report["metrics"])["f_val"], run
                break


def test_a_noisy_surface_scores_the_same_parameters_differently_on_repeat_reproducibly() -> None:
    truth = bowl(RTCEF)
    params = (("confidence", 0.3), ("order", 2), ("pmin", 0.003), ("gamma", 0.003))

    noisy, again = surfaces.noisy(truth, 0.02, seed=7), surfaces.noisy(truth, 0.02, seed=7)
    repeated = [noisy(params) for _ in range(200)]

    assert again(params) == repeated[0]  # the same seed, the same noise
    assert len(set(repeated)) == 200
    assert abs(statistics.mean(repeated) - truth(params)) < 0.01
    assert 0.015 < statistics.stdev(repeated) < 0.025


# --------------------------------------------------------------------------- engine

PAUSE = b'{"type":"pause","timestamp":1,"model_id":-1}'
PLAY = b'{"type":"play","timestamp":1,"model_id":7}'


def test_the_engine_follows_pause_and_play() -> None:
    engine = EngineSimulator()
    engine.apply(PAUSE, b"k/sync/1/pause", now_ms=0)
    engine.apply(PLAY, b"k/sync/1/play", now_ms=10)

    assert (engine.paused, engine.model_id, engine.switches, engine.complaints) == (
        False, 7, [7], [],
    )  # fmt: skip
    assert engine.duplicates == {}


def test_the_engine_acts_on_a_replayed_copy_as_the_real_ones_do_and_counts_it() -> None:
    engine = EngineSimulator()
    engine.apply(PAUSE, b"k/sync/1/pause", now_ms=0)
    engine.apply(PLAY, b"k/sync/1/play", now_ms=10)
    engine.apply(PAUSE, b"k/sync/1/pause", now_ms=20)  # a copy: same message id

    assert (engine.paused, engine.complaints) == (True, [])  # paused again, as a real one is
    assert engine.duplicates == {b"k/sync/1/pause": 2}


def test_the_engine_complains_about_a_play_without_pause_and_unknown_words() -> None:
    engine = EngineSimulator()
    engine.apply(PLAY)
    engine.apply(b'{"type":"stop","timestamp":1,"model_id":7}')

    assert engine.complaints == [
        "play of model 7 without a pause",
        "unknown message: sync: `$.type` has unknown sync type 'stop'",
    ]


def test_the_engine_detects_a_pause_that_is_never_followed_by_a_play() -> None:
    engine = EngineSimulator()
    engine.apply(PAUSE, now_ms=1_000)

    assert engine.check_stuck(now_ms=2_000, limit_ms=5_000) is False
    assert engine.check_stuck(now_ms=10_000, limit_ms=5_000) is True
    assert engine.complaints == ["paused for over 5000 ms: a pause never followed by a play"]


def test_the_engine_following_reports_complains_about_a_model_nobody_built() -> None:
    engine = EngineSimulator(codec=Codec("rtcef"))
    engine.learn_report(b'{"reply_id": 3, "params_dict": "", "model_id": 9, "metrics": ""}')
    engine.apply(PAUSE)
    engine.apply(PLAY)

    assert engine.complaints == ["play of model 7 the factory never reported"]


def test_the_observer_stand_in_stamps_stream_time_in_seconds_as_the_real_services_do() -> None:
    import time

    from dataflow.sim.observer import stream_time_now

    before = int(time.time())
    assert before <= stream_time_now() <= before + 1  # seconds, not milliseconds
