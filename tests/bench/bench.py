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
3. Optimiser speed and quality over many seeds: ours, ``gp_minimize`` and random
   search with the same budget, on synthetic surfaces and the recorded reports.
4. Throughput: 1, 10 and 100 concurrent sessions against an instant factory,
   with 1 and 2 workers: steps per second, CPU and peak memory.
5. Recovery: SIGKILL mid-round, then the time from restart to the next command,
   and the recovery directory's size.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import pickle
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from dataflow import recovery
from dataflow.domain import machine as m
from dataflow.domain import messages as msg
from dataflow.domain import optimizer as o
from dataflow.sim.factory import Behaviour, FactorySimulator
from dataflow.sim.surfaces import SYNTHETIC, recorded
from tests.kafka import broker as harness
from tests.kafka import client

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
RECORDINGS = Path(os.environ.get("RTCEF_SHARED_DIR", ROOT.parent / "shared")) / (
    "data/rtcef-recordings/cards"
)
Rows = list[tuple[str, ...]]


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
    space = o._space(profile)
    points = [o._to_point(profile, p) for p in space.rvs(count, random_state=rng)]
    observations = tuple(o.Observation(p, surface(o.named(profile, p))) for p in points)
    big = msgspec.structs.replace(profile, budget=count + 1)
    return msgspec.structs.replace(o.start(big, "bench", 0), observations=observations)


def seed_design_bytes(profile: o.Profile, snapshot: o.OptimiserSnapshot) -> bytes:
    """The seed's state: a live skopt Optimizer told every observation, pickled, base64 in JSON."""
    from skopt import Optimizer

    dimensions = o._space(profile).dimensions
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
        profile = o.PROFILES[name]
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
    running = harness.start(tempfile.mkdtemp(prefix="bench-kafka-"))
    try:
        yield running.bootstrap
    finally:
        running.stop()


class Controller:
    """The controller process, as deployed (bytewax.run with recovery)."""

    def __init__(
        self,
        bootstrap: str,
        topics: dict[str, str],
        env: dict[str, str],
        workers: int = 1,
        directory: Path | None = None,
    ) -> None:
        self.directory = directory or Path(tempfile.mkdtemp(prefix="bench-recovery-"))
        recovery.ensure(self.directory, 1)
        self.env = {
            **os.environ,
            **topics,
            **env,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
            "TICK_INTERVAL_S": "1",
        }
        self.workers = workers
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [
            sys.executable,
            "-m",
            "bytewax.run",
            "dataflow.flow:get_flow()",
            "-w",
            str(self.workers),
            "-r",
            str(self.directory),
            "-s",
            os.environ.get("BENCH_SNAPSHOT_S", "1"),
            "-b",
            "10",
        ]
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=self.env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=open(os.environ.get("BENCH_LOG_FILE", os.devnull), "ab"),  # noqa: SIM115
        )

    def cpu_seconds(self) -> float:
        assert self.process is not None
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_mb(self) -> float:
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self, sig: int = signal.SIGINT) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


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


