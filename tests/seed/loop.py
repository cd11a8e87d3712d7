"""The seed's loop: its Flink factory, inference engine and Observer, driven by this controller.

``python -m tests.seed.loop`` (``just seed-loop``) runs, on the same stream (the
maritime sample as the port's JSON lines, ``tests/seed/dataset.py``):

* ``ours``: this controller (seed dialect, the port's topic names) answering the
  port's own Observer, in its PyFlink controller's place;
* ``port``: the port's own controller, its PyFlink job ``python/controller_job``,
  unmodified (``tests/seed/port_controller.py`` says how it runs here);
* ``offline``: no controller (the Observer's instructions go unanswered, the
  engine keeps its starting model).

Each run gets a fresh broker, the seven topics, ``ModelFactoryJob`` and
``InferenceJob`` (``tests/seed/services.py``), and our controller; the stream is
fed at ``--rate`` records per second. Their engine drops every record it reads
while paused, so a round's wall time would cost the stream as many records as
the feeder sends meanwhile (at 50 a second, a minute's round drops 3,000
records, an eighth of the stream, where in real time this vessel's fixes are minutes
apart and a round costs a handful). The feeder therefore holds while the engine
is paused, and for up to 5 s after an instruction until the controller pauses
it (``Running.adapting``): stream time stands still from the Observer's
instruction to the end of its round, as it nearly does in real time, and every
run scores the same records. ``--no-hold`` feeds on
regardless, to see the drops.

A run ends when the stream is fed, no round is open and no instruction, command,
report or sync has been written for ``--quiet`` seconds. The comparison (one
table, the engine's MCC over stream time with the model swaps marked, every
round with its pause) goes to ``tests/seed/RESULTS.md`` and ``mcc.png``; each
run's small topics to ``tests/seed/traffic/<run>/<topic>.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dataflow.adapters.clock import now_ms
from tests.kafka import broker as kafka_broker
from tests.rtcef import stack
from tests.rtcef.loop import exclusive, say
from tests.rtcef.traffic import DEAD_LETTERS, Record, Tap, wait_until
from tests.seed import build as seed_build
from tests.seed import dataset, port_controller, services

HERE = Path(__file__).resolve().parent
DEFAULT_WORK = stack.ROOT / ".seed-loop"
MODES = ("ours", "port", "offline")
TOPICS = services.Topics()
#: Topics the tap follows: every small one (the stream itself is only fed).
FOLLOWED = (TOPICS.instructions, TOPICS.commands, TOPICS.reports, TOPICS.sync,
            TOPICS.datasets, TOPICS.assembly, DEAD_LETTERS)  # fmt: skip
#: Topics whose silence means the loop has settled.
BUSY = (TOPICS.instructions, TOPICS.commands, TOPICS.reports, TOPICS.sync)

GLOBAL_REPORT = re.compile(
    r"GLOBAL_REPORT: Report\{ts=(\d+), key='[^']*', runtime MCC=([^',]+)', batch MCC=([^}]+)\}"
)
SWAP = re.compile(r"Sync reached \((\d+) >= \d+\)\. Swapping\.")
SCHEDULED = re.compile(r"Scheduling model swap to (\S+) at T=(\d+)")
HEARTBEAT = re.compile(r"Engine Heartbeat: Key=\S+ count=(\d+) lastTS=(\d+)")
SWAPPED = "Engine swapped successfully."
#: Score windows averaged by the plot's lines.
ROLLING = 24
#: A JVM log line reporting a problem (Flink logs recovered task failures at WARN/INFO).
ERROR_LINE = re.compile(r"\bERROR\b|Exception\b|switched from \w+ to FAILED")


def json_value(_topic: str, data: bytes) -> dict[str, Any]:
    """A seed topic's value: a JSON object (anything else is undecodable)."""
    value = json.loads(data)
    if not isinstance(value, dict):
        raise ValueError(f"not a JSON object: {data[:80]!r}")
    return value


# --------------------------------------------------------------------------- preparing


