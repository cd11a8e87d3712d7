"""Kill-and-restart replays of recorded RTCEF runs through a real broker, every delivery counted.

A recorded run is replayed as its services would: an Observer thread sends the
recorded instructions in order, each once the previous round has played; a
factory thread acts on **every** command it reads, as the real factories do (a
copy is answered again), answering the n-th command of the run with the
recorded report of the recording's n-th command. Two faults make the controller
work: the factory ignores the first delivery of one command (so its deadline
marker comes back, and it is resent under a new id), and every attempt of the
run's last command (so the last round is aborted and plays the model the
engine had). An engine thread reads the sync topic.

The controller runs as ``python -m bytewax.run`` with a recovery directory, at
the shipped snapshot interval (``-s 5``), on one or two workers, or as a cluster
of two processes (``--processes 2``: one pod SIGKILLed, the other crashes with
it, both restarted on their volumes, as a StatefulSet restarts them). It is
SIGKILLed at the worst moments (right after the first command, before any
snapshot; right after a resend; right after a finalise; right after the abort)
and at seeded random ones, and restarted after a random delay.

Every delivery is counted: each command id, each sync message id and each
deadline marker must reach its topic **once**, with one payload, and the
commands and plays must equal those of the same run computed without a crash
(``reference``: the same factory, the same faults, the controller's pure core).

Run all recorded runs and print a table::

    python -m tests.integration.chaos            # or: just chaos
    python -m tests.integration.chaos month_3 --kills 6 --workers 2 --seed 7
    python -m tests.integration.chaos --processes 2
"""

from __future__ import annotations

import argparse
import json
import queue
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from threadpoolctl import threadpool_limits

from dataflow.domain import dialects
from dataflow.domain import machine as m
from dataflow.domain import messages as msg
from dataflow.sim.process import ControllerProcess, parse_log, stop_all
from dataflow.sim.runner import messages
from dataflow.tools import inspection
from tests.integration.harness import ROOT, Controller, Wiring
from tests.kafka import broker as harness
from tests.kafka import client
from tests.support import RECORDINGS, Card, command_fields, load_card, recorded_runs

MESSAGE_ID = "message-id"
#: The test's own settings (the rest are shipped defaults, ``-s 5`` included): a silent
#: command is timed out within seconds, and resent once before its round is aborted.
TIMEOUTS = {"REPORT_TIMEOUT_S": "3", "MAX_RETRIES": "1"}
SNAPSHOT_S = 5


# --------------------------------------------------------------------------- the factory


@dataclass
class ChaosFactory:
    """The recorded factory, answering by position in the run, with the two faults.

    ``respond`` is pure (no Kafka): the live run and the reference use the same one.
    """

    card: Card
    #: The position of the command whose first delivery is ignored (resent, then answered).
    drop_first: int
    #: The position of the command no delivery of which is answered (its round aborts).
    dead: int
    #: Recorded reports by recorded command id.
    reports: dict[Any, bytes] = field(init=False)
    #: The last command's position and content (a resend has the same content, a new id),
    #: and whether it was answered (only an unanswered command is resent: the same
    #: content after an answer is a new command, e.g. a point the optimiser proposes again).
    last: tuple[int, dict[str, Any]] | None = None
    last_answered: bool = True
    positions: dict[Any, int] = field(default_factory=dict)
    deliveries: Counter[Any] = field(default_factory=Counter)
    resends: int = 0

    def __post_init__(self) -> None:
        self.reports = {json.loads(r)["reply_id"]: r for r in self.card.reports}

    def respond(self, command: dict[str, Any]) -> tuple[str, bytes | None]:
        """``(what happened, report or None)`` for one delivery of ``command``."""
        ident = command["id"]
        self.deliveries[ident] += 1
        if self.deliveries[ident] > 1:  # a copy: acted on again, as the real ones do
            position, event = self.positions[ident], "copy"
        else:
            content = {k: v for k, v in command.items() if k != "id"}
            if self.last is not None and self.last[1] == content and not self.last_answered:
                position, event = self.last[0], "resend"
                self.resends += 1
            else:
                position = 0 if self.last is None else self.last[0] + 1
                event = command["type"]
            self.last, self.positions[ident] = (position, content), position
        recorded = (
            self.card.commands[position]["id"] if position < len(self.card.commands) else None
        )
        first = event not in ("resend", "copy") and self.deliveries[ident] == 1
        ignored = position == self.dead or (position == self.drop_first and first)
        if event != "copy":  # opt_initialise is never awaited, so never resent
            self.last_answered = command["type"] == "opt_initialise" or not (
                ignored or recorded not in self.reports
            )
        if ignored:
            return event, None  # ignored: its deadline marker will come back instead
        if command["type"] == "opt_initialise" or recorded not in self.reports:
            return event, None
        report = json.loads(self.reports[recorded])
        report["reply_id"] = ident
        return event, json.dumps(report).encode()