class Factory:
    """An instant factory that timestamps each report it sends and each command it receives."""

    def __init__(
        self, bootstrap: str, topics: dict[str, str], dialect: msg.Dialect, profile: o.Profile
    ) -> None:
        from confluent_kafka import Consumer, Producer
        from confluent_kafka.cimpl import TopicPartition

        self.simulator = FactorySimulator(dialect, profile, SYNTHETIC["bowl"](profile), Behaviour())
        self.topics = topics
        self.consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": "bench", "fetch.wait.max.ms": 1}
        )
        self.consumer.assign([TopicPartition(topics["COMMAND_TOPIC"], 0, 0)])
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
        self.received: list[tuple[float, msg.FactoryCommand]] = []
        self.sent: dict[int | str, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        seen: set[bytes] = set()
        while not self.stop.is_set():
            message = self.consumer.poll(0.05)
            if message is None or message.error():
                continue
            now = time.perf_counter()
            ident = dict(message.headers() or []).get("message-id", b"")
            if ident in seen:
                continue  # a replayed duplicate (recovery benchmark)
            seen.add(ident)
            command = msg.decode_command(message.value())
            assert isinstance(command, msg.FactoryCommand)
            self.received.append((now, command))
            for key, value in self.simulator.respond(command):
                self.producer.produce(self.topics["REPORT_TOPIC"], value, key)
                self.producer.flush(5)
                self.sent[command.id] = time.perf_counter()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.consumer.close()

    def wait_for(self, count: int, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        if len(self.received) < count:
            raise TimeoutError(f"{len(self.received)} of {count} commands after {timeout}s")


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
    profile = o.PROFILES["seed"]
    topics = make_topics(bootstrap, "seed")
    budget = 30
    controller = Controller(bootstrap, topics, {"OPTIMISER_BUDGET": str(budget)})
    factory = Factory(bootstrap, topics, "seed", profile)
    controller.start()
    send(bootstrap, topics, "optimize", [None])
    factory.wait_for(budget + 2)
    time.sleep(0.5)
    controller.stop()
    factory.close()
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
        point, snapshot = o.propose(snapshot)
        began = time.perf_counter()
        learnt = o.learn(snapshot, surface(o.named(profile, point)))
        if learnt.remaining:
            o.propose(learnt)
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
    profile = msgspec.structs.replace(o.PROFILES["seed"], budget=6)
    for sessions in (1, 10) if quick else (1, 10, 100):
        for workers in (1, 2):
            topics = make_topics(bootstrap, "seed")
            keys = [f"m{i}" for i in range(sessions)]
            controller = Controller(
                bootstrap,
                topics,
                {
                    "OPTIMISER_BUDGET": str(profile.budget),
                    "SESSION_KEYS": ",".join(keys),
                },
                workers=workers,
            )
            factory = Factory(bootstrap, topics, "seed", profile)
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
            controller.stop()
            factory.close()
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
    profile = o.PROFILES["seed"]
    topics = make_topics(bootstrap, "seed")
    controller = Controller(bootstrap, topics, {"OPTIMISER_BUDGET": "10"})
    factory = Factory(bootstrap, topics, "seed", profile)
    hold = threading.Event()
    original = factory.simulator.respond

    def respond(command: msg.FactoryCommand) -> list[tuple[bytes | None, bytes]]:
        if command.id == "cmd-6":
            hold.wait(60)
        return original(command)

    factory.simulator.respond = respond  # type: ignore[method-assign]
    controller.start()
    send(bootstrap, topics, "optimize", [None])
    factory.wait_for(7)
    time.sleep(1.5)  # a snapshot includes the round
    controller.stop(signal.SIGKILL)
    size = sum(p.stat().st_size for p in controller.directory.rglob("*") if p.is_file())
    received = len(factory.received)
    began = time.perf_counter()
    controller.start()
    hold.set()
    factory.wait_for(received + 1, timeout=120)
    first = factory.received[received][0] - began
    factory.wait_for(12, timeout=120)
    controller.stop()
    factory.close()
    return [
        ("restart -> next command", f"{first:.2f} s"),
        ("recovery directory size", f"{size / 1024:.0f} KiB"),
    ]


# --------------------------------------------------------------------------- optimiser quality


def bench_optimiser(quick: bool) -> Rows:
    from skopt import gp_minimize

    seeds = 5 if quick else 20
    rows: Rows = []
    cases: list[tuple[str, str, Callable[[o.Profile], Callable[[o.Params], float]]]] = [
        ("seed", "bowl", SYNTHETIC["bowl"]),
        ("seed", "rastrigin", SYNTHETIC["rastrigin"]),
        ("rtcef", "bowl", SYNTHETIC["bowl"]),
        ("rtcef", "rastrigin", SYNTHETIC["rastrigin"]),
    ]
    if RECORDINGS.exists():
        cases.append(("rtcef", "recorded", lambda p: recorded(p, RECORDINGS)))
    for profile_name, surface_name, make in cases:
        profile = o.PROFILES[profile_name]
        surface = make(profile)
        space = o._space(profile)
        results: dict[str, tuple[list[float], list[float]]] = {
            "ours": ([], []),
            "skopt": ([], []),
            "random": ([], []),
        }
        for seed in range(seeds):
            began = time.perf_counter()
            snapshot = o.run_optimization(surface, profile, key=f"bench-{seed}")
            results["ours"][0].append((time.perf_counter() - began) / profile.budget)
            results["ours"][1].append(min(ob.y for ob in snapshot.observations))

            def objective(
                x: list[Any],
                surface: Callable[[o.Params], float] = surface,
                profile: o.Profile = profile,
            ) -> float:
                return surface(o.named(profile, o._to_point(profile, x)))

            began = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = gp_minimize(
                    objective,
                    space.dimensions,
                    n_calls=profile.budget,
                    n_initial_points=profile.n_initial,
                    random_state=seed,
                )
            results["skopt"][0].append((time.perf_counter() - began) / profile.budget)
            results["skopt"][1].append(float(result.fun))

            rng = np.random.RandomState(seed)
            began = time.perf_counter()
            best = min(objective(x) for x in space.rvs(profile.budget, random_state=rng))
            results["random"][0].append((time.perf_counter() - began) / profile.budget)
            results["random"][1].append(best)
        for method, (times, bests) in results.items():
            rows.append(
                (
                    profile_name,
                    surface_name,
                    method,
                    f"{statistics.median(times) * 1e3:.1f}",
                    f"{statistics.median(bests):.4f}",
                    str(seeds),
                )
            )
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer seeds and sessions")
    parser.add_argument("--no-save", action="store_true", help="do not write RESULTS.md")
    args = parser.parse_args(argv)
    parts = [
        f"# Benchmark results\n\n{machine()}\n\nCommand: `just bench`"
        f"{' --quick' if args.quick else ''}.\n"
    ]
    print(parts[0], flush=True)

    def emit(text: str) -> None:
        parts.append(text)
        print(text, flush=True)

    emit(
        table(
            "1. State per session: size and snapshot + restore cost",
            (
                "profile",
                "observations",
                "ours (bytes)",
                "seed design (bytes)",
                "smaller",
                "ours (ms)",
                "seed design (ms)",
                "faster",
            ),
            bench_state(args.quick),
        )
    )
    emit(
        table(
            "3. Optimiser: time per step and median best f_val after one round's budget",
            ("profile", "surface", "method", "ms per step", "median best f_val", "seeds"),
            bench_optimiser(args.quick),
        )
    )
    with broker() as bootstrap:
        emit(
            table(
                "2. Step latency through the broker (one round, 30 steps), ms",
                ("measure", "p50", "p95", "max"),
                bench_latency(bootstrap),
            )
        )
        emit(
            table(
                "4. Throughput against an instant factory (6 steps per session)",
                ("sessions", "workers", "steps", "steps/s", "commands/s", "CPU", "peak RSS MiB"),
                bench_throughput(bootstrap, args.quick),
            )
        )
        emit(
            table(
                "5. Recovery after SIGKILL mid-round",
                ("measure", "value"),
                bench_recovery(bootstrap),
            )
        )
    if not args.no_save:
        RESULTS.write_text("\n".join(parts))
        print(f"written to {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
