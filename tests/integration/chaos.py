"""Kill-and-restart replays of recorded RTCEF runs through a real broker.

A recorded run is replayed as its services would: an Observer thread sends the
recorded instructions in order, each once the previous round has played; a
factory thread answers every command id **once**, with the recorded report
whose ``reply_id`` is that id. The controller runs as ``python -m bytewax.run``
with a recovery directory and is SIGKILLed at seeded random moments (the first
right after its first command, before any snapshot could include it), then
restarted on the same directory after a random delay.

Run all recorded runs and print a table::

    python -m tests.integration.chaos            # or: just chaos
    python -m tests.integration.chaos month_3 --kills 4 --workers 2 --seed 7
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from dataflow.sim.runner import messages
from dataflow.tools import inspection
from tests.integration.harness import Controller, Wiring
from tests.kafka import broker as harness
from tests.kafka import client
from tests.support import RECORDINGS, Card, command_fields, load_card, recorded_runs

MESSAGE_ID = "message-id"


@dataclass
class Observed:
    """What the factory and the engine received, as a thread-safe record."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    #: command id -> every distinct payload received under it (must stay one).
    payloads: dict[Any, list[bytes]] = field(default_factory=lambda: defaultdict(list))
    answered: set[Any] = field(default_factory=set)
    #: sync message id -> (first time seen, every distinct payload).
    syncs: dict[str, tuple[float, list[bytes]]] = field(default_factory=dict)
    reports_sent: int = 0

    def commands(self) -> int:
        with self.lock:
            return len(self.payloads)

    def seen_sync(self, message_id: str) -> bool:
        with self.lock:
            return message_id in self.syncs


@dataclass
class ChaosResult:
    """One replay's outcome, with everything the property asks about."""

    card: str
    workers: int
    kills: list[tuple[int, float]]
    #: Whether the recovery store held no session when the first kill struck.
    first_kill_before_snapshot: bool
    completed: bool
    wall_s: float
    two_payloads: dict[Any, int]
    commands_match: bool
    plays_match: bool
    rounds: int
    rounds_expected: int
    longest_pause_s: float
    longest_killed_pause_s: float
    problems: list[str]

    @property
    def ok(self) -> bool:
        return self.completed and not self.problems


def _consume(bootstrap: str, topic: str, stop: threading.Event, on_message: Any) -> None:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "chaos",
                         "enable.auto.commit": False})  # fmt: skip
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    try:
        for message in messages(
            consumer, stop.is_set, poll_s=0.05, what=f"chaos consuming {topic}"
        ):
            on_message(message)
    finally:
        consumer.close()


def _env(card: Card, run: Path) -> dict[str, str]:
    first_train = next(c for c in card.commands if c["type"] == "train")
    return {
        "INITIAL_PARAMS": json.dumps(json.loads(first_train["params"])["params"]),
        "WARM_START_FILE": str(run / "offline_optimisation.json"),
    }


def run_card(
    run: Path, bootstrap: str, workdir: Path, *, seed: int, kills: int = 3, workers: int = 1,
    max_delay_s: float = 3.0, timeout_s: float = 240.0,
) -> ChaosResult:  # fmt: skip
    """Replay one recorded run with ``kills`` SIGKILLs; never raises for a failed property."""
    card = load_card(run)
    rng = random.Random(seed)  # noqa: S311 - reproducible kill points, not secrets
    names = [client.unique_topic(f"chaos-{p}") for p in ("i", "r", "c", "s", "d")]
    client.create_topics(bootstrap, names)
    wiring = Wiring(bootstrap, "rtcef", *names, extra=_env(card, run))
    controller = Controller(wiring, workdir)
    reports = {json.loads(line)["reply_id"]: line for line in card.reports}
    observed = Observed()
    stop = threading.Event()
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})

    def factory(message: Any) -> None:
        value = message.value()
        command_id = json.loads(value)["id"]
        with observed.lock:
            if value not in observed.payloads[command_id]:
                observed.payloads[command_id].append(value)
            if command_id in observed.answered or command_id not in reports:
                return
            observed.answered.add(command_id)
        producer.produce(wiring.reports, value=reports[command_id])
        producer.flush(10)

    def engine(message: Any) -> None:
        message_id = dict(message.headers() or []).get(MESSAGE_ID, b"").decode()
        with observed.lock:
            _, payloads = observed.syncs.setdefault(message_id, (time.monotonic(), []))
            if message.value() not in payloads:
                payloads.append(message.value())

    def observer() -> None:
        for number, line in enumerate(card.instructions, start=1):
            client.produce(bootstrap, wiring.instructions, [line])
            while not stop.is_set() and not observed.seen_sync(f"controller/sync/{number}/play"):
                time.sleep(0.02)

    threads = [
        threading.Thread(target=_consume, args=(bootstrap, wiring.commands, stop, factory)),
        threading.Thread(target=_consume, args=(bootstrap, wiring.sync, stop, engine)),
        threading.Thread(target=observer),
    ]
    total = len(card.commands)
    points = sorted({1, *rng.sample(range(2, total), min(kills - 1, max(total - 2, 0)))})
    schedule: list[tuple[int, float]] = []
    kill_windows: list[tuple[float, float]] = []
    unsnapshotted: list[bool] = []
    started = time.monotonic()
    deadline = started + timeout_s
    try:
        controller.start(workers)
        for thread in threads:
            thread.start()
        for point in points:
            while observed.commands() < point and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(rng.uniform(0, 0.3) if point > 1 else 0)  # any moment, not just one
            down = time.monotonic()
            controller.kill()
            unsnapshotted.append(not list(inspection.sessions(controller.recovery)))
            delay = rng.uniform(0, max_delay_s)
            time.sleep(delay)
            controller.start(workers)
            kill_windows.append((down, time.monotonic()))
            schedule.append((point, round(delay, 2)))
        expected_plays = len(card.plays)
        while time.monotonic() < deadline:
            with observed.lock:
                plays = sum(k.endswith("/play") for k in observed.syncs)
            if observed.commands() >= total and plays >= expected_plays:
                break
            time.sleep(0.05)
        completed = time.monotonic() < deadline
        time.sleep(1.0)  # let late duplicates arrive: they must carry the same payloads
    finally:
        controller.stop()
        stop.set()
        for thread in threads:
            thread.join(30)
        producer.flush(10)
    result = _judge(card, observed, schedule, kill_windows, completed, workers,
                    time.monotonic() - started, controller)  # fmt: skip
    result.first_kill_before_snapshot = bool(unsnapshotted and unsnapshotted[0])
    return result