@dataclass(frozen=True)
class Prepared:
    """What every run shares: the built jobs, the stream, the starting model."""

    build: seed_build.SeedBuild
    data: dataset.Prepared
    model: Path
    build_seconds: float
    #: The port controller's Python (``port`` runs only).
    pyflink: str | None = None


def prepare(work: Path, *, limit: int | None = None, port: bool = False) -> Prepared:
    """Build (cached), check the namespaces, write the stream, train the starting model.

    ``port``: also install the port controller's environment (cached).
    """
    began = time.monotonic()
    build = seed_build.ensure_built()
    pyflink = port_controller.ensure_python() if port else None
    built = round(time.monotonic() - began, 1)
    services.check_user_namespaces()
    data = dataset.prepare(work / "input", limit=limit)
    model = services.ensure_initial_model(build, data.train)
    return Prepared(build, data, model, built, pyflink)


@dataclass(frozen=True)
class Options:
    """How a run is driven."""

    budget: int = 10
    rate: float = 50.0
    min_gap: int = 604_800
    report_timeout_s: float = 120.0
    hold: bool = True
    quiet_s: float = 30.0
    timeout_s: float = 2400.0


def controller_env(bootstrap: str, options: Options) -> dict[str, str]:
    """This controller against the port's services: their topics, the loop's budget and gap."""
    return {
        **services.controller_env(bootstrap, TOPICS),
        "OPTIMISER_BUDGET": str(options.budget),
        "INSTRUCTION_MIN_GAP": str(options.min_gap),
        "REPORT_TIMEOUT_S": str(options.report_timeout_s),
        "LOG_FORMAT": "json",
    }


# --------------------------------------------------------------------------- one run


@dataclass
class Running:
    """One run's processes and what follows them."""

    jobs: services.SeedServices
    tap: Tap
    bootstrap: str
    #: Whether a controller answers the instructions (not in the ``offline`` run).
    controlled: bool

    def paused(self) -> bool:
        """Whether a round holds the engine: more pauses than plays on ``enginesync``."""
        kinds = [r.value.get("type") for r in self.tap.of(TOPICS.sync)]
        return kinds.count("pause") > kinds.count("play")

    def adapting(self, grace_s: float = 5.0) -> bool:
        """Whether the controller holds the engine or may be about to.

        Paused, or an instruction newer than the last sync came less than ``grace_s``
        ago: a controller answers one with a ``pause`` at once, or not at all (ours
        dead-letters a coalesced one, the port's ignores one that finds it busy,
        and every ``retrain``). The same rule for both controllers.
        """
        if self.paused():
            return True
        instruction, sync = self.tap.last(TOPICS.instructions), self.tap.last(TOPICS.sync)
        if instruction is None or (sync is not None and sync.broker_ms >= instruction.broker_ms):
            return False
        return now_ms() - instruction.broker_ms < grace_s * 1000

    def check(self) -> None:
        """Raise if a process died, a job failed or the tap broke."""
        self.jobs.check_alive()
        self.tap.check()


@contextmanager
def started(
    prepared: Prepared,
    run_dir: Path,
    mode: str,
    options: Options,
    progress: Callable[[Record], None] | None = None,
    controller_topics: dict[str, str] | None = None,
) -> Iterator[Running]:
    """A fresh broker, topics, both jobs and (``ours``) the controller; all stopped on exit.

    ``controller_topics`` overrides the controller's topic settings (e.g.
    ``{"INSTRUCTION_TOPIC": "..."}``); such topics are created too.
    """
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    with ExitStack() as exits:
        exits.enter_context(stack.interrupts_as_keyboard_interrupt())
        broker = kafka_broker.start(run_dir / "kafka")
        exits.callback(broker.stop)
        overrides = controller_topics or {}
        services.create_topics(broker.bootstrap, TOPICS, extra=(DEAD_LETTERS, *overrides.values()))
        folder = services.prepare_run_folder(run_dir, prepared.model)
        jobs = services.SeedServices(folder, prepared.build, broker.bootstrap, TOPICS)
        exits.callback(jobs.close)
        tap = exits.enter_context(Tap(
            progress=progress, bootstrap=broker.bootstrap, topics=FOLLOWED,
            decoder=json_value, bulk=frozenset(),
        ))  # fmt: skip
        _, factory_s = jobs.start_factory()
        _, inference_s = jobs.start_inference()
        say(f"{mode}: factory up in {factory_s:.0f} s, inference job in {inference_s:.0f} s")
        if mode == "ours":
            jobs.stack.start_controller({**controller_env(broker.bootstrap, options), **overrides})
        elif mode == "port":
            python = prepared.pyflink or port_controller.ensure_python()
            env = port_controller.environment(broker.bootstrap, python, prepared.build, run_dir)
            jobs.stack.start("controller", port_controller.command(python), env=env)
            wait_until(lambda: _port_running(run_dir), 120, "the port's controller job to run",
                       check=jobs.check_alive)  # fmt: skip
        jobs.check_alive()
        yield Running(jobs, tap, broker.bootstrap, controlled=mode != "offline")


