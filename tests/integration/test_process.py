"""The controller process helper with a real controller: started, stopped, restarted and killed.

Its command lines, its log and its stops of stand-in processes: ``tests/unit/test_process.py``.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dataflow.sim.process import ControllerProcess
from tests.integration.harness import ROOT, Wiring

pytestmark = pytest.mark.integration


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


def test_the_processes_of_a_multi_process_controller_are_stopped_after_their_parent_died(
    wiring_factory: Callable[..., Wiring], tmp_path: Path
) -> None:
    wiring = wiring_factory("seed")
    log = tmp_path / "controller.log"
    controller = ControllerProcess(tmp_path / "recovery", wiring.env(), log=log, processes=2,
                                   cwd=ROOT)  # fmt: skip
    try:
        controller.start()  # bytewax.testing -p 2: two children in its process group
        _wait_for_starts(controller, 2)
        os.kill(controller.pid, signal.SIGKILL)  # the parent alone
        controller._started().wait(30)

        assert controller.alive()  # its two processes run on
        controller.stop()
        assert not controller.alive()
    finally:
        controller.kill()
