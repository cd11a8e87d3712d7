"""The controller process helper without a broker: its command lines, its log, and its stops.

The stops run stand-in processes (a lead that leaves a child in its process group,
as ``bytewax.testing -p`` does; one that ignores Ctrl-C) in place of the flow.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from dataflow.sim import process
from dataflow.sim.process import FLOW
from tests.unit.processes import DEAF, LEAVES_A_CHILD, SLEEPER, StandIn, gone


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


def test_a_child_left_by_an_exited_lead_is_still_stopped(tmp_path: Path) -> None:
    controller = StandIn(tmp_path, LEAVES_A_CHILD, SLEEPER).start()
    controller.ready()
    assert controller.wait(0) is False  # the child lives
    controller._started().wait(20)
    child = controller.child()

    assert not controller.running()  # the lead has exited...
    assert controller.alive()  # ...its child has not
    with pytest.raises(RuntimeError, match="still running"):
        controller.start()  # a second one would leave the first one's child behind

    began = time.monotonic()
    controller.stop(grace_s=20)

    assert time.monotonic() - began < 10  # the child had Ctrl-C: no SIGKILL after 20 s
    assert gone(child)
    assert not controller.alive()
    controller.stop()  # a second stop signals nothing (the group's id may be anyone's now)


def test_a_child_deaf_to_ctrl_c_is_killed_after_the_grace(tmp_path: Path) -> None:
    controller = StandIn(tmp_path, LEAVES_A_CHILD, DEAF).start()
    controller.ready()
    child = controller.child()

    controller.stop(grace_s=0.5)

    assert gone(child)
    assert controller.wait(0)


def test_kill_ends_the_whole_group(tmp_path: Path) -> None:
    controller = StandIn(tmp_path, LEAVES_A_CHILD, DEAF).start()
    controller.ready()
    child = controller.child()

    controller.kill()

    assert gone(child)
    controller.start()  # the group is gone: it may start again
    controller.ready(2)
    assert controller.child() != child
    controller.kill()
    assert gone(controller.child())


def test_a_second_ctrl_c_during_a_stop_is_delivered_after_the_kill(tmp_path: Path) -> None:
    controller = StandIn(tmp_path, DEAF).start()
    controller.ready()
    again = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))

    again.start()
    with pytest.raises(KeyboardInterrupt):
        controller.stop(grace_s=2)  # the Ctrl-C comes during the bounded wait
    again.join()

    assert controller.returncode == -signal.SIGKILL  # the stop went on to the end
    assert not controller.alive()


def test_held_signals_are_delivered_once_at_the_end_to_the_handler_before() -> None:
    seen: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda sig, frame: seen.append(sig))
    try:
        with process.signals_held():
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            assert seen == []
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_sigterm_and_sighup_interrupt_as_ctrl_c_does_while_asked() -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        with process.interrupts_as_keyboard_interrupt(), pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), sig)  # its handler runs before os.kill returns

    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)) == before
