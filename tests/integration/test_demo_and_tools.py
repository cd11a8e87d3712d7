"""The quick-start demo end to end, the Observer command line and the recovery inspector."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dataflow.domain import dialects
from dataflow.domain import messages as msg
from dataflow.tools import inspection
from tests.integration.harness import ROOT, factory
from tests.kafka import client
from tests.support import wait_for_snapshots

pytestmark = pytest.mark.integration


def test_the_demo_runs_both_rounds_and_writes_its_summary_trace_and_plot(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}
    run = subprocess.run(
        [sys.executable, "-m", "dataflow.sim.demo", "--budget", "6", "--output", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip

    assert run.returncode == 0, run.stdout + run.stderr
    (folder,) = tmp_path.iterdir()
    summary = json.loads((folder / "summary.json").read_text())
    assert (summary["rounds_completed"], summary["rounds_aborted"], summary["steps"]) == (2, 0, 6)
    assert summary["engine_paused"] is False
    assert summary["engine_complaints"] == []
    assert summary["engine_model"] == 7  # steps 0..5, finalise 6, train 7
    png = (folder / "convergence.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    import matplotlib.image

    assert matplotlib.image.imread(folder / "convergence.png").shape[:2] == (400, 700)
    rows = (folder / "trace.csv").read_text().splitlines()
    assert rows[0] == "round,step,f_val"
    assert len(rows) == 7
    # A progress line per event, each once (a line per wait was printed again by the next).
    values = [float(row.split(",")[2]) for row in rows[1:]]
    progress = [re.sub(r"^\[ *\d+\.\d+s\] ", "", line)
                for line in run.stdout.splitlines() if line.startswith("[")]  # fmt: skip
    assert progress == [
        "waiting for the controller...",
        "round 1 (OPTIMIZE) step 0/6  best f_val -",
        *[f"round 1 (OPTIMIZE) step {n}/6  best f_val {min(values[:n]):.4f}" for n in range(1, 7)],
        "round 1 (OPTIMIZE) completed: model 6",
        "round 2 (RETRAIN) training...",
        "round 2 (RETRAIN) completed: model 7",
    ]
    # The demo ends once a snapshot holds the last round: the recovery directory it left
    # behind shows the session after both rounds, the engine playing the retrained model.
    (session,) = inspection.sessions(folder / "recovery")
    assert (session.key, session.phase, session.round, session.round_kind, session.model_id) == (
        "controller", "IDLE", 2, None, 7,
    )  # fmt: skip


def _controllers_in(folder: Path) -> list[str]:
    """The command lines of the living controller processes with a directory in ``folder``."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if "bytewax" in command and str(folder) in command and state != "Z":
            found.append(command)
    return found


