"""Stand-in processes for the stops of the controller process helper (no flow, no broker).

A lead that leaves a child in its process group (as ``bytewax.testing -p`` does), a
child that Ctrl-C ends and one deaf to it; ``StandIn`` runs them as a controller.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from dataflow.sim.process import ControllerProcess

#: A child that says it is ready, then sleeps (Ctrl-C ends it).
SLEEPER = "import time; print('ready', flush=True); time.sleep(60)"
#: The same, deaf to Ctrl-C: only SIGKILL ends it.
DEAF = (
    "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "print('ready', flush=True); time.sleep(60)"
)
#: A lead that starts its child (``argv[1]``) in its own process group, says its pid, exits.
LEAVES_A_CHILD = (
    "import subprocess, sys; child = subprocess.Popen([sys.executable, '-c', sys.argv[1]]); "
    "print('child', child.pid, flush=True)"
)


class StandIn(ControllerProcess):
    """A controller process running ``python -c script *args`` instead of the flow."""

    def __init__(self, tmp_path: Path, script: str, *args: str) -> None:
        super().__init__(tmp_path / "recovery", {}, log=tmp_path / "out.log")
        self.script = [script, *args]

    def command(self, workers: int | None = None, processes: int | None = None) -> list[str]:
        return [sys.executable, "-c", *self.script]

    def ready(self, count: int = 1, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while self.log_text().count("ready") < count:
            assert time.monotonic() < deadline, self.log_text()
            time.sleep(0.02)

    def child(self) -> int:
        """The pid of the newest child the lead said it started."""
        lines = [x for x in self.log_text().splitlines() if x.startswith("child ")]
        return int(lines[-1].split()[1])


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited (no process, or one that exited and awaits its reaper)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"