def faults(card: Card, rng: random.Random) -> tuple[int, int]:
    """Which position's first delivery is ignored, and which position is never answered."""
    answered = [i for i, c in enumerate(card.commands[:-1]) if c["type"] != "opt_initialise"]
    return rng.choice(answered), len(card.commands) - 1


# --------------------------------------------------------------------------- the reference


def reference(card: Card, drop_first: int, dead: int) -> tuple[list[bytes], list[Any]]:
    """The commands (JSON, in order) and plays of the run without a crash: the pure core.

    Fed as the live run is: an instruction once the previous round has played, each
    command answered at once or, if ignored, followed by its deadline marker (nothing
    else is in flight then: the controller awaits one command at a time). Computed with
    NumPy's BLAS on one thread, as the controller runs it: the Gaussian process's fit
    rounds differently on two, and a proposal can differ in its last digits.
    """
    with threadpool_limits(1):
        return _reference(card, drop_first, dead)


def _reference(card: Card, drop_first: int, dead: int) -> tuple[list[bytes], list[Any]]:
    config = _config(card)
    factory = ChaosFactory(card, drop_first, dead)
    state: m.Session | None = None
    commands: list[bytes] = []
    plays: list[Any] = []
    for line in card.instructions:
        instruction = dialects.decode_instruction(line, "rtcef")
        assert isinstance(instruction, msg.Instruction), instruction
        pending: list[m.Event] = [m.InstructionArrived(instruction, 0)]
        while pending:
            state, effects = m.advance(state, pending.pop(0), key=m.DEFAULT_KEY, config=config)
            for effect in effects:
                if isinstance(effect, m.SendSync) and effect.sync.type == "play":
                    plays.append(effect.sync.model_id)
                if not isinstance(effect, m.SendCommand):
                    continue
                commands.append(msg.encode_command(effect.command))
                _, answer = factory.respond(json.loads(commands[-1]))
                if answer is not None:
                    report = dialects.decode_report(answer, "rtcef")
                    assert isinstance(report, msg.Report), report
                    pending.append(m.ReportArrived(report, 0))
                elif effect.command.type != "opt_initialise":
                    pending.append(m.DeadlinePassed(m.Deadline(effect.command.id), 0))
    return commands, plays


def _config(card: Card) -> m.MachineConfig:
    import msgspec

    return msgspec.structs.replace(card.config, max_retries=int(TIMEOUTS["MAX_RETRIES"]))


def _env(card: Card, run: Path) -> dict[str, str]:
    first_train = next(c for c in card.commands if c["type"] == "train")
    return {
        "INITIAL_PARAMS": json.dumps(json.loads(first_train["params"])["params"]),
        "WARM_START_FILE": str(run / "offline_optimisation.json"),
        **TIMEOUTS,
    }


# --------------------------------------------------------------------------- what was seen


@dataclass
class Observed:
    """Every delivery the factory and the engine read, and every marker, thread-safe."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    #: command id -> every distinct payload received under it (must stay one).
    payloads: dict[Any, list[bytes]] = field(default_factory=dict)
    #: Commands in the order first received.
    commands: list[bytes] = field(default_factory=list)
    #: sync message id -> (first time seen, every distinct payload); deliveries counted.
    syncs: dict[str, tuple[float, list[bytes]]] = field(default_factory=dict)
    sync_deliveries: Counter[str] = field(default_factory=Counter)
    marker_deliveries: Counter[str] = field(default_factory=Counter)
    plays: list[Any] = field(default_factory=list)

    def played(self) -> int:
        with self.lock:
            return len(self.plays)


@dataclass
class ChaosResult:
    """One replay's outcome, with everything the property asks about."""

    card: str
    configuration: str
    kills: list[tuple[str, float]]
    first_kill_before_snapshot: bool
    completed: bool
    wall_s: float
    duplicates: dict[str, int]
    two_payloads: dict[Any, int]
    matches_reference: bool
    matches_recording: bool
    plays_match: bool
    resends: int
    #: Replayed messages the outbox found on their topics and withheld (from its log).
    withheld: int
    problems: list[str]

    @property
    def ok(self) -> bool:
        return self.completed and not self.problems


