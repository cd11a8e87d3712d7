"""The controller as a process: ``python -m bytewax.run "dataflow.flow:get_flow()"``, recovery on.

Role: the one place that starts and stops the controller process, for the demo
(``dataflow.sim.demo``; neither ships in the image) and for the test tiers (integration harness,
chaos replays, benchmark, real loops). ``command`` builds the command line;
``ControllerProcess`` prepares the recovery directory (``recovery.ensure``),
starts the process in a session of its own with the caller's settings over this
environment, reads its JSON log, and stops it: a signal to its whole process group
(SIGINT, as Ctrl-C; or SIGTERM, which the flow takes as a clean stop), a bounded wait for every
process of the group to be gone (``bytewax.testing -p`` runs its processes as
children of the one started), then SIGKILL. ``kill`` is a crash: SIGKILL at once.
A stop is not cut short by a second Ctrl-C (``signals_held``); callers that run
controllers turn SIGTERM and SIGHUP into ``KeyboardInterrupt`` so that their
``finally`` blocks stop them (``interrupts_as_keyboard_interrupt``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any

from dataflow.adapters import origin
from dataflow.adapters import recovery as recovery_store

#: The flow every controller process runs.
FLOW = "dataflow.flow:get_flow()"
#: How long a stopped controller may take to finish before it is killed (seconds).
STOP_GRACE_S = 20.0
#: How long to wait for a killed process group to be gone (seconds).
KILL_WAIT_S = 30.0
#: How often a wait looks whether a process group is gone (seconds).
POLL_S = 0.05
#: What a stop holds until it is done (a second Ctrl-C, a SIGTERM).
HELD = (signal.SIGINT, signal.SIGTERM)
#: What ``interrupts_as_keyboard_interrupt`` turns into ``KeyboardInterrupt`` besides Ctrl-C.
INTERRUPTS = (signal.SIGTERM, signal.SIGHUP)


def command(
    recovery: Path | None = None,
    *,
    snapshot_s: int = 1,
    backup_s: int | None = None,
    workers: int = 1,
    processes: int = 1,
    process_id: int | None = None,
    addresses: Sequence[str] = (),
) -> list[str]:
    """The command line of a controller process.

    ``recovery``: the recovery directory (``-r``), snapshots every ``snapshot_s``
    (``-s``), kept ``backup_s`` (``-b``; by default six snapshots and at least 10 s:
    the README's ``-s 5 -b 30``, the tests' ``-s 1 -b 10``). ``workers`` per process
    (``-w``, given when more than one); ``processes`` more than one run them all from
    this one command (``bytewax.testing -p``); ``process_id`` and ``addresses`` make
    it one process of a cluster (``-i``, ``-a``), as a StatefulSet's pod runs.
    """
    scaling = ["-w", str(workers)] if workers > 1 else []
    if process_id is not None:
        scaling += ["-i", str(process_id), "-a", ";".join(addresses)]
    recovery_args: list[str] = []
    if recovery is not None:
        backup = backup_s if backup_s is not None else max(10, 6 * snapshot_s)
        recovery_args = ["-r", str(recovery), "-s", str(snapshot_s), "-b", str(backup)]
    if processes > 1:
        return [sys.executable, "-m", "bytewax.testing", FLOW, "-p", str(processes),
                *scaling, *recovery_args]  # fmt: skip
    return [sys.executable, "-m", "bytewax.run", FLOW, *scaling, *recovery_args]


def parse_log(text: str) -> list[dict[str, Any]]:
    """The JSON objects among ``text``'s complete lines (an unfinished last line is not one)."""
    lines = []
    complete = text if text.endswith("\n") else text.rpartition("\n")[0]
    for raw in complete.splitlines():
        if raw.startswith("{"):
            try:
                lines.append(json.loads(raw))
            except ValueError:
                continue  # another writer's text interleaved with a log line
    return lines