def test_a_sigterm_to_the_demo_stops_the_controller_it_started(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}
    demo = subprocess.Popen(
        [sys.executable, "-m", "dataflow.sim.demo", "--output", str(tmp_path)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while "controller starting" not in "".join(
            p.read_text(errors="replace") for p in tmp_path.glob("*/controller.log")
        ):
            assert demo.poll() is None, demo.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert _controllers_in(tmp_path)  # in a session of its own: the SIGTERM is not its

        demo.send_signal(signal.SIGTERM)
        out, err = demo.communicate(timeout=60)
    finally:
        demo.kill()

    assert demo.returncode == 130, out + err
    assert "interrupted, stopping everything" in err
    assert _controllers_in(tmp_path) == []


def test_the_observer_command_line_sends_each_instruction_in_either_dialect(
    wiring_factory,
) -> None:
    wiring = wiring_factory("seed")
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": wiring.bootstrap}
    calls = [
        ["optimize", "--id", "3", "--timestamp", "11", "--model-id", "m1"],
        ["retrain", "--dialect", "rtcef", "--id", "4", "--timestamp", "12"],
        ["update-params", "--param", "pMin=0.02", "--param", "gamma=0.001", "--timestamp", "13"],
    ]
    for args in calls:
        sent = subprocess.run([sys.executable, "-m", "dataflow.sim.observer", *args,
                               "--topic", wiring.instructions],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
                              check=False)  # fmt: skip
        assert sent.returncode == 0, sent.stderr

    values = [m.value() for m in wiring.read(wiring.instructions, count=3, timeout=30)]
    assert dialects.decode_instruction(values[0], "seed") == msg.Instruction(
        msg.InstructionKind.OPTIMIZE, 11, 3, "m1"
    )
    assert dialects.decode_instruction(values[1], "rtcef") == msg.Instruction(
        msg.InstructionKind.RETRAIN, 12, 4
    )
    assert dialects.decode_instruction(values[2], "seed") == msg.Instruction(
        msg.InstructionKind.UPDATE_PARAMS, 13, 0, parameters=(("pMin", 0.02), ("gamma", 0.001))
    )


def test_the_inspector_shows_a_session_caught_mid_round(wiring_factory, controller_factory) -> None:
    wiring = wiring_factory("seed", OPTIMISER_BUDGET="5")
    controller = controller_factory(wiring)
    release = threading.Event()

    def hold(command: msg.FactoryCommand) -> None:
        if command.id == "cmd-3":
            release.wait(60)  # cmd-3 stays unanswered while the test looks

    with factory(wiring, before=hold):
        controller.start()
        wiring.send_instruction(msg.Instruction(msg.InstructionKind.OPTIMIZE, 5, 1))
        client.read_messages(wiring.bootstrap, wiring.commands, count=4, timeout=60)
        wiring.send_instruction(msg.Instruction(msg.InstructionKind.RETRAIN, 6, 2))
        wait_for_snapshots(controller.recovery, lambda views: any(  # the queued instruction
            v.pending and v.outstanding and "'cmd-3'" in v.outstanding for v in views))  # fmt: skip
        controller.kill()
        release.set()

    command = [sys.executable, "-m", "dataflow.tools.inspection", str(controller.recovery)]
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "session 'controller'" in out
    assert "phase        WAITING_FOR_REPORT" in out
    assert "step         2/5" in out
    assert "queued       RETRAIN (timestamp 6)" in out
    assert "awaiting     opt_step 'cmd-3' attempt 1" in out


def _run_until(
    args: list[str], env: dict[str, str], seconds: float
) -> subprocess.CompletedProcess[str]:
    process = subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    time.sleep(seconds)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    return subprocess.CompletedProcess(args, process.returncode, out, err)


def test_the_factory_and_engine_command_lines_serve_real_topics(wiring_factory) -> None:
    wiring = wiring_factory("rtcef", WIRE_ENCODING="avro")
    codec = wiring.codec
    key, train = codec.encode_command(
        msg.FactoryCommand(0, -1, 0, 5, "train", '{"params": {"confidence": 0.2, "order": 2, '
                           '"pmin": 0.001, "gamma": 0.001}}', -1)
    )  # fmt: skip
    client.produce(wiring.bootstrap, wiring.commands, [train], key=key)
    _, play = codec.encode_sync(msg.SyncMessage("play", 5, 7))
    client.produce(wiring.bootstrap, wiring.sync, [play])
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": wiring.bootstrap}
    common = ["--dialect", "rtcef", "--encoding", "avro", "--from-start"]

    factory_args = ["--commands-topic", wiring.commands, "--reports-topic", wiring.reports]
    factory_run = _run_until(["dataflow.sim.factory", *common, *factory_args], env, 6)
    engine_args = ["--sync-topic", wiring.sync, "--reports-topic", wiring.reports]
    engine_run = _run_until(["dataflow.sim.engine", *common, *engine_args], env, 6)

    assert factory_run.returncode == 0, factory_run.stderr
    assert "factory: train 0 -> 1 report(s)" in factory_run.stdout
    (report,) = wiring.read(wiring.reports, count=1, timeout=30)
    assert codec.decode_report(report.value()) == msg.Report(
        0, True, 0, None, (("confidence", 0.2), ("order", 2), ("pmin", 0.001), ("gamma", 0.001))
    )
    assert engine_run.returncode == 1  # it complained
    assert "ENGINE COMPLAINT: play of model 7 without a pause" in engine_run.stderr
    assert "ENGINE COMPLAINT: play of model 7 the factory never reported" in engine_run.stderr
