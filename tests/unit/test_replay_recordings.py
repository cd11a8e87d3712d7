"""Recorded RTCEF runs replayed through the state machine reproduce every recorded command.

Each run's instructions are fed in order, each once the previous round has ended
(as in the recording, where the engine was paused meanwhile), and each command we
send is answered by the recorded report with ``reply_id`` equal to its id.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dataflow.domain import dialects, optimizer
from dataflow.domain import machine as m
from dataflow.domain import messages as msg
from tests.support import jsonl, loads, recorded_runs

CHECKED = ("id", "train_id", "optimisation_id", "type", "timestamp", "best_i")


def _config(run: Path, commands: list[dict]) -> m.MachineConfig:
    first_train = next(c for c in commands if c["type"] == "train")
    initial = tuple(json.loads(first_train["params"])["params"].items())
    document = json.loads((run / "offline_optimisation.json").read_text())
    profile = dialects.PROFILES["rtcef"]
    warm = optimizer.observations_from_warm_start(profile, document)
    return m.MachineConfig("rtcef", profile, initial, warm_start=warm)


@pytest.mark.parametrize("run", recorded_runs(), ids=lambda p: p.name)
def test_a_recorded_run_replays_to_the_recorded_commands_and_plays(run: Path) -> None:
    commands = [loads(line) for line in jsonl(run / "factory_commands.jsonl")]
    reports = {loads(line)["reply_id"]: line for line in jsonl(run / "factory_reports.jsonl")}
    config = _config(run, commands)
    state: m.Session | None = None
    sent: list[msg.FactoryCommand] = []
    plays: list[int | str] = []
    expected_plays: list[int | str] = []

    for line in jsonl(run / "optimiser_instructions.jsonl"):
        instruction = dialects.decode_instruction(line, "rtcef")
        assert isinstance(instruction, msg.Instruction)
        state, effects = m.advance(state, m.InstructionArrived(instruction, 0),
                                   key=m.DEFAULT_KEY, config=config)  # fmt: skip
        while True:
            assert not [e for e in effects if isinstance(e, m.Reject)]
            sent += [e.command for e in effects if isinstance(e, m.SendCommand)]
            plays += [e.sync.model_id for e in effects
                      if isinstance(e, m.SendSync) and e.sync.type == "play"]  # fmt: skip
            if state is None or state.phase is m.Phase.IDLE or sent[-1].id not in reports:
                break  # round over (or the recording ended before the report)
            report = dialects.decode_report(reports[sent[-1].id], "rtcef")
            assert isinstance(report, msg.Report)
            if sent[-1].type in ("train", "opt_finalise"):
                expected_plays.append(report.model_id)  # type: ignore[arg-type]
            state, effects = m.advance(state, m.ReportArrived(report, 0),
                                       key=m.DEFAULT_KEY, config=config)  # fmt: skip

    assert len(sent) == len(commands)
    for ours, recorded in zip(sent, commands, strict=True):
        assert {f: getattr(ours, f) for f in CHECKED} == {f: recorded[f] for f in CHECKED}
        if ours.type == "train":
            assert ours.params == recorded["params"]
    assert plays == expected_plays
