"""Make the state-version-1 recovery fixture with a checkout of a version-1 controller.

The fixture is what an operator upgrading from commit e39c91d has on disk: a
recovery directory written mid-round, an OPTIMIZE (budget 3) waiting for the
report of its second step, with a RETRAIN queued behind it. The controller
that wrote it is run from ``--checkout`` (a worktree of that commit); this
script imports nothing of ``dataflow`` itself. Usage::

    git worktree add /tmp/v1 e39c91d
    python -m tests.data.make_recovery_v1 --checkout /tmp/v1 tests/data/recovery-v1

It writes ``part-0.sqlite3`` and ``inputs.json`` (the exact messages of the two
input topics, in order, so a test can rebuild topics whose offsets the store
names) and ``sent.json`` (what the version-1 controller sent).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.kafka import broker as harness
from tests.kafka import client

TOPICS = {
    "INSTRUCTION_TOPIC": "v1-instructions",
    "REPORT_TOPIC": "v1-reports",
    "COMMAND_TOPIC": "v1-commands",
    "SYNC_TOPIC": "v1-sync",
    "DEAD_LETTER_TOPIC": "v1-dead-letters",
}
ENV = {
    "CONTROLLER_DIALECT": "rtcef",
    "OPTIMISER_BUDGET": "3",
    "TICK_INTERVAL_S": "0.2",
    "LOG_FORMAT": "json",
    **TOPICS,
}
OPTIMIZE = b'{"id": 0, "instruction": "optimise", "timestamp": 1000}'
RETRAIN = b'{"id": 1, "instruction": "train", "timestamp": 2000}'


def step_report(reply_id: int, f_val: float, model_id: int) -> bytes:
    """An rtcef factory report for an ``opt_step``, shaped as the recordings' ones."""
    metrics = json.dumps({"mcc": -f_val, "f_val": f_val})
    return json.dumps({"reply_id": reply_id, "params_dict": "{}", "model_id": model_id,
                       "metrics": metrics}).encode()  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkout", type=Path, required=True)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    checkout = args.checkout.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        broker = harness.start(Path(tmp) / "broker")
        process = None
        try:
            bootstrap = broker.bootstrap
            client.create_topics(bootstrap, TOPICS.values())
            recovery = Path(tmp) / "recovery"
            recovery.mkdir()
            subprocess.run([sys.executable, "-m", "bytewax.recovery", str(recovery), "1"],
                           cwd=checkout, check=True)  # fmt: skip
            env = {**os.environ, **ENV, "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                   "PYTHONPATH": str(checkout)}  # fmt: skip
            command = [sys.executable, "-m", "bytewax.run", "dataflow.flow:get_flow()",
                       "-r", str(recovery), "-s", "1", "-b", "10"]  # fmt: skip
            process = subprocess.Popen(command, cwd=checkout, env=env, start_new_session=True)
            client.produce(bootstrap, TOPICS["INSTRUCTION_TOPIC"], [OPTIMIZE])
            # Commands 0 opt_initialise, 1 opt_step: answer it; 2 opt_step: hold it.
            client.read_messages(bootstrap, TOPICS["COMMAND_TOPIC"], count=2, timeout=60)
            client.produce(bootstrap, TOPICS["REPORT_TOPIC"], [step_report(1, -0.5, 1)])
            client.read_messages(bootstrap, TOPICS["COMMAND_TOPIC"], count=3, timeout=60)
            client.produce(bootstrap, TOPICS["INSTRUCTION_TOPIC"], [RETRAIN])
            time.sleep(4)  # several snapshots (every second) include the queued RETRAIN
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)
            args.out.mkdir(parents=True, exist_ok=True)
            for part in recovery.glob("part-0.sqlite3*"):  # with its write-ahead log
                shutil.copy(part, args.out / part.name)
            with sqlite3.connect(args.out / "part-0.sqlite3") as store:  # fold the log in
                store.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                store.execute("PRAGMA journal_mode=DELETE")
            for leftover in args.out.glob("part-0.sqlite3-*"):
                leftover.unlink()
            for name, variables in (("inputs.json", ("INSTRUCTION_TOPIC", "REPORT_TOPIC")),
                                    ("sent.json", ("COMMAND_TOPIC", "SYNC_TOPIC"))):  # fmt: skip
                contents = {
                    variable: [m.value().decode() for m in
                               client.read_messages(bootstrap, TOPICS[variable], idle=1.0)]
                    for variable in variables
                }  # fmt: skip
                (args.out / name).write_text(json.dumps(contents, indent=1) + "\n")
        finally:
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