def _consume(bootstrap: str, topic: str, stop: threading.Event, on_message: Any) -> None:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "chaos",
            "enable.auto.commit": False,
            "isolation.level": "read_uncommitted",
        }
    )  # as the services read
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    try:
        for message in messages(consumer, stop.is_set, poll_s=0.05, what=f"chaos reading {topic}"):
            on_message(message)
    finally:
        consumer.close()


# --------------------------------------------------------------------------- controllers


class Pods:
    """The controller under test: one process (1 or 2 workers), or a cluster of processes.

    A cluster's kill is one pod SIGKILLed; the others crash with it (Bytewax's "Send
    thread panic") or are killed after a grace, and all restart on their own volumes,
    as a StatefulSet restarts its pods.
    """

    def __init__(self, wiring: Wiring, workdir: Path, workers: int, processes: int,
                 rng: random.Random) -> None:  # fmt: skip
        self.workers, self.processes, self.rng = workers, processes, rng
        self.pods: list[ControllerProcess] = [Controller(wiring, workdir, snapshot_s=SNAPSHOT_S)]
        if processes > 1:  # one volume per pod, pod k holding partition k
            self.pods = [ControllerProcess(
                workdir / f"volume-{k}", wiring.env(), log=workdir / f"pod-{k}.log",
                snapshot_s=SNAPSHOT_S, partitions=processes, pod=k, cwd=ROOT,
            ) for k in range(processes)]  # fmt: skip

    def start(self) -> None:
        if self.processes > 1:
            addresses = [f"localhost:{harness.free_port()}" for _ in range(self.processes)]
            for pod in self.pods:
                pod.addresses = tuple(addresses)
                pod.start()
        else:
            self.pods[0].start(self.workers)

    def kill(self) -> None:
        victim = self.rng.randrange(len(self.pods))
        self.pods[victim].kill()
        others = [p for k, p in enumerate(self.pods) if k != victim]
        stop_all(others, signal.SIGKILL, grace_s=10)  # whoever did not crash with it

    def stop(self) -> None:
        stop_all(self.pods, grace_s=30)

    def snapshotted(self) -> bool:
        return any(list(inspection.sessions(p.recovery)) for p in self.pods
                   if list(p.recovery.glob("part-*.sqlite3")))  # fmt: skip

    def log_text(self) -> str:
        return "".join(p.log_text() for p in self.pods)


# --------------------------------------------------------------------------- one run