def _port_running(run_dir: Path) -> bool:
    """Whether the port's controller job has its Kafka sources assigned (like the jobs')."""
    logs = port_controller.log_files(run_dir)
    text = "".join(path.read_text(errors="replace") for path in logs)
    return text.count(services.SPLITS_ASSIGNED) >= 2


def _progress(record: Record) -> None:
    value = record.value
    if record.topic == TOPICS.instructions:
        say(f"  instruction {value.get('instruction_type') or value.get('instruction')} "
            f"at t={value.get('timestamp')}")  # fmt: skip
    elif record.topic == TOPICS.sync:
        say(f"  sync   {value.get('type')} model={value.get('model_id')}")
    elif record.topic == TOPICS.commands and value.get("type") != "opt_step":
        say(f"  command {value.get('id')}: {value.get('type')}")
    elif record.topic == TOPICS.reports and value.get("status") == "error":
        say(f"  report {value.get('reply_id')}: error {value.get('error')}")
    elif record.topic == TOPICS.reports and value.get("model_path"):
        say(f"  model  {value.get('model_id')} at {value.get('model_path')}")
    elif record.topic == DEAD_LETTERS:
        say(f"  dead letter: {value}")


@dataclass
class Feeder:
    """The stream fed in a thread, holding while the engine is paused (``options.hold``)."""

    running: Running
    path: Path
    options: Options
    stop: threading.Event = field(default_factory=threading.Event)
    sent: int = 0
    held_s: float = 0.0
    error: BaseException | None = None
    thread: threading.Thread | None = None

    def start(self) -> Feeder:
        self.thread = threading.Thread(target=self._work, name="feeder", daemon=True)
        self.thread.start()
        return self

    def _work(self) -> None:
        hold = self.running.adapting if self.options.hold and self.running.controlled else None
        try:
            services.feed(self.running.bootstrap, self.path, TOPICS.input,
                          rate=self.options.rate, stop=self.stop, hold=hold,
                          on_sent=self._count)  # fmt: skip
        except BaseException as error:  # surfaced by check()
            self.error = error

    def _count(self, sent: int, held_s: float) -> None:
        self.sent, self.held_s = sent, held_s

    def check(self) -> None:
        if self.error is not None:
            raise RuntimeError("feeding the stream failed") from self.error

    @property
    def done(self) -> bool:
        return self.thread is not None and not self.thread.is_alive()

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(30)


@dataclass
class RunResult:
    """What one run measured (``result.json``)."""

    mode: str
    wall_s: float
    settled: bool = True
    failure: str | None = None
    fed: int = 0
    held_s: float = 0.0
    engine_records: int = 0
    scores: list[dict[str, Any]] = field(default_factory=list)
    swaps: list[dict[str, Any]] = field(default_factory=list)
    instructions: list[dict[str, Any]] = field(default_factory=list)
    commands: list[dict[str, Any]] = field(default_factory=list)
    reports: list[dict[str, Any]] = field(default_factory=list)
    syncs: list[dict[str, Any]] = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    datasets: int = 0
    dead_letters: list[dict[str, str]] = field(default_factory=list)
    undecodable: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    #: The exceptions that failed the inference job's tasks (one per failure).
    task_failures: list[str] = field(default_factory=list)


