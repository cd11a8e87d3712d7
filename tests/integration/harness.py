"""Integration-tier helpers: the controller as a real process, a simulated factory thread."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Message

from dataflow.adapters.wire import Codec
from dataflow.domain import dialects
from dataflow.domain import messages as msg
from dataflow.domain.dialects import PROFILES
from dataflow.domain.optimizer import Profile
from dataflow.sim.factory import Behaviour, FactorySimulator
from dataflow.sim.process import ControllerProcess, stop_all
from dataflow.sim.runner import answering, serve
from dataflow.sim.surfaces import bowl
from tests.kafka import client

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Wiring:
    """One test's unique topics and the controller's environment for them."""

    bootstrap: str
    dialect: str
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
            # The test's topics are new: everything on them is the test's, also what it
            # sends before the controller has looked where their end is.
            "INPUT_START": "beginning",
            **self.extra,
        }

    @property
    def profile(self) -> Profile:
        named = self.extra.get("OPTIMISER_PROFILE")
        return PROFILES[named] if named else dialects.get(self.dialect).profile

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

    def syncs_sent(self, **kwargs: Any) -> list[msg.SyncMessage]:
        """Every sync message on the topic, in order (a copy would be there twice)."""
        out = []
        for message in self.read(self.sync, **kwargs):
            sync = self.codec.decode_sync(message.value())
            assert isinstance(sync, msg.SyncMessage), sync
            out.append(sync)
        return out

    def duplicates(self, topic: str) -> dict[bytes, int]:
        """Message ids on ``topic`` more than once, with how many times (must stay empty)."""
        counts = Counter(dict(m.headers() or []).get("message-id")
                         for m in self.read(topic, idle=1.0, timeout=30))  # fmt: skip
        return {mid: n for mid, n in counts.items() if mid is not None and n > 1}

    def wait_for_plays(self, count: int, timeout: float = 120.0) -> list[msg.SyncMessage]:
        """Poll the sync topic until ``count`` plays were sent; return every sync message."""
        deadline = time.monotonic() + timeout
        syncs: list[msg.SyncMessage] = []
        while time.monotonic() < deadline:
            syncs = self.syncs_sent(idle=1.0, timeout=10)
            if sum(s.type == "play" for s in syncs) >= count:
                return syncs
            time.sleep(0.5)
        raise AssertionError(f"only {syncs} after {timeout}s")


#: Every controller process made here, in order: a failed test's report shows the logs
#: of those it made (``tests/integration/conftest.py``), which then drops them.
MADE: list[ControllerProcess] = []


class Controller(ControllerProcess):
    """The controller of one test's wiring; its recovery directory and log in ``workdir``."""

    def __init__(
        self, wiring: Wiring, workdir: Path, partitions: int = 1, snapshot_s: int = 1
    ) -> None:
        self.wiring = wiring
        super().__init__(workdir / "recovery", wiring.env(), log=workdir / "controller.log",
                         snapshot_s=snapshot_s, partitions=partitions, cwd=ROOT)  # fmt: skip
        MADE.append(self)


class Cluster:
    """Processes of one dataflow, each with its own recovery directory (a pod and its volume).

    Pod *k* runs ``python -m bytewax.run -i k -a <addresses> -r <volume k>``, as the
    StatefulSet's entrypoint does; ``volumes`` stand in for the per-pod volumes.
    """

    def __init__(self, wiring: Wiring, workdir: Path, partitions: int) -> None:
        self.wiring, self.workdir, self.partitions = wiring, workdir, partitions
        self.pods: list[ControllerProcess] = []

    def volume(self, pod: int) -> Path:
        return self.workdir / f"volume-{pod}"

    def volumes(self, count: int) -> list[Path]:
        return [self.volume(pod) for pod in range(count)]

    def start(self, count: int) -> None:
        """Start ``count`` pods: each runs the init container's step, then the flow."""
        from tests.kafka.broker import free_port

        addresses = [f"localhost:{free_port()}" for _ in range(count)]
        for pod in range(count):
            self.pods.append(ControllerProcess(
                self.volume(pod), self.wiring.env(), log=self.workdir / f"pod-{pod}.log",
                partitions=self.partitions, pod=pod, addresses=addresses, cwd=ROOT,
            ).start())  # fmt: skip
            MADE.append(self.pods[-1])

    def stop(self) -> None:
        """SIGINT every pod together (as a deletion of all pods), then wait; kill stragglers."""
        stop_all(self.pods, grace_s=30)
        self.pods.clear()

    def log_text(self) -> str:
        return "".join(path.read_text(errors="replace")
                       for path in sorted(self.workdir.glob("pod-*.log")))  # fmt: skip


@contextmanager
def factory(
    wiring: Wiring,
    behaviour: Behaviour | None = None,
    surface: Callable[[msg.Params], float] | None = None,
    before: Callable[[msg.FactoryCommand], None] | None = None,
    *,
    from_start: bool = True,
    security: dict[str, str] | None = None,
) -> Iterator[FactorySimulator]:
    """A simulated factory answering the test's command topic from a thread.

    ``before(command)`` runs before each answer: a test can hold one there.
    ``from_start``: it answers the commands already on the topic too (else only new ones).
    ``security``: its clients' security settings (a secured broker's ``factory`` user).
    """
    score = surface or bowl(wiring.profile)
    simulator = FactorySimulator(wiring.dialect, wiring.profile, score, behaviour or Behaviour(),
                                 encoding=wiring.codec.encoding)  # fmt: skip

    def refuse(rejection: msg.Rejection) -> None:
        raise AssertionError(rejection)

    handle = answering(simulator, wiring.reports, before=before, rejected=refuse)
    stop = threading.Event()
    thread = threading.Thread(
        target=serve, args=(wiring.bootstrap, wiring.commands, handle, stop),
        kwargs={"from_start": from_start, "partitions": wiring.partitions,
                "security": security}, daemon=True,
    )  # fmt: skip
    thread.start()
    try:
        yield simulator
    finally:
        stop.set()
        thread.join(15)