def run_card(
    run: Path, bootstrap: str, workdir: Path, *, seed: int, kills: int = 5, workers: int = 1,
    processes: int = 1, max_delay_s: float = 3.0, timeout_s: float = 420.0,
) -> ChaosResult:  # fmt: skip
    """Replay one recorded run with at least ``kills`` SIGKILLs; never raises for a property."""
    card = load_card(run)
    rng = random.Random(seed)  # noqa: S311 - reproducible kill points, not secrets
    drop_first, dead = faults(card, rng)
    expected_commands, expected_plays = reference(card, drop_first, dead)
    names = [client.unique_topic(f"chaos-{p}") for p in ("i", "r", "c", "s", "d")]
    client.create_topics(bootstrap, names)
    wiring = Wiring(bootstrap, "rtcef", *names, extra=_env(card, run))
    pods = Pods(wiring, workdir, workers, processes, rng)
    factory = ChaosFactory(card, drop_first, dead)
    observed = Observed()
    stop = threading.Event()
    triggers: queue.Queue[str] = queue.Queue()
    fired: set[str] = set()
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})

    def trigger(moment: str) -> None:
        if moment not in fired:
            fired.add(moment)
            triggers.put(moment)

    def on_command(message: Any) -> None:
        value = message.value()
        command = json.loads(value)
        with observed.lock:
            payloads = observed.payloads.setdefault(command["id"], [])
            if not payloads:
                observed.commands.append(value)
            if value not in payloads:
                payloads.append(value)
            event, answer = factory.respond(command)
        if len(observed.commands) == 1:
            trigger("first command")
        if event in ("resend", "opt_finalise"):
            trigger("resend" if event == "resend" else "finalise")
        if answer is not None:
            producer.produce(wiring.reports, value=answer)
            producer.flush(10)

    def on_sync(message: Any) -> None:
        message_id = dict(message.headers() or []).get(MESSAGE_ID, b"").decode()
        with observed.lock:
            observed.sync_deliveries[message_id] += 1
            _, payloads = observed.syncs.setdefault(message_id, (time.monotonic(), []))
            if message.value() not in payloads:
                payloads.append(message.value())
            sync = json.loads(message.value())
            if sync["type"] == "play":
                observed.plays.append(sync["model_id"])
                last = len(observed.plays) == len(card.instructions)
        if sync["type"] == "play" and last:
            trigger("abort")  # the last round is the aborted one

    def on_report(message: Any) -> None:
        headers = dict(message.headers() or [])
        if MESSAGE_ID in headers:  # our deadline markers
            with observed.lock:
                observed.marker_deliveries[headers[MESSAGE_ID].decode()] += 1

    def observer() -> None:
        for number, line in enumerate(card.instructions, start=1):
            client.produce(bootstrap, wiring.instructions, [line])
            while not stop.is_set() and observed.played() < number:
                time.sleep(0.02)

    threads = [
        threading.Thread(target=_consume, args=(bootstrap, wiring.commands, stop, on_command)),
        threading.Thread(target=_consume, args=(bootstrap, wiring.sync, stop, on_sync)),
        threading.Thread(target=_consume, args=(bootstrap, wiring.reports, stop, on_report)),
        threading.Thread(target=observer),
    ]
    total = len(expected_commands)
    randoms = sorted(rng.sample(range(2, total), min(max(kills - 4, 1), max(total - 2, 0))))
    schedule: list[tuple[str, float]] = []
    unsnapshotted: list[bool] = []
    started = time.monotonic()
    deadline = started + timeout_s

    def kill(moment: str) -> None:
        time.sleep(rng.uniform(0, 0.05) if moment != "first command" else 0)
        pods.kill()
        unsnapshotted.append(not pods.snapshotted())
        delay = rng.uniform(0, max_delay_s)
        time.sleep(delay)
        pods.start()
        schedule.append((moment, round(delay, 2)))
        while not triggers.empty():  # a moment seen while it was down is no moment to kill
            fired.discard(triggers.get())

    try:
        pods.start()
        for thread in threads:
            thread.start()
        while time.monotonic() < deadline:
            done = len(observed.commands) >= total and observed.played() >= len(expected_plays)
            try:
                moment = triggers.get(timeout=0.02)
            except queue.Empty:
                if randoms and len(observed.commands) >= randoms[0]:
                    moment = f"at command {randoms.pop(0)}"
                elif done and len(schedule) >= kills:
                    break
                elif done:  # too few worst moments in this run: more random ones
                    moment = "after the end"
                else:
                    continue
            kill(moment)
        completed = time.monotonic() < deadline
        time.sleep(2.0)  # late copies would arrive now: they are counted
    finally:
        pods.stop()
        stop.set()
        for thread in threads:
            thread.join(30)
        producer.flush(10)
    configuration, wall_s = f"{processes}p x {workers}w", time.monotonic() - started
    result = _judge(card, observed, expected_commands, expected_plays, schedule, completed,
                    configuration, wall_s, pods, factory)  # fmt: skip
    result.first_kill_before_snapshot = bool(unsnapshotted and unsnapshotted[0])
    return result