def run(prepared: Prepared, work: Path, mode: str, options: Options) -> RunResult:
    """One whole run: the stream fed to its end, every round finished (or a job failed)."""
    run_dir = work / mode
    began = time.monotonic()
    failure: str | None = None
    settled = False
    with started(prepared, run_dir, mode, options, _progress) as running:
        say(f"{mode}: feeding {prepared.data.infer_records} records at {options.rate:g}/s"
            + (", held while the engine is paused" if options.hold else ""))  # fmt: skip
        fed = Feeder(running, prepared.data.infer, options).start()

        def quiet() -> bool:
            if not fed.done or running.paused():
                return False
            newest = [running.tap.last(t) for t in BUSY]
            last = max((r.broker_ms for r in newest if r is not None), default=0)
            return now_ms() - last > options.quiet_s * 1000

        def healthy() -> None:
            running.check()
            fed.check()

        try:
            wait_until(quiet, options.timeout_s, f"the {mode} run to settle", check=healthy)
            settled = True
        except TimeoutError as error:
            say(f"{mode}: {error}; keeping what was measured, marked unfinished")
        except (stack.StackError, RuntimeError) as error:
            failure = str(error).splitlines()[0]
            say(f"{mode}: {failure}; keeping what was measured")
        finally:
            fed.close()
        running.tap.write(run_dir / "traffic")
        result = _result(mode, round(time.monotonic() - began, 1), running, fed)
        result.settled, result.failure = settled, failure
    (run_dir / "result.json").write_text(json.dumps(asdict(result), indent=1))
    return result


def run_or_failure(prepared: Prepared, work: Path, mode: str, options: Options) -> RunResult:
    """``run``, or a result naming why the run could not start (the other runs go on)."""
    try:
        return run(prepared, work, mode, options)
    except (stack.StackError, OSError) as error:
        failure = str(error).splitlines()[0]
        say(f"{mode}: could not run: {failure}")
        return RunResult(mode, 0.0, settled=False, failure=f"could not run: {failure}")


def _result(mode: str, wall_s: float, running: Running, fed: Feeder) -> RunResult:
    tap = running.tap
    result = RunResult(mode, wall_s, fed=fed.sent, held_s=round(fed.held_s, 1))
    read_logs(result, running.jobs.folder.root / "logs")
    result.instructions = [r.value for r in tap.of(TOPICS.instructions)]
    result.commands = [r.value for r in tap.of(TOPICS.commands)]
    result.reports = [r.value for r in tap.of(TOPICS.reports)]
    result.datasets = len(tap.of(TOPICS.assembly))
    syncs = tap.of(TOPICS.sync)
    result.syncs = [{**r.value, "broker_ms": r.broker_ms} for r in syncs]
    result.rounds = rounds(syncs, tap.of(TOPICS.commands), tap.of(TOPICS.reports))
    result.dead_letters = [r.value for r in tap.of(DEAD_LETTERS)] + list(tap.dead_letters)
    result.undecodable = list(tap.undecodable)
    return result


def read_logs(result: RunResult, logs: Path) -> None:
    """What the jobs' logs say: scores, swaps (and whether each took), records, failures."""
    inference = (logs / "inference.out").read_text(errors="replace")
    result.scores = [
        {"timestamp": int(m[1]), "runtime_mcc": _number(m[2]), "batch_mcc": _number(m[3])}
        for m in GLOBAL_REPORT.finditer(inference)
    ]
    result.swaps = []
    path = None
    for line in inference.splitlines():
        if scheduled := SCHEDULED.search(line):
            path = scheduled[1]
        elif swap := SWAP.search(line):
            result.swaps.append({"timestamp": int(swap[1]), "model_path": path, "ok": False})
        elif SWAPPED in line and result.swaps:
            result.swaps[-1]["ok"] = True
    counts = [int(m[1]) for m in HEARTBEAT.finditer(inference)]
    result.engine_records = max(counts, default=0)
    lines = inference.splitlines()
    result.task_failures = [  # each failure: the Task's line, then its exception's
        lines[i + 1].strip()[:200] for i, line in enumerate(lines[:-1])
        if "to FAILED with failure cause:" in line
    ]  # fmt: skip
    result.errors = []
    for name in ("factory", "inference"):
        text = (logs / f"{name}.out").read_text(errors="replace")
        result.errors += [f"{name}: {line.strip()[:300]}" for line in text.splitlines()
                          if ERROR_LINE.search(line)][:50]  # fmt: skip


