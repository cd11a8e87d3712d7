"""Benchmarks: the controller against the seed's design, skopt's defaults and the physical floor.

Run with ``just bench`` (``--quick`` for a smoke run). Prints one table with the
machine it ran on and writes it, with the date and commit, to
``tests/bench/RESULTS.md``. These are measurements, not tests: nothing here
asserts a time.

1. State size and cost per session at 10, 30 and 50 observations (both
   profiles): our snapshot against the seed's design (the skopt ``Optimizer``
   pickled and base64-encoded into JSON).
2. Step latency through a real broker: report in -> next command out, next to
   the optimiser's own propose-and-learn time for the same step (the floor).
3. Optimiser quality and speed (``tests/bench/optimiser.py``): ours,
   ``gp_minimize`` and random search on the same rounds, paired by seed (50, or
   10 per recorded run): smooth and rugged surfaces, a noisy one, the recorded
   reports pooled and per run, and rounds starting from 5 kept observations; the
   median true score of the finalised step, a paired Wilcoxon test, and the
   median regret after each evaluation (``optimiser-regret.png``).
7. Optimiser at equal factory seconds (``tests/bench/costs.py``): the real
   factory's recorded step costs, ours with and without ``ROUND_BUDGET_S``,
   scikit-optimize's gp_hedge and random search, paired by seed (50).
4. Throughput: 1, 10 and 100 concurrent sessions against an instant factory,
   with 1 and 2 workers: steps per second, CPU and peak memory.
5. Recovery: SIGKILL mid-round, then the time from restart to the next command,
   and the recovery directory's size.
6. Hops at the shipped defaults: instruction -> pause and first command, a step
   report after a slow step -> next command, final report -> play (p50/p99/max);
   the controller's share of the engine's pause in a 15-step rtcef round
   against a factory that takes exactly 1 s per command; idle CPU per worker.

Every controller runs as an operator runs it: the README's
``bytewax.run ... -r DIR -s 5 -b 30`` and the ConfigMap's settings
(``TICK_INTERVAL_S=5``), unless ``BENCH_SNAPSHOT_S`` says otherwise.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import os
import pickle
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing, contextmanager
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from dataflow.adapters.kafka import SESSION_HEADER
from dataflow.domain import bayes, dialects, strategy
from dataflow.domain import machine as m
from dataflow.domain import messages as msg
from dataflow.domain import optimizer as o
from dataflow.sim.factory import Behaviour, FactorySimulator
from dataflow.sim.process import ControllerProcess
from dataflow.sim.runner import messages
from dataflow.sim.surfaces import SYNTHETIC
from tests.bench import costs, optimiser
from tests.kafka import broker as harness
from tests.kafka import client

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
#: The optimiser section's regret curves, written when the section runs (not with --no-save).
REGRET_PLOT = RESULTS.with_name("optimiser-regret.png")
#: Section 7's regret-against-seconds curves, and the real loop's recorded step costs.
COST_PLOT = RESULTS.with_name("cost-regret.png")
LOOP_TRAFFIC = ROOT / "tests" / "rtcef" / "step-costs"
RECORDINGS = Path(os.environ.get("RTCEF_SHARED_DIR", ROOT.parent / "shared")) / (
    "data/rtcef-recordings/cards"
)
Rows = list[tuple[str, ...]]
#: The README's and the ConfigMap's snapshot interval (``-s 5``).
SNAPSHOT_S = int(os.environ.get("BENCH_SNAPSHOT_S", "5"))


#: How the benchmark's factory and engine read the controller's topics: as the real
#: services do (Java's and kafka-python's default). ``BENCH_ISOLATION=read_committed``
#: measures what a consumer that waits for each transaction's commit would see.
ISOLATION = os.environ.get("BENCH_ISOLATION", "read_uncommitted")


def timed(function: Callable[[], Any], repeat: int = 5) -> float:
    """Best-of-``repeat`` wall time of ``function`` in seconds."""
    best = float("inf")
    for _ in range(repeat):
        began = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - began)
    return best


def grown(
    profile: o.Profile, count: int, surface: Callable[[o.Params], float]
) -> o.OptimiserSnapshot:
    """A snapshot with ``count`` observations (random points: sizes do not depend on them)."""
    rng = np.random.RandomState(count)
    space = bayes.space(profile)
    points = [o.to_point(profile, p) for p in space.rvs(count, random_state=rng)]
    observations = tuple(o.Observation(p, surface(o.named(profile, p))) for p in points)
    big = msgspec.structs.replace(profile, budget=count + 1)
    return msgspec.structs.replace(o.start(big, "bench", 0), observations=observations)


def seed_design_bytes(profile: o.Profile, snapshot: o.OptimiserSnapshot) -> bytes:
    """The seed's state: a live skopt Optimizer told every observation, pickled, base64 in JSON."""
    from skopt import Optimizer

    dimensions = bayes.space(profile).dimensions
    optimizer = Optimizer(
        dimensions,
        base_estimator="GP",
        acq_func="EI",
        n_initial_points=profile.n_initial,
        random_state=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for observation in snapshot.observations:
            optimizer.tell(list(observation.x), observation.y)
    return json.dumps({"optimizer": base64.b64encode(pickle.dumps(optimizer)).decode()}).encode()


def bench_state(quick: bool) -> Rows:
    rows: Rows = []
    for name in ("seed", "rtcef"):
        profile = dialects.PROFILES[name]
        surface = SYNTHETIC["bowl"](profile)
        for count in (10, 30, 50):
            snapshot = grown(profile, count, surface)
            session = m.Session(
                "bench",
                m.Phase.WAITING_FOR_REPORT,
                (("x", 1.0),),
                3,
                round=m.Round("optimise", 1, 0, -1, 0, 0, snapshot),
            )
            ours = pickle.dumps(session)
            theirs = seed_design_bytes(profile, snapshot)
            repeat = 3 if quick else 20
            live = pickle.loads(base64.b64decode(json.loads(theirs)["optimizer"]))
            ours_save = timed(lambda s=session: pickle.dumps(s), repeat)
            ours_load = timed(lambda b=ours: pickle.loads(b), repeat)
            theirs_save = timed(
                lambda x=live: json.dumps(
                    {"optimizer": base64.b64encode(pickle.dumps(x)).decode()}
                ),
                3,
            )
            theirs_load = timed(
                lambda b=theirs: pickle.loads(base64.b64decode(json.loads(b)["optimizer"])), 3
            )
            rows.append(
                (
                    name,
                    str(count),
                    f"{len(ours):,}",
                    f"{len(theirs):,}",
                    f"{len(theirs) / len(ours):.0f}x",
                    f"{(ours_save + ours_load) * 1e3:.3f}",
                    f"{(theirs_save + theirs_load) * 1e3:.1f}",
                    f"{(theirs_save + theirs_load) / (ours_save + ours_load):.0f}x",
                )
            )
    return rows


# --------------------------------------------------------------------------- broker-backed


@contextmanager
def broker() -> Iterator[str]:
    """A new broker, as a long-running one is: its transaction coordinator up.

    A broker's first transaction ever creates ``__transaction_state`` (50 partitions) and
    loads its coordinator, and the first transactional writes wait for that (~0.1-3 s):
    a once-per-cluster cost that would otherwise land in the first hop measured.
    """
    from confluent_kafka import Producer

    running = harness.start(tempfile.mkdtemp(prefix="bench-kafka-"))
    try:
        warm = Producer({"bootstrap.servers": running.bootstrap,
                         "transactional.id": "bench-warm-up"})  # fmt: skip
        warm.init_transactions(60)
        warm.begin_transaction()
        warm.abort_transaction(60)
        del warm  # gone before the broker stops: no client left to log its reconnects
        yield running.bootstrap
    finally:
        running.stop()


class Controller(ControllerProcess):
    """The controller process, as deployed (bytewax.run with recovery, ``-s`` SNAPSHOT_S ``-b 30``).

    Its output goes to ``BENCH_LOG_FILE`` if set, else nowhere. Leaving its ``with``
    block stops it and removes the recovery directory it made (none given).
    """

    def __init__(
        self,
        bootstrap: str,
        topics: dict[str, str],
        env: dict[str, str],
        workers: int = 1,
        directory: Path | None = None,
    ) -> None:
        log = os.environ.get("BENCH_LOG_FILE")
        self.temporary = directory is None
        super().__init__(
            directory or Path(tempfile.mkdtemp(prefix="bench-recovery-")),
            {
                **topics,
                **env,
                "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
            },
            log=Path(log) if log else None,
            snapshot_s=SNAPSHOT_S,
            backup_s=30,
            workers=workers,
            cwd=ROOT,
        )

    def start(self, workers: int | None = None, processes: int | None = None) -> Controller:
        """Start it, and return once it reads what is sent (its inputs' end recorded)."""
        super().start(workers, processes)
        self.wait_ready()
        return self

    def close(self) -> None:
        """Stop it; remove the recovery directory it made."""
        try:
            super().close()
        finally:
            if self.temporary:
                shutil.rmtree(self.recovery, ignore_errors=True)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")


def make_topics(bootstrap: str, dialect: str) -> dict[str, str]:
    names = {
        k: client.unique_topic(k.lower())
        for k in (
            "INSTRUCTION_TOPIC",
            "REPORT_TOPIC",
            "COMMAND_TOPIC",
            "SYNC_TOPIC",
            "DEAD_LETTER_TOPIC",
        )
    }
    client.create_topics(bootstrap, names.values())
    return names


def wait_for_count(items: list[Any], count: int, timeout: float, what: str) -> None:
    """Wait until a thread has appended ``count`` items to ``items``."""
    deadline = time.monotonic() + timeout
    while len(items) < count and time.monotonic() < deadline:
        time.sleep(0.002)
    if len(items) < count:
        raise TimeoutError(f"{len(items)} of {count} {what} after {timeout}s")


class Factory:
    """An instant factory that timestamps each report it sends and each command it receives."""

    def __init__(
        self,
        bootstrap: str,
        topics: dict[str, str],
        dialect: str,
        profile: o.Profile,
        delay_s: Callable[[msg.FactoryCommand], float] = lambda command: 0.0,
    ) -> None:
        from confluent_kafka import Consumer, Producer
        from confluent_kafka.cimpl import TopicPartition

        self.simulator = FactorySimulator(dialect, profile, SYNTHETIC["bowl"](profile), Behaviour())
        self.delay_s = delay_s
        self.topics = topics
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": "bench",
                "fetch.wait.max.ms": 1,
                "isolation.level": ISOLATION,
            }
        )
        self.consumer.assign([TopicPartition(topics["COMMAND_TOPIC"], 0, 0)])
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
        self.received: list[tuple[float, msg.FactoryCommand]] = []
        self.sent: dict[int | str, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        # It acts on every delivery, as a real factory does (the controller writes no copy).
        for message in messages(self.consumer, self.stop.is_set, poll_s=0.05, strict=False):
            now = time.perf_counter()
            command = msg.decode_command(message.value())
            assert isinstance(command, msg.FactoryCommand)
            self.received.append((now, command))
            if self.delay_s(command):
                time.sleep(self.delay_s(command))
            session = dict(message.headers() or []).get(SESSION_HEADER, b"").decode() or None
            for key, value in self.simulator.respond(command, session):
                # Stamped as the report leaves: after the flush, the controller could
                # already have answered it (a play seen before its report's stamp).
                self.sent[command.id] = time.perf_counter()
                self.producer.produce(self.topics["REPORT_TOPIC"], value, key)
                self.producer.flush(5)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.consumer.close()

    def wait_for(self, count: int, timeout: float = 300) -> None:
        wait_for_count(self.received, count, timeout, "commands")


def send(bootstrap: str, topics: dict[str, str], kind: str, models: list[str | None]) -> None:
    """Send one instruction per model, all in one batch.

    One producer: a new idempotent producer costs ~0.5 s to start, which would
    otherwise dominate what is measured.
    """
    payloads = []
    for ts, model in enumerate(models):
        payload: dict[str, Any] = {"instruction_type": kind, "timestamp": ts}
        if model is not None:
            payload["model_id"] = model
        payloads.append(json.dumps(payload).encode())
    client.produce(bootstrap, topics["INSTRUCTION_TOPIC"], payloads)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def bench_latency(bootstrap: str) -> Rows:
    profile = dialects.PROFILES["seed"]
    topics = make_topics(bootstrap, "seed")
    budget = 30
    with (
        closing(Factory(bootstrap, topics, "seed", profile)) as factory,
        Controller(bootstrap, topics, {"OPTIMISER_BUDGET": str(budget)}) as controller,
    ):
        controller.start()
        send(bootstrap, topics, "optimize", [None])
        factory.wait_for(budget + 2)
        time.sleep(0.5)
    # Report sent -> next command received, for every step report of the round.
    arrivals = {command.id: at for at, command in factory.received}
    numbers = [c.id for _, c in factory.received]
    latency = [
        arrivals[numbers[i + 1]] - factory.sent[numbers[i]] for i in range(1, len(numbers) - 1)
    ]
    # The floor: the optimiser's own learn + propose for the same observations.
    steps = [c for _, c in factory.received if c.type == "opt_step"]
    surface = factory.simulator.surface
    snapshot = o.start(msgspec.structs.replace(profile, budget=budget), m.DEFAULT_KEY, 0)
    floor = []
    for command in steps[:-1]:
        point, snapshot = strategy.propose(snapshot)
        began = time.perf_counter()
        learnt = o.learn(snapshot, surface(o.named(profile, point)))
        if learnt.remaining:
            strategy.propose(learnt)
        floor.append(time.perf_counter() - began)
        snapshot = learnt
        del command
    overhead = [a - b for a, b in zip(latency, floor, strict=False)]

    def ms(values: list[float]) -> tuple[str, ...]:
        return tuple(f"{percentile(values, q) * 1e3:.1f}" for q in (50, 95, 100))

    return [
        ("report in -> next command out", *ms(latency)),
        ("optimiser learn + propose (floor)", *ms(floor)),
        ("controller overhead (difference)", *ms(overhead)),
    ]


def bench_throughput(bootstrap: str, quick: bool) -> Rows:
    rows: Rows = []
    profile = msgspec.structs.replace(dialects.PROFILES["seed"], budget=6)
    for sessions in (1, 10) if quick else (1, 10, 100):
        for workers in (1, 2):
            topics = make_topics(bootstrap, "seed")
            keys = [f"m{i}" for i in range(sessions)]
            settings = {"OPTIMISER_BUDGET": str(profile.budget), "SESSION_KEYS": ",".join(keys)}
            with (
                closing(Factory(bootstrap, topics, "seed", profile)) as factory,
                Controller(bootstrap, topics, settings, workers=workers) as controller,
            ):
                controller.start()
                time.sleep(3)  # let it start: measure the steady state
                cpu0, began = controller.cpu_seconds(), time.perf_counter()
                send(bootstrap, topics, "optimize", list(keys))
                expected = sessions * (profile.budget + 2)
                factory.wait_for(expected, timeout=600)
                finished = time.perf_counter()
                cpu = controller.cpu_seconds() - cpu0
                # Rates from the first command to the last: the instruction producer's own
                # start-up (~0.5 s for an idempotent producer) is not the controller's time.
                elapsed = factory.received[-1][0] - factory.received[0][0]
                cpu_share = cpu / (finished - began)
                rss = controller.peak_rss_mb()
            steps = sessions * profile.budget
            rows.append(
                (
                    str(sessions),
                    str(workers),
                    f"{steps}",
                    f"{steps / elapsed:.1f}",
                    f"{expected / elapsed:.1f}",
                    f"{100 * cpu_share:.0f}%",
                    f"{rss:.0f}",
                )
            )
    return rows


def bench_recovery(bootstrap: str) -> Rows:
    profile = dialects.PROFILES["seed"]
    topics = make_topics(bootstrap, "seed")
    hold = threading.Event()
    with ExitStack() as running:
        factory = running.enter_context(closing(Factory(bootstrap, topics, "seed", profile)))
        running.callback(hold.set)  # its thread, held on cmd-6, ends before it is closed
        settings = {"OPTIMISER_BUDGET": "10"}
        controller = running.enter_context(Controller(bootstrap, topics, settings))
        original = factory.simulator.respond

        def respond(
            command: msg.FactoryCommand, model: str | None = None
        ) -> list[tuple[bytes | None, bytes]]:
            if command.id == "cmd-6":
                hold.wait(60)
            return original(command, model)

        factory.simulator.respond = respond  # type: ignore[method-assign]
        controller.start()
        send(bootstrap, topics, "optimize", [None])
        factory.wait_for(7)
        time.sleep(SNAPSHOT_S + 1.5)  # a snapshot includes the round
        controller.kill()
        size = sum(p.stat().st_size for p in controller.recovery.rglob("*") if p.is_file())
        received = len(factory.received)
        began = time.perf_counter()
        controller.start()
        hold.set()
        factory.wait_for(received + 1, timeout=120)
        first = factory.received[received][0] - began
        factory.wait_for(12, timeout=120)
    return [
        ("restart -> next command", f"{first:.2f} s"),
        ("recovery directory size", f"{size / 1024:.0f} KiB"),
    ]


# --------------------------------------------------------------------------- hops at the defaults


class SyncWatcher:
    """The engine's side: records when each pause and play arrives."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from confluent_kafka import Consumer
        from confluent_kafka.cimpl import TopicPartition

        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": "bench",
                "fetch.wait.max.ms": 1,
                "isolation.level": ISOLATION,
            }
        )
        self.consumer.assign([TopicPartition(topic, 0, 0)])
        self.seen: list[tuple[float, msg.SyncMessage]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        for message in messages(self.consumer, self.stop.is_set, poll_s=0.05, strict=False):
            sync = msg.decode_sync(message.value())
            assert isinstance(sync, msg.SyncMessage)
            self.seen.append((time.perf_counter(), sync))

    def wait_for(self, count: int, timeout: float = 120) -> None:
        wait_for_count(self.seen, count, timeout, "sync messages")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.consumer.close()


def _stats_ms(values: list[float]) -> tuple[str, ...]:
    return (*(f"{percentile(values, q) * 1e3:.1f}" for q in (50, 99, 100)), str(len(values)))


def gauge(port: int, name: str) -> float | None:
    """A gauge's value from the controller's ``/metrics`` (``None`` until it is set)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
        for line in page.read().decode().splitlines():
            if line.startswith(f"{name} "):
                return float(line.split()[1])
    return None


def bench_hops(bootstrap: str, quick: bool) -> Rows:
    """Each hop of a round at the shipped defaults, the controller idle before it."""
    from confluent_kafka import Producer

    profile = dialects.PROFILES["seed"]
    topics = make_topics(bootstrap, "seed")
    slow_steps = lambda command: 2.0 if command.type == "opt_step" else 0.0  # noqa: E731
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    to_pause, to_command, to_play, step_to_next = [], [], [], []
    epoch_lag: list[float] = []  # the inputs' epoch lag gauge, before each try
    tries = 8 if quick else 20
    port = harness.free_port()
    api = {"BYTEWAX_DATAFLOW_API_ENABLED": "1", "BYTEWAX_DATAFLOW_API_PORT": str(port)}
    with (
        tempfile.TemporaryDirectory(prefix="bench-api-") as cache,
        closing(Factory(bootstrap, topics, "seed", profile, delay_s=slow_steps)) as factory,
        closing(SyncWatcher(bootstrap, topics["SYNC_TOPIC"])) as engine,
        Controller(
            bootstrap, topics, {**api, "BYTEWAX_DATAFLOW_API_CACHE_PATH": cache}
        ) as controller,
    ):
        controller.start()
        time.sleep(SNAPSHOT_S + 3)  # started, and past its first epochs
        for number in range(1, tries + 1):
            time.sleep(0.3 + (number * 0.37) % 1.2)  # arrivals land anywhere in an epoch
            lag = gauge(port, "controller_input_epoch_lag_seconds")
            if lag is not None:
                epoch_lag.append(lag)
            commands, syncs = len(factory.received), len(engine.seen)
            payload = json.dumps({"instruction_type": "retrain", "timestamp": number}).encode()
            producer.produce(topics["INSTRUCTION_TOPIC"], payload)
            producer.flush(5)
            sent = time.perf_counter()
            factory.wait_for(commands + 1)
            engine.wait_for(syncs + 2)
            to_pause.append(engine.seen[syncs][0] - sent)
            to_command.append(factory.received[commands][0] - sent)
            answered_at = factory.sent[factory.received[commands][1].id]
            to_play.append(engine.seen[syncs + 1][0] - answered_at)
        for round_ in range(1 if quick else 2):
            commands, syncs = len(factory.received), len(engine.seen)
            payload = json.dumps({"instruction_type": "optimize", "timestamp": 100 + round_})
            producer.produce(topics["INSTRUCTION_TOPIC"], payload.encode())
            producer.flush(5)
            factory.wait_for(commands + profile.budget + 2, timeout=300)
            engine.wait_for(syncs + 2, timeout=60)
            received = factory.received[commands:]
            for (_, answered), (arrived, _) in itertools.pairwise(received[1:]):  # after init
                step_to_next.append(arrived - factory.sent[answered.id])
            to_play.append(engine.seen[syncs + 1][0] - factory.sent[received[-1][1].id])
    return [
        ("instruction -> pause", *_stats_ms(to_pause)),
        ("instruction -> first command (train)", *_stats_ms(to_command)),
        ("step report after a 2 s step -> next command", *_stats_ms(step_to_next)),
        ("final report -> play", *_stats_ms(to_play)),
        ("inputs' epoch lag (controller_input_epoch_lag_seconds)", *_stats_ms(epoch_lag)),
    ]


def bench_pause_share(bootstrap: str, quick: bool) -> Rows:
    """The engine's pause in a 15-step rtcef round minus the factory's 1 s per command."""
    from confluent_kafka import Producer

    profile = dialects.PROFILES["rtcef"]
    topics = make_topics(bootstrap, "rtcef")
    one_second = lambda command: 0.0 if command.type == "opt_initialise" else 1.0  # noqa: E731
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    rows: Rows = []
    with (
        closing(Factory(bootstrap, topics, "rtcef", profile, delay_s=one_second)) as factory,
        closing(SyncWatcher(bootstrap, topics["SYNC_TOPIC"])) as engine,
        Controller(bootstrap, topics, {"CONTROLLER_DIALECT": "rtcef"}) as controller,
    ):
        controller.start()
        time.sleep(SNAPSHOT_S + 3)
        for round_ in range(1 if quick else 2):
            syncs, commands = len(engine.seen), len(factory.received)
            payload = {"id": round_, "instruction": "optimise", "timestamp": 1000 + round_}
            producer.produce(topics["INSTRUCTION_TOPIC"], json.dumps(payload).encode())
            producer.flush(5)
            engine.wait_for(syncs + 2, timeout=300)
            paused = engine.seen[syncs + 1][0] - engine.seen[syncs][0]
            received = [(at, c) for at, c in factory.received[commands:] if one_second(c)]
            answered = [c for _, c in received]
            # The factory's own time: from a command's arrival to its report's acknowledgement.
            factory_s = sum(factory.sent[c.id] - at for at, c in received)
            rows.append((str(round_ + 1), str(len(answered)), f"{paused:.2f}",
                         f"{factory_s:.2f}", f"{paused - factory_s:.3f}"))  # fmt: skip
    return rows


def bench_idle_cpu(bootstrap: str, quick: bool) -> Rows:
    """CPU of a controller with no input, per worker, over 30 s (10 s with --quick)."""
    rows: Rows = []
    seconds = 10 if quick else 30
    for workers in (1, 2):
        topics = make_topics(bootstrap, "seed")
        with Controller(bootstrap, topics, {}, workers=workers) as controller:
            controller.start()
            time.sleep(SNAPSHOT_S + 3)
            cpu0, began = controller.cpu_seconds(), time.perf_counter()
            time.sleep(seconds)
            share = (controller.cpu_seconds() - cpu0) / (time.perf_counter() - began)
        rows.append((str(workers), f"{seconds}", f"{100 * share:.1f}%",
                     f"{100 * share / workers:.1f}%"))  # fmt: skip
    return rows


# --------------------------------------------------------------------------- report


def table(title: str, header: tuple[str, ...], rows: Rows) -> str:
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def machine() -> str:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory = next(
        (
            line.split()[1]
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        ),
        "0",
    )
    return (
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit {commit or '?'}; "
        f"{os.cpu_count()} cores ({model}), {int(memory) // 1024 // 1024} GiB; "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


SECTIONS = ("state", "optimiser", "cost", "latency", "throughput", "recovery", "hops")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer seeds, sessions and tries")
    parser.add_argument("--no-save", action="store_true", help="do not write RESULTS.md")
    parser.add_argument("--only", action="append", choices=SECTIONS,
                        help="run only this section (repeatable; implies --no-save)")  # fmt: skip
    parser.add_argument(
        "--update", action="store_true", help="with --only: replace those sections in RESULTS.md"
    )
    args = parser.parse_args(argv)
    if args.update and not args.only:
        parser.error("--update goes with --only (a full run rewrites RESULTS.md)")
    wanted = set(args.only or SECTIONS)
    settings = f"-s {SNAPSHOT_S} -b 30, TICK_INTERVAL_S and every other setting at its default"
    parts = [
        f"# Benchmark results\n\n{machine()}\n\nCommand: `just bench`"
        f"{' --quick' if args.quick else ''}. Controllers run as shipped: {settings}.\n"
    ]
    print(parts[0], flush=True)

    def emit(text: str) -> None:
        parts.append(text)
        print(text, flush=True)

    if "state" in wanted:
        emit(table("1. State per session: size and snapshot + restore cost",
                   ("profile", "observations", "ours (bytes)", "seed design (bytes)", "smaller",
                    "ours (ms)", "seed design (ms)", "faster"),
                   bench_state(args.quick)))  # fmt: skip
    if "optimiser" in wanted:
        emit(table("3. Optimiser: time per step and median true f_val of the finalised step "
                   "after one round's budget",
                   ("profile", "surface", "method", "ms per step", "median best f_val",
                    "p (ours lower, paired)", "rounds"),
                   optimiser.bench(args.quick, RECORDINGS,
                                   None if args.no_save else REGRET_PLOT))
             + f"\nMedian simple regret after each evaluation:\n\n![regret curves]"
               f"({REGRET_PLOT.name})\n")  # fmt: skip
    if "cost" in wanted:
        emit(table("7. Optimiser at equal factory seconds: the real factory's recorded step "
                   "costs, half a shipped round's seconds per round",
                   ("surface", "seconds", "method", "median steps", "median seconds",
                    "median best f_val", "p (ours + cost lower, paired)", "rounds"),
                   costs.bench(args.quick, RECORDINGS, LOOP_TRAFFIC,
                               None if args.no_save else COST_PLOT))
             + f"\nMedian simple regret against factory seconds:\n\n![cost regret curves]"
               f"({COST_PLOT.name})\n")  # fmt: skip
    if not wanted & {"latency", "throughput", "recovery", "hops"}:
        return _save(parts, args.no_save or bool(args.only), args.update)
    with broker() as bootstrap:
        if "latency" in wanted:
            emit(table("2. Step latency through the broker (one round, 30 steps), ms",
                       ("measure", "p50", "p95", "max"), bench_latency(bootstrap)))  # fmt: skip
        if "throughput" in wanted:
            emit(table("4. Throughput against an instant factory (6 steps per session)",
                       ("sessions", "workers", "steps", "steps/s", "commands/s", "CPU",
                        "peak RSS MiB"), bench_throughput(bootstrap, args.quick)))  # fmt: skip
        if "recovery" in wanted:
            emit(table("5. Recovery after SIGKILL mid-round", ("measure", "value"),
                       bench_recovery(bootstrap)))  # fmt: skip
        if "hops" in wanted:
            emit(table("6a. Hops of an idle controller at the shipped defaults, ms "
                       "(goal: p50 <= 20, p99 <= 100)", ("hop", "p50", "p99", "max", "tries"),
                       bench_hops(bootstrap, args.quick)))  # fmt: skip
            emit(table("6b. The controller's share of the engine's pause: 15-step rtcef round, "
                       "factory 1 s per command (goal <= 0.5 s)",
                       ("round", "answered commands", "pause s", "factory s", "controller s"),
                       bench_pause_share(bootstrap, args.quick)))  # fmt: skip
            emit(table("6c. Idle CPU (no input) at the shipped defaults (goal <= 5 % per worker)",
                       ("workers", "seconds", "CPU (of one core)", "per worker"),
                       bench_idle_cpu(bootstrap, args.quick)))  # fmt: skip
    return _save(parts, args.no_save or bool(args.only), args.update)


def _save(parts: list[str], skip: bool, update: bool = False) -> int:
    if update and RESULTS.exists():
        RESULTS.write_text(merged(RESULTS.read_text(), parts[1:], machine()))
        print(f"sections replaced in {RESULTS.relative_to(ROOT)}")
    elif not skip:
        RESULTS.write_text("\n".join(parts))
        print(f"written to {RESULTS.relative_to(ROOT)}")
    return 0


def merged(results: str, sections: list[str], rerun: str) -> str:
    """``results`` with each of ``sections`` replacing the one of its number, noted as rerun."""
    head, *old = results.split("\n### ")
    numbered = {section.split(".", 1)[0]: section for section in old}
    for section in sections:
        body = section.removeprefix("### ")
        number = body.split(".", 1)[0]
        numbered[number] = (
            f"{body.rstrip()}\n\nRerun alone (`just bench --only ... --update`): {rerun}\n"
        )
    order = sorted(numbered, key=lambda n: (int("".join(c for c in n if c.isdigit())), n))
    return "\n### ".join([head, *(numbered[n] for n in order)])


if __name__ == "__main__":
    sys.exit(main())