def _judge(
    card: Card, observed: Observed, expected_commands: list[bytes], expected_plays: list[Any],
    schedule: list[tuple[str, float]], completed: bool, configuration: str, wall_s: float,
    pods: Pods, factory: ChaosFactory,
) -> ChaosResult:  # fmt: skip
    problems: list[str] = []
    duplicates = {
        **{f"command {i}": n for i, n in factory.deliveries.items() if n > 1},
        **{f"sync {i}": n for i, n in observed.sync_deliveries.items() if n > 1},
        **{f"marker {i}": n for i, n in observed.marker_deliveries.items() if n > 1},
    }
    if duplicates:
        problems.append(f"delivered more than once: {duplicates}")
    two = {i: len(p) for i, p in observed.payloads.items() if len(p) > 1}
    two.update({i: len(p) for i, (_, p) in observed.syncs.items() if len(p) > 1})
    if two:
        problems.append(f"ids with more than one payload: {two}")
    matches_reference = observed.commands == expected_commands
    if not matches_reference:
        at = next((i for i, (a, b) in enumerate(zip(observed.commands, expected_commands,
                                                      strict=False)) if a != b), None)  # fmt: skip
        first = (observed.commands[at : at + 1], expected_commands[at : at + 1]) if at else ()
        problems.append(f"commands differ from the run without a crash: {len(observed.commands)}"
                        f" for {len(expected_commands)}, first at {at}: {first}")  # fmt: skip
    # The run sends the recorded commands (resends aside, ids renumbered): the factory
    # knows which recorded command each is (a resend is the same one again).
    firsts: dict[int, dict[str, Any]] = {}
    for value in observed.commands:
        command = json.loads(value)
        firsts.setdefault(factory.positions[command["id"]], command)
    logical = [firsts[position] for position in sorted(firsts)]
    fields = [{k: v for k, v in command_fields(c).items() if k != "id"} for c in logical]
    recorded = [{k: v for k, v in command_fields(c).items() if k != "id"} for c in card.commands]
    matches_recording = fields == recorded
    if not matches_recording:
        problems.append("the run does not send the recorded commands")
    plays_match = observed.plays == expected_plays
    if not plays_match:
        problems.append(f"plays {observed.plays} != {expected_plays}")
    if expected_plays[:-1] != list(card.plays[: len(expected_plays) - 1]):
        problems.append("the run without a crash does not play the recorded models")
    if not completed:
        problems.append("did not finish: " + pods.log_text()[-2000:])
    withheld = sum(line.get("withheld", 0) for line in parse_log(pods.log_text()))
    return ChaosResult(
        card=card.name, configuration=configuration, kills=schedule,
        first_kill_before_snapshot=False, completed=completed, wall_s=round(wall_s, 1),
        duplicates=duplicates, two_payloads=two, matches_reference=matches_reference,
        matches_recording=matches_recording, plays_match=plays_match,
        resends=factory.resends, withheld=withheld, problems=problems,
    )  # fmt: skip


def _row(result: ChaosResult) -> str:
    moments = ", ".join(moment for moment, _ in result.kills)
    return (f"| {result.card} | {result.configuration} | {len(result.kills)} ({moments}) | "
            f"{'yes' if result.first_kill_before_snapshot else 'no'} | "
            f"{'yes' if result.completed else 'NO'} | {sum(result.duplicates.values())} | "
            f"{len(result.two_payloads)} | {result.matches_reference} | "
            f"{result.matches_recording} | {result.plays_match} | {result.resends} | "
            f"{result.withheld} | {result.wall_s} |")  # fmt: skip


HEADER = ("| run | processes x workers | kills (moments) | first kill before any snapshot | "
          "finished | duplicate deliveries | ids with 2 payloads | = run without a crash | "
          "= recording | plays | resends | replayed copies withheld | wall s |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Replay recorded runs with kills and print one row per run."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.integration.chaos", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("runs", nargs="*", help="month_N names (default: every recorded run)")
    parser.add_argument("--kills", type=int, default=5, help="SIGKILLs per run (at least; 5)")
    parser.add_argument("--workers", type=int, default=1, help="Bytewax workers (default 1)")
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="processes of a cluster, each on its own volume (default 1)",
    )
    parser.add_argument("--seed", type=int, default=2026, help="seed of faults and kill points")
    args = parser.parse_args(argv)
    runs = [RECORDINGS / name for name in args.runs] if args.runs else recorded_runs()
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        broker = harness.start(Path(tmp) / "broker")
        try:
            results = []
            print(HEADER)
            for index, run in enumerate(runs):
                result = run_card(
                    run, broker.bootstrap, Path(tmp) / run.name, seed=args.seed + index,
                    kills=args.kills, workers=args.workers, processes=args.processes,
                )  # fmt: skip
                results.append(result)
                print(_row(result), flush=True)
                for problem in result.problems:
                    print(f"    {result.card}: {problem[:500]}", file=sys.stderr)
        finally:
            broker.stop()
    kills = sum(len(r.kills) for r in results)
    duplicates = sum(sum(r.duplicates.values()) for r in results)
    withheld = sum(r.withheld for r in results)
    done = sum(r.ok for r in results)
    print(f"\n{len(results)} runs, {kills} kills, {duplicates} duplicate deliveries, "
          f"{withheld} replayed copies withheld: {done} passed, "
          f"{len(results) - done} failed")  # fmt: skip
    return 0 if done == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
