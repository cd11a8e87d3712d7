"""The controller process helper: its command lines, its log, and a real start, stop and kill."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dataflow.tools import process
from dataflow.tools.process import FLOW, ControllerProcess
from tests.integration.harness import ROOT, Wiring

pytestmark = pytest.mark.integration


def test_the_command_lines_of_a_process_of_several_and_of_a_pod() -> None:
    recovery = Path("/r")

    assert process.command()[1:] == ["-m", "bytewax.run", FLOW]
    assert process.command(recovery)[4:] == ["-r", "/r", "-s", "1", "-b", "10"]
    assert process.command(recovery, snapshot_s=5)[4:] == ["-r", "/r", "-s", "5", "-b", "30"]
    assert process.command(recovery, workers=2, processes=3, backup_s=7)[1:] == [
        "-m", "bytewax.testing", FLOW, "-p", "3", "-w", "2", "-r", "/r", "-s", "1", "-b", "7",
    ]  # fmt: skip
    assert process.command(recovery, process_id=1, addresses=["a:1", "b:2"])[4:8] == [
        "-i", "1", "-a", "a:1;b:2",
    ]  # fmt: skip


def test_the_log_is_read_to_its_last_complete_line_passing_over_other_text() -> None:
    text = '{"a": 1}\nthread panicked\n{"b": 2\n{"c": 3}\n{"d": '

    assert process.parse_log(text) == [{"a": 1}, {"c": 3}]


def _wait_for_starts(controller: ControllerProcess, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        messages = [line.get("msg") for line in controller.log_lines()]
        if messages.count("controller starting") >= count:
            return
        assert controller.running(), controller.log_text()
        time.sleep(0.2)
    raise AssertionError(controller.log_text())


def test_a_controller_is_started_stopped_restarted_on_its_directory_and_killed(
    wiring_factory: Callable[..., Wiring], tmp_path: Path
) -> None:
    wiring = wiring_factory("seed")
    log = tmp_path / "controller.log"
    with ControllerProcess(tmp_path / "recovery", wiring.env(), log=log, cwd=ROOT) as controller:
        assert sorted(p.name for p in controller.recovery.glob("part-*")) == ["part-0.sqlite3"]
        controller.start()
        _wait_for_starts(controller, 1)
        began = time.monotonic()
        controller.stop()
        assert time.monotonic() - began < 15  # Ctrl-C ended it: no SIGKILL after 20 s
        assert controller.returncode not in (None, -signal.SIGKILL)

        controller.start()  # the same directory and log
        _wait_for_starts(controller, 2)
        controller.kill()
        assert controller.returncode == -signal.SIGKILL
        controller.start()
        _wait_for_starts(controller, 3)
    assert controller.returncode not in (None, -signal.SIGKILL)  # leaving the block stopped it
