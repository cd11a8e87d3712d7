"""Integration-tier helpers: the controller as a real process, a simulated factory thread."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Message

from dataflow.adapters import recovery
from dataflow.adapters.wire import Codec
from dataflow.domain import messages as msg
from dataflow.domain.optimizer import PROFILES, Profile
from dataflow.sim.factory import Behaviour, FactorySimulator
from dataflow.sim.runner import serve
from dataflow.sim.surfaces import bowl
from tests.kafka import client

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Wiring:
    """One test's unique topics and the controller's environment for them."""

    bootstrap: str
    dialect: msg.Dialect
    instructions: str
    reports: str
    commands: str
    sync: str
    dead_letters: str
    extra: dict[str, str] = field(default_factory=dict)
    partitions: int = 1

    def env(self) -> dict[str, str]:
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "CONTROLLER_DIALECT": self.dialect,
            "INSTRUCTION_TOPIC": self.instructions,
            "REPORT_TOPIC": self.reports,
            "COMMAND_TOPIC": self.commands,
            "SYNC_TOPIC": self.sync,
            "DEAD_LETTER_TOPIC": self.dead_letters,
            "TICK_INTERVAL_S": "0.2",
            "LOG_FORMAT": "json",
            **self.extra,
        }

    @property
    def profile(self) -> Profile:
        return PROFILES[self.extra.get("OPTIMISER_PROFILE", self.dialect)]

    @property
    def codec(self) -> Codec:
        return Codec(self.dialect, self.extra.get("WIRE_ENCODING", "json"))  # type: ignore[arg-type]

    def send_instruction(self, instruction: msg.Instruction) -> None:
        key, value = self.codec.encode_instruction(instruction)
        client.produce(self.bootstrap, self.instructions, [value], key=key)

    def read(self, topic: str, **kwargs: Any) -> list[Message]:
        kwargs.setdefault("partitions", self.partitions)
        return client.read_messages(self.bootstrap, topic, **kwargs)

    def commands_sent(self, **kwargs: Any) -> list[msg.FactoryCommand]:
        out = []
        for message in self.read(self.commands, **kwargs):
            command = self.codec.decode_command(message.value())
            assert isinstance(command, msg.FactoryCommand), command
            out.append(command)
        return out

    def syncs_sent(self, *, unique: bool = False, **kwargs: Any) -> list[msg.SyncMessage]:
        """Sync messages in order; ``unique`` drops replayed ones by their message id."""
        out, seen = [], set()
        for message in self.read(self.sync, **kwargs):
            message_id = dict(message.headers() or []).get("message-id")
            if unique and message_id in seen:
                continue
            seen.add(message_id)
            sync = self.codec.decode_sync(message.value())
            assert isinstance(sync, msg.SyncMessage), sync
            out.append(sync)
        return out

    def wait_for_plays(
        self, count: int, timeout: float = 120.0, *, unique: bool = False
    ) -> list[msg.SyncMessage]:
        """Poll the sync topic until ``count`` plays were sent; return every sync message.

        ``unique``: replayed copies (same message id) count once.
        """
        deadline = time.monotonic() + timeout
        syncs: list[msg.SyncMessage] = []
        while time.monotonic() < deadline:
            syncs = self.syncs_sent(unique=unique, idle=1.0, timeout=10)
            if sum(s.type == "play" for s in syncs) >= count:
                return syncs
            time.sleep(0.5)
        raise AssertionError(f"only {syncs} after {timeout}s")


class Controller:
    """The controller run as ``python -m bytewax.run`` with a recovery directory."""

    def __init__(
        self, wiring: Wiring, workdir: Path, partitions: int = 1, snapshot_s: int = 1
    ) -> None:
        self.wiring = wiring
        self.snapshot_s = snapshot_s
        self.recovery = workdir / "recovery"
        self.log_path = workdir / "controller.log"
        self.process: subprocess.Popen[bytes] | None = None
        recovery.ensure(self.recovery, partitions)

    def command(self, workers: int = 1, processes: int = 1) -> list[str]:
        target = "dataflow.flow:get_flow()"
        backup = "10" if self.snapshot_s < 10 else str(self.snapshot_s * 6)
        recovery_args = ["-r", str(self.recovery), "-s", str(self.snapshot_s), "-b", backup]
        if processes > 1:
            return [sys.executable, "-m", "bytewax.testing", target, "-p", str(processes),
                    "-w", str(workers), *recovery_args]  # fmt: skip
        return [sys.executable, "-m", "bytewax.run", target, "-w", str(workers), *recovery_args]

    def start(self, workers: int = 1, processes: int = 1) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command(workers, processes), cwd=ROOT, env={**os.environ, **self.wiring.env()},
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def kill(self) -> None:
        """SIGKILL the whole process group: a crash, no clean-up."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)

    def stop(self) -> None:
        """Interrupt (as Ctrl-C) and wait; kill if it does not stop."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for raw in self.log_path.read_text(errors="replace").splitlines():
            if raw.startswith("{"):
                lines.append(json.loads(raw))
        return lines

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


class Cluster:
    """Processes of one dataflow, each with its own recovery directory (a pod and its volume).

    Pod *k* runs ``python -m bytewax.run -i k -a <addresses> -r <volume k>``, as the
    StatefulSet's entrypoint does; ``volumes`` stand in for the per-pod volumes.
    """

    def __init__(self, wiring: Wiring, workdir: Path, partitions: int) -> None:
        self.wiring, self.workdir, self.partitions = wiring, workdir, partitions
        self.processes: list[subprocess.Popen[bytes]] = []

    def volume(self, pod: int) -> Path:
        return self.workdir / f"volume-{pod}"

    def volumes(self, count: int) -> list[Path]:
        return [self.volume(pod) for pod in range(count)]

    def start(self, count: int) -> None:
        """Start ``count`` pods: each runs the init container's step, then the flow."""
        from tests.kafka.broker import free_port

        addresses = ";".join(f"localhost:{free_port()}" for _ in range(count))
        for pod in range(count):
            recovery.ensure(self.volume(pod), self.partitions, pod=pod)
            command = [sys.executable, "-m", "bytewax.run", "dataflow.flow:get_flow()",
                       "-i", str(pod), "-a", addresses, "-r", str(self.volume(pod)),
                       "-s", "1", "-b", "10"]  # fmt: skip
            with (self.workdir / f"pod-{pod}.log").open("ab") as log:
                self.processes.append(subprocess.Popen(
                    command, cwd=ROOT, env={**os.environ, **self.wiring.env()}, stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True,
                ))  # fmt: skip

    def stop(self) -> None:
        """SIGINT every pod together (as a deletion of all pods), then wait; kill stragglers."""
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGINT)
        for process in self.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
        for process in self.processes:
            process.wait(60)
        self.processes.clear()

    def log_text(self) -> str:
        return "".join(path.read_text(errors="replace")
                       for path in sorted(self.workdir.glob("pod-*.log")))  # fmt: skip


@contextmanager
def factory(
    wiring: Wiring,
    behaviour: Behaviour | None = None,
    surface: Callable[[msg.Params], float] | None = None,
    before: Callable[[msg.FactoryCommand], None] | None = None,
) -> Iterator[FactorySimulator]:
    """A simulated factory answering the test's command topic from a thread.

    ``before(command)`` runs before each answer: a test can hold one there.
    """
    score = surface or bowl(wiring.profile)
    simulator = FactorySimulator(wiring.dialect, wiring.profile, score, behaviour or Behaviour(),
                                 encoding=wiring.codec.encoding)  # fmt: skip

    def handle(value: bytes, headers: list[tuple[str, bytes]]):
        command = wiring.codec.decode_command(value)
        assert isinstance(command, msg.FactoryCommand), command
        if before is not None:
            before(command)
        return [(wiring.reports, key, report) for key, report in simulator.respond(command)]

    stop = threading.Event()
    thread = threading.Thread(
        target=serve, args=(wiring.bootstrap, wiring.commands, handle, stop),
        kwargs={"from_start": True, "partitions": wiring.partitions}, daemon=True,
    )  # fmt: skip
    thread.start()
    try:
        yield simulator
    finally:
        stop.set()
        thread.join(15)
