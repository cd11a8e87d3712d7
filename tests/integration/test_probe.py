"""The pod's probe against a real controller: alive while it runs, stuck when its worker stops."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest

from dataflow.tools import probe
from tests.integration.harness import Controller, Wiring

pytestmark = pytest.mark.integration


def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    limit = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > limit:
            return False
        time.sleep(0.2)
    return True


def test_the_probe_passes_while_the_dataflow_runs_and_fails_while_it_is_frozen(
    wiring_factory: Callable[..., Wiring], controller_factory: Callable[..., Controller]
) -> None:
    controller = controller_factory(wiring_factory())  # snapshots every second
    env = {"BYTEWAX_RECOVERY_DIRECTORY": str(controller.recovery)}
    controller.start()
    try:
        # The partition is created before the start; alive means it is being written.
        assert wait_for(lambda: probe.check(env, max_age=3) == "", 60), controller.log_text()
        controller.send_signal(signal.SIGSTOP)  # a worker that makes no progress
        assert wait_for(lambda: probe.check(env, max_age=3) != "", 15)
        assert probe.check(env, max_age=3).startswith("no progress for ")
        controller.send_signal(signal.SIGCONT)
        assert wait_for(lambda: probe.check(env, max_age=3) == "", 30)
    finally:
        controller.send_signal(signal.SIGCONT)
        controller.stop()