def rounds(syncs: Sequence[Record], commands: Sequence[Record],
           reports: Sequence[Record]) -> list[dict[str, Any]]:  # fmt: skip
    """Each ``pause`` → ``play``: its kind, steps, failed reports, model and pause (broker time)."""
    out: list[dict[str, Any]] = []
    pause: Record | None = None
    for sync in syncs:
        if sync.value.get("type") == "pause":
            pause = sync
            continue
        if pause is None:
            continue
        inside = [c.value for c in commands if pause.broker_ms <= c.broker_ms <= sync.broker_ms]
        ids = {c.get("id") for c in inside}
        answers = [r.value for r in reports if r.value.get("reply_id") in ids]
        optimise = any(c.get("type") == "opt_initialise" for c in inside)
        out.append({
            "kind": "OPTIMIZE" if optimise else "RETRAIN",
            "paused_s": round((sync.broker_ms - pause.broker_ms) / 1000, 2),
            "steps": sum(c.get("type") == "opt_step" for c in inside),
            "errors": sum(r.get("status") == "error" for r in answers),
            "model_id": sync.value.get("model_id"),
            "completed": any(r.get("model_path") for r in answers),
        })  # fmt: skip
        pause = None
    return out


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value == value else None  # NaN: no score


# --------------------------------------------------------------------------- comparison


def _mean(values: Sequence[float]) -> float | None:
    return round(statistics.fmean(values), 3) if values else None


def table(results: Sequence[RunResult], prepared: Prepared) -> str:
    """The results table (markdown)."""
    firsts = [r.swaps[0]["timestamp"] for r in results if r.swaps]
    split = min(firsts) if firsts else None
    header = (
        "| run | wall | fed / scored by the engine | score windows | mean MCC "
        "| MCC before / after t₁ | instructions | rounds R/O (aborted) | commands "
        "| model swaps (failed) | pause → play (mean / max) | feeder held |"
    )
    lines = [header, "|" + "---|" * 12]
    for r in results:
        mccs = [s["batch_mcc"] for s in r.scores if s["batch_mcc"] is not None]
        before = [s["batch_mcc"] for s in r.scores if s["batch_mcc"] is not None
                  and split is not None and s["timestamp"] < split]  # fmt: skip
        after = [s["batch_mcc"] for s in r.scores if s["batch_mcc"] is not None
                 and split is not None and s["timestamp"] >= split]  # fmt: skip
        paused = [x["paused_s"] for x in r.rounds]
        kinds = [x["kind"] for x in r.rounds]
        aborted = sum(not x["completed"] for x in r.rounds)
        state = "" if r.settled else f" ({_failure_text(r)})"
        lines.append(
            f"| {r.mode}{state} | {r.wall_s:.0f} s | {r.fed} / {r.engine_records} "
            f"| {len(r.scores)} | {_mean(mccs)} | {_mean(before)} / {_mean(after)} "
            f"| {len(r.instructions)} | {kinds.count('RETRAIN')}/{kinds.count('OPTIMIZE')} "
            f"({aborted}) | {len(r.commands)} "
            f"| {sum(w['ok'] for w in r.swaps)} ({sum(not w['ok'] for w in r.swaps)}) | "
            + (f"{statistics.fmean(paused):.1f} s / {max(paused):.1f} s" if paused else "-")
            + f" | {r.held_s:.0f} s |"
        )
    data = prepared.data
    notes = [
        "",
        f"Stream: `{dataset.SAMPLE.name}` as the port's JSON lines, its last "
        f"{data.infer_records} records (stream time {_when(data.infer_first_timestamp):%Y-%m-%d}"
        f" to {_when(data.infer_last_timestamp):%Y-%m-%d}; the first {data.train_records} "
        f"trained the starting model). t₁ = {split} (the first model swap of any run), the "
        "same split for every run.",
    ]
    return "\n".join(lines + notes)


