"""The real loop's configuration (vendored template; writing only into the run) and its stop."""

from __future__ import annotations

import configparser
import signal
import sys
import time
from pathlib import Path

from tests.rtcef import stack
from tests.unit.processes import DEAF, LEAVES_A_CHILD, SLEEPER, StandIn, gone

WINDOW = stack.Window(start=1443677401, end=1458890881, engine_start=1444282201)


def read(path: Path) -> configparser.ConfigParser:
    """As the original services read it (extended interpolation, keys lower-cased)."""
    parser = configparser.ConfigParser(interpolation=configparser.ExtendedInterpolation())
    assert parser.read(path)
    return parser


def test_every_path_a_service_writes_is_inside_the_run_folder(tmp_path: Path) -> None:
    config = read(stack.write_config(tmp_path, tmp_path / "stream.json", WINDOW))

    written = {
        "optimiser": ["executionlog", "optimisationlogs", "optimisationsamples",
                      "optimisationmodels"],
        "engine": ["executionlog"],
        "factory": ["executionlog", "assembleddatasetspath", "savedmodelspath"],
        "observer": ["executionlog"],
        "collector": ["executionlog", "storagepath"],
        "reader": ["outputfolder"],
    }  # fmt: skip
    for section, keys in written.items():
        for key in keys:
            assert Path(config[section][key]).is_relative_to(tmp_path), (section, key)
    assert Path(config["factory"]["assembleddatasetspath"]).is_dir()
    assert Path(config["collector"]["storagepath"]).is_dir()


def test_every_file_a_service_only_reads_exists_in_the_vendored_copy(tmp_path: Path) -> None:
    config = read(stack.write_config(tmp_path, tmp_path / "stream.json", WINDOW))

    assert Path(config["default"]["projectpath"]) == stack.VENDOR
    for section, key in [("engine", "model.param.initial_model"), ("optimiser", "initialmodel"),
                         ("default", "pattern_file"), ("default", "declaration_file")]:  # fmt: skip
        assert Path(config[section][key]).is_file(), (section, key)
    for key, value in config["kafka.recordSchemas"].items():
        assert Path(f"{value}-value.avsc").is_file(), key


def test_the_broker_data_set_window_and_budget_are_the_runs(tmp_path: Path) -> None:
    path = stack.write_config(
        tmp_path, tmp_path / "stream.json", WINDOW, optimiser={"nTotalEvals": "8"}
    )
    config = read(path)

    assert config["kafka"]["all.bootstrap_servers"] == "localhost:9092"
    assert {
        k: config["replayer"][k]
        for k in ("datasetpath", "starttime", "endtime", "startperiod", "cyclic")
    } == {
        "datasetpath": str(tmp_path / "stream.json"),
        "starttime": "1443677401",
        "endtime": "1458890881",
        "startperiod": "0",
        "cyclic": "false",
    }
    assert config["engine"]["model.param.start_time"] == "1444282201"
    assert config["engine"]["model.param.reporting_dt"] == "604800"
    assert config["optimiser"]["ntotalevals"] == "8"
    assert config["optimiser"]["keepnevals"] == "5"  # the template's, untouched
    assert path.read_text().startswith("; generated from ")


def test_close_stops_every_service_and_the_whole_group_of_the_controller(tmp_path: Path) -> None:
    services = stack.Stack(tmp_path)
    deaf = services.start("deaf", [sys.executable, "-c", DEAF])  # SIGTERM ends it
    controller = StandIn(tmp_path / "controller", LEAVES_A_CHILD, SLEEPER).start()
    lead = controller._started()
    services.add(stack.Service("controller", lead, tmp_path / "log", controller=controller))
    controller.ready()
    lead.wait(20)  # the lead has exited; the child it left runs on
    while "ready" not in deaf.log_text():
        time.sleep(0.02)

    services.close()

    assert not deaf.alive()
    assert deaf.process.returncode == -signal.SIGTERM
    assert gone(controller.child())
    assert services.services == []
