"""The demo without a broker: its progress lines, when it counts a run settled, how it stops."""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from dataflow.domain import dialects
from dataflow.sim import demo
from dataflow.sim.engine import EngineSimulator
from dataflow.tools.inspection import SessionView

#: A controller's log events: an OPTIMIZE round of 3 steps, then a RETRAIN round.
EVENTS: list[dict[str, Any]] = [
    {"event": "controller starting"},
    {"event": "round_started", "round": 1, "detail": "OPTIMIZE"},
    {"event": "score", "round": 1, "step": 0, "value": 0.5},
    {"event": "score", "round": 1, "step": 1, "value": 0.25},
    {"event": "score", "round": 1, "step": 2, "value": 0.75},
    {"event": "round_completed", "round": 1, "detail": "3"},
    {"event": "round_started", "round": 2, "detail": "RETRAIN"},
    {"event": "round_aborted", "round": 2, "detail": "train failed 3 times: no data"},
]


def test_a_line_per_round_start_score_and_end() -> None:
    assert demo.progress(EVENTS, 3) == [
        "waiting for the controller...",
        "round 1 (OPTIMIZE) step 0/3  best f_val -",
        "round 1 (OPTIMIZE) step 1/3  best f_val 0.5000",
        "round 1 (OPTIMIZE) step 2/3  best f_val 0.2500",
        "round 1 (OPTIMIZE) step 3/3  best f_val 0.2500",
        "round 1 (OPTIMIZE) completed: model 3",
        "round 2 (RETRAIN) training...",
        "round 2 (RETRAIN) aborted: model train failed 3 times: no data",
    ]


def test_more_events_only_add_lines_so_each_is_printed_once() -> None:
    whole = demo.progress(EVENTS, 3)

    for count in range(len(EVENTS) + 1):
        assert whole[: len(demo.progress(EVENTS[:count], 3))] == demo.progress(EVENTS[:count], 3)


class Log:
    """A controller stand-in whose log grows as a test says."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def running(self) -> bool:
        return True

    def log_lines(self) -> list[dict[str, Any]]:
        return list(self.events)


def test_successive_waits_print_each_line_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = demo.Demo(demo._args(["--budget", "3", "--output", str(tmp_path)]), "localhost:1")
    log = Log()
    run.controller = log  # type: ignore[assignment]
    log.events = EVENTS[:6]

    run.wait_for_rounds(1, time.monotonic())
    log.events = EVENTS
    run.wait_for_rounds(2, time.monotonic())  # a wait that starts after round 1 ended

    printed = [line.split("] ", 1)[1] for line in capsys.readouterr().out.splitlines()]
    assert printed == demo.progress(EVENTS, 3)
    assert printed.count("round 1 (OPTIMIZE) completed: model 3") == 1


def session(round_: int, model: int | str, phase: str = "IDLE") -> SessionView:
    return SessionView(key="controller", epoch=9, phase=phase, round=round_, round_kind=None,
                       step=None, best_score=None, pending=None, outstanding=None,
                       next_command=4, held_reports=0, model_id=model, best_params={})  # fmt: skip


def test_settled_once_the_engine_plays_the_completed_rounds_model_and_a_snapshot_holds_it() -> None:
    events = EVENTS[:6]
    playing = EngineSimulator(model_id=3)

    assert demo.settled(events, playing, session(1, 3))
    assert not demo.settled(events, EngineSimulator(model_id=3, paused=True), session(1, 3))
    assert not demo.settled(events, EngineSimulator(model_id=-1), session(1, 3))
    assert not demo.settled(events, playing, session(1, -1, "FINALIZING"))  # a snapshot before
    assert not demo.settled(events, playing, None)
    assert not demo.settled(EVENTS[:2], playing, session(0, -1))  # no round ended yet


def test_settled_once_an_aborted_round_has_the_engine_play_the_model_before_it() -> None:
    playing = EngineSimulator(model_id=3)

    assert demo.settled(EVENTS, playing, session(2, 3))  # its detail is a reason, no model
    assert not demo.settled(EVENTS, playing, session(2, 3, "TRAINING"))
    assert not demo.settled(EVENTS, EngineSimulator(model_id=3, paused=True), session(2, 3))


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What main did: ``run`` replaced by the test's, every ``shutdown`` recorded."""
    calls: list[str] = []
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "localhost:1")
    monkeypatch.setattr(demo.Demo, "shutdown", lambda self: calls.append("shutdown"))
    return calls


def test_any_failure_stops_what_the_demo_started(
    started: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def fails(self: demo.Demo, began: float) -> None:
        raise OSError("No space left on device")

    monkeypatch.setattr(demo.Demo, "run", fails)

    with pytest.raises(OSError, match="No space"):
        demo.main(["--output", str(tmp_path)])
    assert started == ["shutdown"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_ctrl_c_sigterm_and_sighup_stop_what_the_demo_started(
    sig: signal.Signals, started: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)
    monkeypatch.setattr(demo.Demo, "run", lambda self, began: os.kill(os.getpid(), sig))

    assert demo.main(["--output", str(tmp_path)]) == 130
    assert started == ["shutdown"]
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)) == before


def test_every_dialect_has_its_stand_ins_record_and_the_domain_record_has_no_stand_in() -> None:
    from dataflow.domain.dialects.record import Dialect
    from dataflow.sim.services import SERVICES, Services

    assert set(SERVICES) == set(dialects.REGISTRY)
    stand_in = {f.name for f in dataclasses.fields(Services)}
    assert stand_in & {f.name for f in dataclasses.fields(Dialect)} == set()