def _failure_text(result: RunResult) -> str:
    if result.failure and "job failed" in result.failure and result.task_failures:
        return f"their engine's job failed: {result.task_failures[-1]}"
    return result.failure or "unfinished"


def plot(results: Sequence[RunResult], path: Path) -> None:
    """Batch MCC over stream time, one line per run, model swaps marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 4.5))
    styles = {"ours": ("C0", "o"), "port": ("C1", "s"), "offline": ("C7", ".")}
    for r in results:
        colour, marker = styles.get(r.mode, ("C3", "x"))
        points = sorted((_when(s["timestamp"]), s["batch_mcc"]) for s in r.scores
                        if s["batch_mcc"] is not None)  # fmt: skip
        if points:
            times, values = [t for t, _ in points], [y for _, y in points]
            axes.scatter(times, values, color=colour, marker=marker, s=6, alpha=0.25)
            window = ROLLING
            means = [statistics.fmean(values[max(0, i - window + 1) : i + 1])
                     for i in range(len(values))]  # fmt: skip
            axes.plot(times, means, color=colour, lw=1.6,
                      label=f"{r.mode} (mean of the last {window} windows)")  # fmt: skip
        for swap in r.swaps:
            axes.axvline(_when(swap["timestamp"]), color=colour, alpha=0.35, ls="--")
    axes.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m-%d"))
    figure.autofmt_xdate()
    axes.set_ylabel("batch MCC (hourly GLOBAL_REPORT; dots: each window)")
    axes.set_title("The seed's services, maritime sample: engine MCC (dashed: model swaps)")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


READING = """\
Reading the figures: MCC is the batch MCC of the engine's hourly `GLOBAL_REPORT`
(the windows their Observer scores; a window with no positive, false positive or
false negative is not reported), as their job computes it: its formula
(`Scores.java`) gives values above 1 and a recall of -1 in windows without a
positive, plotted and averaged as reported. The engine resets its statistics at
each swap.
"fed / scored" counts the records sent to `maritime_input` and the engine's own
count (its heartbeat, every 10 records): records it read while paused are dropped.
"Pause → play" is from the controller's `pause` to its `play` on `enginesync`, broker time (the
topics use `LogAppendTime`); "feeder held" is the wall time the feeder waited for
a round (see the module docstring of `tests/seed/loop.py`). A round is "aborted"
when no report of it carried a model (the controller played the model the engine
had). Their engine swaps models on a `model_reports` record carrying
`model_path` (`train` and `opt_finalise` reports), at its next record; a swap
"failed" when the engine's task died in it (`NoSuchElementException` in
`SPSTInterface.getSdfaStateFor`: their engine carries the running automaton's
state into a model that has no state of that number). Flink restarts the task
from its checkpoint and the swap is tried again at another record; after 3
failures in 5 minutes the job fails, and the run ends there ("job failed")."""


def _when(timestamp: int) -> datetime:
    return datetime.fromtimestamp(timestamp, tz=UTC)


def load_result(path: Path) -> RunResult:
    """A run's ``result.json``, as ``run`` wrote it."""
    return RunResult(**json.loads(path.read_text()))