def _judge(
    card: Card, observed: Observed, schedule: list[tuple[int, float]],
    kill_windows: list[tuple[float, float]], completed: bool, workers: int, wall_s: float,
    controller: Controller,
) -> ChaosResult:  # fmt: skip
    problems: list[str] = []
    two = {i: len(p) for i, p in observed.payloads.items() if len(p) > 1}
    if two:
        problems.append(f"command ids with more than one payload: {two}")
    ours = [json.loads(p[0]) for _, p in sorted(observed.payloads.items())]
    commands_match = [command_fields(c) for c in ours] == [command_fields(c) for c in card.commands]
    if not commands_match:
        problems.append("commands differ from the recording")
    syncs = sorted(observed.syncs.items(), key=lambda item: item[1][0])
    if any(len(payloads) > 1 for _, (_, payloads) in syncs):
        problems.append("a sync message id carried two payloads")
    plays = tuple(json.loads(p[0])["model_id"] for k, (_, p) in syncs if k.endswith("/play"))
    plays_match = plays == card.plays
    if not plays_match:
        problems.append(f"plays {plays} != recorded {card.plays}")
    pauses = {k.rsplit("/", 2)[1]: t for k, (t, _) in syncs if k.endswith("/pause")}
    ends = {k.rsplit("/", 2)[1]: t for k, (t, _) in syncs if k.endswith("/play")}
    rounds = len(pauses)
    if rounds != len(card.instructions):
        problems.append(f"{rounds} rounds for {len(card.instructions)} instructions")
    unplayed = set(pauses) - set(ends)
    if len(unplayed) != len(card.instructions) - len(card.plays):
        problems.append(f"rounds paused and never played: {sorted(unplayed)}")
    durations = {n: ends[n] - pauses[n] for n in ends if n in pauses}
    killed = [d for n, d in durations.items()
              if any(pauses[n] <= up and down <= ends[n] for down, up in kill_windows)]  # fmt: skip
    if not completed:
        problems.append("did not finish: " + controller.log_text()[-2000:])
    return ChaosResult(
        card=card.name, workers=workers, kills=schedule, first_kill_before_snapshot=False,
        completed=completed,
        wall_s=round(wall_s, 1), two_payloads=two, commands_match=commands_match,
        plays_match=plays_match, rounds=rounds, rounds_expected=len(card.instructions),
        longest_pause_s=round(max(durations.values(), default=0.0), 2),
        longest_killed_pause_s=round(max(killed, default=0.0), 2), problems=problems,
    )  # fmt: skip


def _row(result: ChaosResult) -> str:
    return (f"| {result.card} | {result.workers} | {result.kills} | "
            f"{'yes' if result.first_kill_before_snapshot else 'no'} | "
            f"{'yes' if result.completed else 'NO'} | {len(result.two_payloads)} | "
            f"{result.commands_match} | {result.plays_match} | "
            f"{result.rounds}/{result.rounds_expected} | {result.wall_s} | "
            f"{result.longest_pause_s} | {result.longest_killed_pause_s} |")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Replay recorded runs with kills and print one row per run."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.integration.chaos", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("runs", nargs="*", help="month_N names (default: every recorded run)")
    parser.add_argument("--kills", type=int, default=3, help="SIGKILLs per run (default 3)")
    parser.add_argument("--workers", type=int, default=1, help="Bytewax workers (default 1)")
    parser.add_argument("--seed", type=int, default=2026, help="seed of kill points and delays")
    args = parser.parse_args(argv)
    runs = [RECORDINGS / name for name in args.runs] if args.runs else recorded_runs()
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        broker = harness.start(Path(tmp) / "broker")
        try:
            results = []
            print("| run | workers | kills (at command, restart delay s) | "
                  "first kill before any snapshot | finished | "
                  "ids with 2 payloads | commands = recorded | plays = recorded | rounds | "
                  "wall s | longest pause s | longest pause with a kill s |")  # fmt: skip
            print("|---|---|---|---|---|---|---|---|---|---|---|---|")
            for index, run in enumerate(runs):
                result = run_card(
                    run, broker.bootstrap, Path(tmp) / run.name, seed=args.seed + index,
                    kills=args.kills, workers=args.workers,
                )  # fmt: skip
                results.append(result)
                print(_row(result), flush=True)
                for problem in result.problems:
                    print(f"    {result.card}: {problem[:500]}", file=sys.stderr)
        finally:
            broker.stop()
    kills = sum(len(r.kills) for r in results)
    done = sum(r.ok for r in results)
    print(f"\n{len(results)} runs x {args.kills} kills ({kills} kills): {done} passed, "
          f"{len(results) - done} failed")  # fmt: skip
    return 0 if done == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