class ControllerProcess:
    """One controller process on its recovery directory; a context manager that stops it.

    ``env`` is the controller's settings, laid over this process's environment.
    ``log``: its standard output and error, appended (a restart adds to it); none,
    both are discarded. ``partitions`` (and ``pod``, a StatefulSet pod's own
    volume, with the cluster's ``addresses``) say what ``recovery.ensure`` creates in
    a new recovery directory. ``workers`` and ``processes``: see ``command``.
    """

    def __init__(
        self,
        recovery: Path,
        env: Mapping[str, str],
        *,
        log: Path | None = None,
        snapshot_s: int = 1,
        backup_s: int | None = None,
        partitions: int = 1,
        pod: int | None = None,
        addresses: Sequence[str] = (),
        workers: int = 1,
        processes: int = 1,
        cwd: Path | None = None,
    ) -> None:
        self.recovery = recovery
        self.env = dict(env)
        self.log_path = log
        self.snapshot_s = snapshot_s
        self.backup_s = backup_s
        self.pod = pod
        self.addresses = tuple(addresses)
        self.workers, self.processes = workers, processes
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None
        #: Whether every process of the started group was seen gone (its id may be reused).
        self._gone = False
        recovery_store.ensure(recovery, partitions, pod=pod)

    def command(self, workers: int | None = None, processes: int | None = None) -> list[str]:
        """This controller's command line (its own worker and process counts unless given)."""
        return command(self.recovery, snapshot_s=self.snapshot_s, backup_s=self.backup_s,
                       workers=workers or self.workers, processes=processes or self.processes,
                       process_id=self.pod, addresses=self.addresses)  # fmt: skip

    def start(self, workers: int | None = None, processes: int | None = None) -> ControllerProcess:
        """Start the process (again after a stop or a kill: same directory, same log)."""
        if self.alive():
            raise RuntimeError(f"controller {self.pid} is still running (or its children are)")
        with contextlib.ExitStack() as files:
            out: int | IO[bytes] = subprocess.DEVNULL
            if self.log_path is not None:
                self.log_path.parent.mkdir(parents=True, exist_ok=True)
                out = files.enter_context(self.log_path.open("ab"))
            self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and flow
                self.command(workers, processes), cwd=self.cwd, env={**os.environ, **self.env},
                stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.DEVNULL if self.log_path is None else subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal is the caller's to handle
            )  # fmt: skip
        self._gone = False
        return self

    @property
    def pid(self) -> int:
        """The process id (also its session's and process group's id)."""
        return self._started().pid

    def _started(self) -> subprocess.Popen[bytes]:
        if self.process is None:
            raise RuntimeError("the controller was not started")
        return self.process

    def running(self) -> bool:
        """Whether it was started and the process started has not exited."""
        return self.process is not None and self.process.poll() is None

    def alive(self) -> bool:
        """Whether any process of its group lives: the one started, or a child it left."""
        if self.process is None or self._gone:
            return False
        self.process.poll()  # reaped, an exited one is no member of the group
        self._gone = not group_alive(self.process.pid)
        return not self._gone

    @property
    def returncode(self) -> int | None:
        """Its exit status; ``None`` while it runs or before it started."""
        return None if self.process is None else self.process.poll()

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for every process of its group to exit; whether all did."""
        deadline = time.monotonic() + timeout
        try:
            self._started().wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        while self.alive():
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_S)
        return True

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to its whole process group (SIGSTOP freezes it, SIGCONT resumes it).

        Also once the process started has exited: its children may live on.
        """
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL the whole process group: a crash, no clean-up."""
        stop_all([self], signal.SIGKILL)

    def stop(self, sig: int = signal.SIGINT, grace_s: float = STOP_GRACE_S) -> None:
        """Send ``sig`` (Ctrl-C by default), wait up to ``grace_s``; kill it if it is still up."""
        stop_all([self], sig, grace_s)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until it has recorded where it reads from: what is sent now, it reads.

        A controller without recovery state starts at its inputs' end (``INPUT_START``),
        found and recorded in its recovery directory (``dataflow.adapters.origin``) before
        it reads anything; what is sent before may be behind that end. Raises if the
        process exits first, or after ``timeout`` seconds.
        """
        processes = [self.pod or 0] if self.pod is not None else range(self.processes)
        wanted = [origin.path_for(self.recovery, k) for k in processes]
        deadline = time.monotonic() + timeout
        while not all(path.exists() for path in wanted):
            if not self.running():
                raise RuntimeError(f"controller exited ({self.returncode}) before it was ready")
            if time.monotonic() > deadline:
                raise TimeoutError(f"controller not ready after {timeout:g}s: no {wanted}")
            time.sleep(POLL_S)

    def log_text(self) -> str:
        """Everything it wrote so far (empty without a log)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def log_lines(self) -> list[dict[str, Any]]:
        """Its structured log lines so far (``LOG_FORMAT=json``)."""
        return parse_log(self.log_text())

    def close(self) -> None:
        """What leaving its ``with`` block does: stop it."""
        self.stop()

    def __enter__(self) -> ControllerProcess:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def stop_all(
    controllers: Iterable[ControllerProcess],
    sig: int = signal.SIGINT,
    grace_s: float = STOP_GRACE_S,
) -> None:
    """Signal every controller's process group at once (as a deletion of all pods), then wait.

    Groups with a process still running after ``grace_s`` are killed (SIGKILL), and
    waited for up to ``KILL_WAIT_S``. A Ctrl-C or SIGTERM meanwhile is held until
    the end, then delivered: it cannot leave a controller running.
    """
    with signals_held():
        alive = [c for c in controllers if c.alive()]
        for controller in alive:
            controller.send_signal(sig)
        deadline = time.monotonic() + grace_s
        left = [c for c in alive if not c.wait(max(deadline - time.monotonic(), 0.0))]
        for controller in left:
            controller.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + KILL_WAIT_S
        for controller in left:
            controller.wait(max(deadline - time.monotonic(), 0.0))


def group_alive(group: int) -> bool:
    """Whether a process of process group ``group`` lives (an exited, unreaped one does not).

    On Linux, ``/proc`` tells the living from the exited whose parent has not
    reaped them yet (a child left by its exited parent waits for init to do it).
    """
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # a process of another user holds the group id: it lives
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # exited meanwhile
        if len(fields) > 2 and fields[2] == str(group) and fields[0] != "Z":
            return True
    return False


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def signals_held(signals: Sequence[int] = HELD) -> Iterator[None]:
    """Hold ``signals`` (SIGINT and SIGTERM) for the duration, then deliver those that came.

    For a stop that must finish: a second Ctrl-C during its bounded wait would
    otherwise skip the SIGKILL after it. Each held signal is delivered once, in the
    order they came, to the handler in force before (Ctrl-C: ``KeyboardInterrupt``).
    Only the main thread handles signals: in another thread nothing is held.
    """
    if not _main_thread():
        yield
        return
    came: list[int] = []

    def hold(sig: int, frame: FrameType | None) -> None:
        if sig not in came:
            came.append(sig)

    previous = {sig: signal.signal(sig, hold) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        for sig in came:
            signal.raise_signal(sig)


@contextlib.contextmanager
def interrupts_as_keyboard_interrupt(signals: Sequence[int] = INTERRUPTS) -> Iterator[None]:
    """SIGTERM and SIGHUP raise ``KeyboardInterrupt`` for the duration, as Ctrl-C does.

    So they unwind through ``finally`` blocks and every started process is stopped,
    where their default would end this process at once and leave the controllers
    (each in its own session) running. Only in the main thread; elsewhere a no-op.
    """
    if not _main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.default_int_handler) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