def write_results(results: Sequence[RunResult], prepared: Prepared, options: Options,
                  out: Path) -> None:  # fmt: skip
    """RESULTS.md, mcc.png and each run's small topics beside it."""
    listed = "\n".join(
        f"* {r.mode}: " + (", ".join(
            f"{x['kind']} ({x['steps']} steps, {x['errors']} errors) {x['paused_s']} s → model "
            f"{x['model_id']}{'' if x['completed'] else ' (aborted)'}" for x in r.rounds
        ) or "no rounds")
        for r in results
    )  # fmt: skip
    checks = "\n".join(
        f"* {r.mode}: {len(r.dead_letters)} dead letters, {len(r.undecodable)} undecodable, "
        f"{len(r.task_failures)} task failures of the inference job"
        + (f" ({', '.join(sorted(set(r.task_failures)))})" if r.task_failures else "")
        + f", {len(r.errors)} error lines in the jobs' logs"
        + "".join(f"\n  * `{line[:160]}`" for line in r.errors[:5])
        for r in results
    )
    text = (
        "# The seed's services: this controller, the port's own, and no adaptation\n\n"
        f"Written by `just seed-loop` (`python -m tests.seed.loop`); {time.strftime('%Y-%m-%d')}."
        f" Build {prepared.build_seconds} s (0 s: cached). Budget {options.budget} steps, "
        f"INSTRUCTION_MIN_GAP {options.min_gap} s of stream time, REPORT_TIMEOUT_S "
        f"{options.report_timeout_s:g}, fed at {options.rate:g} records/s"
        + (", held while the engine is paused" if options.hold else " without holding")
        + ".\n\n" + table(results, prepared) + "\n\n![MCC over stream time](mcc.png)\n\n"
        + READING + "\n\n## Rounds (pause → play)\n\n" + listed
        + "\n\n## Checks\n\n" + checks + "\n"
    )  # fmt: skip
    out.write_text(text)
    plot(results, out.parent / "mcc.png")


def keep_traffic(results: Sequence[RunResult], work: Path, out: Path) -> None:
    """Copy each run's recorded topics beside the results."""
    for result in results:
        target, recorded = out / "traffic" / result.mode, work / result.mode / "traffic"
        if target.exists():
            shutil.rmtree(target)
        if recorded.exists():
            shutil.copytree(recorded, target)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.seed.loop",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = Options()
    parser.add_argument("--runs", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument(
        "--budget",
        type=int,
        default=defaults.budget,
        help=f"opt_step commands per OPTIMIZE round ({defaults.budget})",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=defaults.rate,
        help=f"records fed per second ({defaults.rate:g})",
    )
    parser.add_argument(
        "--min-gap",
        type=int,
        default=defaults.min_gap,
        help=f"INSTRUCTION_MIN_GAP, stream seconds ({defaults.min_gap}: a week)",
    )
    parser.add_argument(
        "--no-hold",
        dest="hold",
        action="store_false",
        help="feed on while the engine is paused (it drops those records)",
    )
    parser.add_argument(
        "--quiet",
        type=float,
        default=defaults.quiet_s,
        help=f"seconds of silence that end a run ({defaults.quiet_s:g})",
    )
    parser.add_argument("--limit", type=int, help="use only the sample's first N rows")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite the results from the runs already in --work (no run)",
    )
    args = parser.parse_args(argv)  # fmt: skip
    options = Options(budget=args.budget, rate=args.rate, min_gap=args.min_gap,
                      hold=args.hold, quiet_s=args.quiet)  # fmt: skip
    with stack.interrupts_as_keyboard_interrupt(), exclusive(args.work):
        try:
            prepared = prepare(args.work, limit=args.limit, port="port" in args.runs)
            say(f"prepared: {prepared.data.infer_records} records to feed; "
                f"build {prepared.build_seconds} s")  # fmt: skip
            if args.report_only:
                results = [load_result(args.work / mode / "result.json") for mode in args.runs]
                for result in results:  # what is read from the logs, read again
                    read_logs(result, args.work / result.mode / "logs")
            else:
                results = [run_or_failure(prepared, args.work, mode, options)
                           for mode in args.runs]  # fmt: skip
        except KeyboardInterrupt:
            say("interrupted: every process was stopped")
            return 130
        except (stack.StackError, seed_build.SeedBuildError) as error:
            say(f"seed-loop: {error}")
            return 1
    write_results(results, prepared, options, args.results)
    keep_traffic(results, args.work, args.results.parent)
    print(args.results.read_text())
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main())
