"""The real RTCEF loop: the original services and Wayeb, driven by this controller or another.

``python -m tests.rtcef.loop`` (``just rtcef-loop``) runs three runs on the same
stream, the real maritime sample converted by ``tests/rtcef/maritime.py``:

* ``ours``: this controller (rtcef dialect, Avro) in the original controller's place;
* ``original``: the original controller, ``services/optimiser.py``;
* ``offline``: no adaptation (upstream's ``start_offline``: no Observer).

Each run gets a fresh broker on ``localhost:9092``, the Wayeb JVMs, the factory,
collector, engine, controller, observer and replayer, and ends when the engine
has scored the whole stream and no round is open. Its topic traffic is recorded
in the recordings' layout under ``.rtcef-loop/<run>/traffic``, with
``step_costs.jsonl``: each answered step's parameters, score and factory seconds
(the cost surface of benchmark section 7); the comparison (one table, one plot of
MCC over stream time with the model swaps marked) goes to
``tests/rtcef/RESULTS.md`` and ``tests/rtcef/mcc.png``. ``--set NAME=VALUE`` gives
our controller a setting (``ROUND_BUDGET_S=126``, say).
"""

from __future__ import annotations

import argparse
import fcntl
import itertools
import json
import os
import re
import shutil
import statistics
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from confluent_kafka.admin import AdminClient, NewTopic

from dataflow.adapters.clock import now_ms
from tests.rtcef import maritime, stack, wayeb
from tests.rtcef.traffic import DEAD_LETTERS, Record, Tap, wait_until

HERE = Path(__file__).resolve().parent
DEFAULT_WORK = stack.ROOT / ".rtcef-loop"
MODES = ("ours", "original", "offline")
TEMPLATE = "port/conf_1.ini"
#: The template's offline optimisation (the original's ``initialModel``), for our warm start.
OFFLINE_PICKLE = (
    stack.VENDOR / "data" / "saved_models" / "optimisation"
    / "skopt_model_enteringAreaGPH_0_sv_nnv_m_nt_c_month_trm_1.pkl"
)  # fmt: skip
#: The template's starting parameters (``init.model.param.*``), as INITIAL_PARAMS.
INITIAL_PARAMS = {
    "confidence": 0.11137427805691247, "order": 4,
    "pmin": 0.007072005024638059, "gamma": 0.007053011729848838,
}  # fmt: skip
KEEP = 5  # observations both controllers carry into the next round (keepNEvals)
WEEK = 604_800
#: A log line reporting a problem: a Python traceback or error, a JVM ERROR or exception.
ERROR_LINE = re.compile(r"Traceback|\bERROR\b|Exception\b|\b[Ee]rror:")


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


# --------------------------------------------------------------------------- preparing


@dataclass(frozen=True)
class Prepared:
    """What every run shares: the built parts and the converted stream."""

    python: str
    classpath: str
    stream: Path
    records: int
    window: stack.Window
    warm_start: Path
    build_seconds: dict[str, float]


def prepare(work: Path, *, limit: int | None = None) -> Prepared:
    """Build Wayeb, install the services' Python, convert the stream (each cached)."""
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    began = time.monotonic()
    classpath = wayeb.ensure_built()
    timings["wayeb"] = round(time.monotonic() - began, 1)
    began = time.monotonic()
    python = stack.ensure_services_python()
    timings["python 3.9 env"] = round(time.monotonic() - began, 1)
    stream = work / ("stream.json" if limit is None else f"stream-{limit}.json")
    stats = maritime.convert(stack.SAMPLE, stream, limit=limit)
    first, last = int(stats["first_timestamp"]), int(stats["last_timestamp"])
    window = stack.Window(start=first, end=last, engine_start=first + WEEK)
    warm = work / "warm-start.json"
    _warm_start_file(warm)
    return Prepared(python, classpath, stream, int(stats["records"]), window, warm, timings)


def _warm_start_file(path: Path) -> None:
    from dataflow.tools import warmstart

    if warmstart.main([str(OFFLINE_PICKLE), "-o", str(path)]) != 0:
        raise stack.StackError(f"could not convert {OFFLINE_PICKLE}")


# --------------------------------------------------------------------------- one run


@dataclass
class RunResult:
    """What one run measured."""

    mode: str
    wall_s: float
    scores: list[dict[str, Any]] = field(default_factory=list)  # timestamp, mcc, model_version
    instructions: list[dict[str, Any]] = field(default_factory=list)
    commands: list[dict[str, Any]] = field(default_factory=list)
    reports: list[dict[str, Any]] = field(default_factory=list)
    syncs: list[dict[str, Any]] = field(default_factory=list)  # + broker_ms
    models: list[dict[str, Any]] = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)  # kind, paused_s, model_id
    #: Broker time from each step's report to the controller's next command (ms).
    hops_ms: list[int] = field(default_factory=list)
    #: Each answered ``opt_step``: its parameters, its score and the factory's seconds
    #: (broker time from the command to its report): the bench's cost surface.
    step_costs: list[dict[str, Any]] = field(default_factory=list)
    #: Our controller's settings beyond the loop's own (``--set``).
    settings: dict[str, str] = field(default_factory=dict)
    #: The run's name in the tables (the mode, with its seed when runs repeat).
    label: str = ""
    #: Both controllers' optimiser seed (the original's ``[optimiser] seed``, our
    #: ``OPTIMISER_SEED``); None: the template's and our default.
    seed: int | None = None
    #: False when the run did not finish within its time limit (the figures are partial).
    settled: bool = True
    dead_letters: list[dict[str, str]] = field(default_factory=list)
    undecodable: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.label or self.mode

    def swaps(self) -> list[dict[str, Any]]:
        """The score reports where the engine's model version changed."""
        out, current = [], None
        for score in self.scores:
            if current is not None and score["model_version"] != current:
                out.append(score)
            current = score["model_version"]
        return out


def controller_env(prepared: Prepared, budget: int, run_dir: Path) -> dict[str, str]:
    """This controller's settings for the loop: the rtcef dialect, Avro, the template's start."""
    return {
        "KAFKA_BOOTSTRAP_SERVERS": stack.BOOTSTRAP,
        "CONTROLLER_DIALECT": "rtcef",
        "WIRE_ENCODING": "avro",
        "OPTIMISER_BUDGET": str(budget),
        "INITIAL_PARAMS": json.dumps(INITIAL_PARAMS),
        "WARM_START_FILE": str(prepared.warm_start),
        "LOG_FORMAT": "json",
    }


@contextmanager
def services(prepared: Prepared, run_dir: Path, mode: str, budget: int,
             observer: bool = True, settings: Mapping[str, str] | None = None,
             seed: int | None = None) -> Iterator[tuple[stack.Stack, Tap]]:  # fmt: skip
    """Everything of one run up and the tap following it; all stopped on exit or SIGTERM."""
    stack.check_ports_free()  # before anything of a run that may still be going is touched
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    with ExitStack() as exits:
        exits.enter_context(stack.interrupts_as_keyboard_interrupt())
        exits.enter_context(stack.loop_broker(run_dir / "kafka"))
        create_loop_topics()
        original = {"nTotalEvals": str(KEEP + budget), "nInitBench": str(min(10, KEEP + budget)),
                    **({} if seed is None else {"seed": str(seed)})}  # fmt: skip
        services_ = stack.Stack(run_dir)
        services_.config = stack.write_config(run_dir, prepared.stream, prepared.window,
                                              template=TEMPLATE, optimiser=original)  # fmt: skip
        exits.callback(services_.close)
        tap = exits.enter_context(Tap(progress=_progress))
        say(f"{mode}: starting Wayeb server and service")
        services_.start_wayeb("wayeb_server", prepared.classpath, ["server"], stack.SERVER_PORTS)
        services_.start_wayeb(
            "wayeb_service", prepared.classpath,
            ["service", "--pythonPort", str(stack.SERVICE_PORTS[1]),
             "--javaPort", str(stack.SERVICE_PORTS[0])], stack.SERVICE_PORTS,
        )  # fmt: skip
        for name in ("factory", "collector", "engine"):
            services_.start_rtcef(name, prepared.python)
        if mode == "ours":
            seeded = {} if seed is None else {"OPTIMISER_SEED": str(seed)}
            services_.start_controller({**controller_env(prepared, budget, run_dir),
                                        **seeded, **(settings or {})})  # fmt: skip
        else:
            services_.start_rtcef("optimiser", prepared.python)
        if observer and mode != "offline":
            services_.start_rtcef("observer", prepared.python)
        time.sleep(3)  # the consumers assign their partitions before the stream starts
        services_.check_alive()
        services_.start_rtcef("replayer", prepared.python)
        say(f"{mode}: replaying {prepared.records} records")
        yield services_, tap


def create_loop_topics() -> None:
    """The 11 topics and our dead-letter topic, stamped with the broker's append time.

    ``LogAppendTime`` makes every message's timestamp the broker's clock, so pause
    durations and hops are measured on one clock whoever produced the messages.
    """
    client = AdminClient({"bootstrap.servers": stack.BOOTSTRAP})
    config = {"message.timestamp.type": "LogAppendTime"}
    topics = [NewTopic(t, num_partitions=1, replication_factor=1, config=config)
              for t in (*stack.TOPICS, DEAD_LETTERS)]  # fmt: skip
    for future in client.create_topics(topics, operation_timeout=30).values():
        future.result(timeout=60)


def _progress(record: Record) -> None:
    value = record.value
    if record.topic == "model_runtime_scores":
        metrics = json.loads(value["batch_metrics"] or "{}")
        say(f"  score  t={value['timestamp']} model={value['model_version']} "
            f"mcc={metrics.get('mcc', float('nan')):.3f}")  # fmt: skip
    elif record.topic == "optimiser_instructions":
        say(f"  instruction {value['id']}: {value['instruction']} at t={value['timestamp']}")
    elif record.topic == "engine_sync":
        say(f"  sync   {value['type']} model={value['model_id']}")
    elif record.topic == "factory_commands" and value["type"] != "opt_step":
        say(f"  command {value['id']}: {value['type']}")
    elif record.topic == "model_versions":
        say(f"  model  {value['id']} ({value['creation_method']}) pt={value['pt']}")


def run(prepared: Prepared, work: Path, mode: str, budget: int, *, quiet_s: float = 45.0,
        timeout_s: float = 1800.0, settings: Mapping[str, str] | None = None,
        seed: int | None = None, label: str | None = None) -> RunResult:  # fmt: skip
    """One whole run: the stream replayed to its end, every round finished."""
    label = label or mode
    run_dir = work / label
    began = time.monotonic()
    with services(prepared, run_dir, mode, budget, settings=settings, seed=seed) as (
        services_,
        tap,
    ):
        last_input = prepared.records - 1

        def settled() -> bool:
            position = tap.last("engine_current_position")
            if position is None or position.value["offset"] < last_input:
                return False
            syncs = tap.of("engine_sync")
            if sum(s.value["type"] == "pause" for s in syncs) != sum(
                s.value["type"] == "play" for s in syncs
            ):
                return False
            busy = [tap.last(t) for t in ("optimiser_instructions", "factory_commands",
                                          "factory_reports", "engine_sync")]  # fmt: skip
            newest = max((r.broker_ms for r in busy if r is not None), default=0)
            return now_ms() - newest > quiet_s * 1000

        def healthy() -> None:
            services_.check_alive()
            tap.check()

        try:
            wait_until(settled, timeout_s, f"the {mode} run to finish", check=healthy)
            finished = True
        except TimeoutError as error:
            say(f"{mode}: {error}; keeping what was measured, marked unsettled")
            finished = False
        tap.write(run_dir / "traffic")
        result = _result(mode, round(time.monotonic() - began, 1), tap)
        result.settled = finished
        result.errors = service_errors(services_)
        result.settings = dict(settings or {}) if mode == "ours" else {}
        result.label, result.seed = label, seed
        with (run_dir / "traffic" / STEP_COSTS).open("w") as out:
            out.writelines(json.dumps(row) + "\n" for row in result.step_costs)
    (run_dir / "result.json").write_text(json.dumps(asdict(result), indent=1))
    return result


def service_errors(services_: stack.Stack) -> list[str]:
    """Lines of the real services' logs that report an error or a traceback."""
    found = []
    for service in services_.services:
        if service.name == "controller":
            continue
        logs = [service.log, services_.run_dir / "logs" / f"{service.name}_service.log"]
        for log in logs:
            if not log.exists():
                continue
            for line in log.read_text(errors="replace").splitlines():
                if ERROR_LINE.search(line):
                    found.append(f"{service.name}: {line.strip()[:300]}")
    return found


def _result(mode: str, wall_s: float, tap: Tap) -> RunResult:
    result = RunResult(mode, wall_s)
    for record in tap.of("model_runtime_scores"):
        metrics = json.loads(record.value["batch_metrics"] or "{}")
        result.scores.append({
            "timestamp": record.value["timestamp"], "model_version": record.value["model_version"],
            "mcc": metrics.get("mcc"), "creation_method": record.value["creation_method"],
        })  # fmt: skip
    result.instructions = [r.value for r in tap.of("optimiser_instructions")]
    result.commands = [r.value for r in tap.of("factory_commands")]
    result.reports = [r.value for r in tap.of("factory_reports")]
    result.models = [r.value for r in tap.of("model_versions")]
    syncs = tap.of("engine_sync")
    result.syncs = [{**r.value, "broker_ms": r.broker_ms} for r in syncs]
    commands = tap.of("factory_commands")
    pauses = [s for s in syncs if s.value["type"] == "pause"]
    models = {m["id"]: m for m in result.models}
    answers = {r.value["reply_id"]: r.value for r in tap.of("factory_reports")}
    # A round ends with its play; its commands are those since the play before (with
    # PAUSE_ENGINE=finalise an OPTIMIZE round's steps come before its pause).
    pause: Record | None = None
    previous_play = -1
    for sync in syncs:
        if sync.value["type"] == "pause":
            pause = sync
        elif pause is not None:
            inside = [c for c in commands if previous_play < c.broker_ms <= sync.broker_ms]
            optimise = any(c.value["type"] == "opt_finalise" for c in inside)
            later = [p.broker_ms for p in pauses if p.broker_ms > sync.broker_ms]
            began = min([pause.broker_ms, *(c.broker_ms for c in inside)])
            window = (began, later[0] if later else None)
            result.rounds.append({
                "kind": "OPTIMIZE" if optimise else "RETRAIN",
                "paused_s": round((sync.broker_ms - pause.broker_ms) / 1000, 2),
                "engine_stopped_s": engine_stopped_s(tap.positions_ms, *window),
                "steps": sum(c.value["type"] == "opt_step" for c in inside),
                "round_s": round((sync.broker_ms - began) / 1000, 2),
                "model_id": sync.value["model_id"],
                "pt": models.get(sync.value["model_id"], {}).get("pt"),
                "finalised_f_val": finalised_f_val(inside, answers) if optimise else None,
            })  # fmt: skip
            pause, previous_play = None, sync.broker_ms
    sent = {c.value["id"]: c for c in commands}
    for report in tap.of("factory_reports"):
        following = sent.get(report.value["reply_id"] + 1)
        answered = sent.get(report.value["reply_id"])
        if following and answered and answered.value["type"] == "opt_step":
            result.hops_ms.append(following.broker_ms - report.broker_ms)
        if answered and answered.value["type"] == "opt_step" and report.value["metrics"]:
            result.step_costs.append({
                "params": unwrapped(json.loads(report.value["params_dict"])),
                "f_val": json.loads(report.value["metrics"]).get("f_val"),
                "seconds": round((report.broker_ms - answered.broker_ms) / 1000, 3),
            })  # fmt: skip
    result.dead_letters = list(tap.dead_letters)
    result.undecodable = list(tap.undecodable)
    return result


def finalised_f_val(commands: Sequence[Record], answers: Mapping[int, Any]) -> float | None:
    """The f_val of the step a round's ``opt_finalise`` names (``best_i``, 0-based in the round)."""
    steps = [c.value for c in commands if c.value["type"] == "opt_step"]
    finalise = [c.value for c in commands if c.value["type"] == "opt_finalise"]
    if not finalise or not 0 <= finalise[-1]["best_i"] < len(steps):
        return None
    report = answers.get(steps[finalise[-1]["best_i"]]["id"])
    if report is None or not report["metrics"]:
        return None
    value = json.loads(report["metrics"]).get("f_val")
    return None if value is None else round(float(value), 4)


def unwrapped(params: dict[str, Any]) -> dict[str, Any]:
    """A step report's ``params_dict``: the parameters, with or without a ``params`` wrapper."""
    inner = params.get("params")
    return inner if isinstance(inner, dict) else params


def engine_stopped_s(positions_ms: Sequence[int], start: int, end: int | None,
                     gap_ms: int = 2000) -> float:  # fmt: skip
    """How long the engine stood still in a round: its position gaps over ``gap_ms``.

    The engine reports its position for every input record it consumes; a gap
    that opens at or after the round's ``pause`` (and before the next round's)
    is time the engine did not consume. The wait after the stream's last record
    is not a gap (no position follows it).
    """
    stopped = 0
    for before, after in itertools.pairwise(positions_ms):
        if before >= start and (end is None or before < end) and after - before > gap_ms:
            stopped += after - before
    return round(stopped / 1000, 1)


# --------------------------------------------------------------------------- comparison


def _mean(values: Sequence[float]) -> float | None:
    return round(statistics.fmean(values), 3) if values else None


def first_swap(results: Sequence[RunResult]) -> int | None:
    """t₁: the stream time of the first model swap of any run (the MCC split)."""
    swap_times = [s["timestamp"] for r in results for s in r.swaps()[:1]]
    return min(swap_times) if swap_times else None


def mcc_after(result: RunResult, split: int | None) -> float | None:
    """The run's mean weekly MCC from t₁ on."""
    return _mean([s["mcc"] for s in result.scores if s["mcc"] is not None
                  and split is not None and s["timestamp"] >= split])  # fmt: skip


def optimize_table(results: Sequence[RunResult]) -> str:
    """Each OPTIMIZE round, then each mode's medians (the figures of issue #27)."""
    split = first_swap(results)
    lines = [
        "| run | seed | OPTIMIZE pause → play | round: first command → play | engine stopped "
        "| steps | pt of the finalised model | finalised step's f_val | MCC after t₁ |",
        "|" + "---|" * 9,
    ]
    per_mode: dict[str, list[tuple[float, ...]]] = {}
    for r in results:
        mcc = mcc_after(r, split)
        for x in (x for x in r.rounds if x["kind"] == "OPTIMIZE"):
            whole = x.get("round_s", x["paused_s"])  # earlier results: paused at the start
            lines.append(
                f"| {r.name} | {r.seed if r.seed is not None else '-'} "
                f"| {x['paused_s']:.1f} s | {whole:.1f} s | {x.get('engine_stopped_s', 0.0):.1f} s "
                f"| {x['steps']} | {x.get('pt')} | {x.get('finalised_f_val')} | {mcc} |"
            )
            label = r.mode + "".join(f" {k}={v}" for k, v in r.settings.items())
            per_mode.setdefault(label, []).append((
                x["paused_s"], whole, x.get("engine_stopped_s", 0.0), float(x.get("pt") or "nan"),
                float(x.get("finalised_f_val") or "nan"), float(mcc or "nan"),
            ))  # fmt: skip
    for label, rows in per_mode.items():
        medians = [statistics.median(column) for column in zip(*rows, strict=True)]
        lines.append(f"| **{label}: median of {len(rows)}** | | {medians[0]:.1f} s "
                     f"| {medians[1]:.1f} s | {medians[2]:.1f} s | | {medians[3]:.0f} "
                     f"| {medians[4]:.4f} | {medians[5]:.3f} |")  # fmt: skip
    return "\n".join(lines)


def table(results: Sequence[RunResult], prepared: Prepared) -> str:
    """The results table (markdown)."""
    split = first_swap(results)
    header = (
        "| run | wall | score reports | mean MCC | MCC before / after t₁ | instructions "
        "| rounds (R/O) | commands | model swaps | pause → play per round (mean / max) "
        "| engine stopped per round (mean / max) | report → next command (median / max) |"
    )
    lines = [header, "|" + "---|" * 12]
    for r in results:
        mccs = [s["mcc"] for s in r.scores if s["mcc"] is not None]
        before = [s["mcc"] for s in r.scores if s["mcc"] is not None and split is not None
                  and s["timestamp"] < split]  # fmt: skip
        after = [s["mcc"] for s in r.scores if s["mcc"] is not None and split is not None
                 and s["timestamp"] >= split]  # fmt: skip
        paused = [x["paused_s"] for x in r.rounds]
        stopped = [x.get("engine_stopped_s", 0.0) for x in r.rounds]
        kinds = [x["kind"] for x in r.rounds]
        lines.append(
            f"| {r.name}{'' if r.settled else ' (unfinished)'} | {r.wall_s:.0f} s "
            f"| {len(r.scores)} | {_mean(mccs)} "
            f"| {_mean(before)} / {_mean(after)} | {len(r.instructions)} "
            f"| {kinds.count('RETRAIN')}/{kinds.count('OPTIMIZE')} | {len(r.commands)} "
            f"| {len(r.swaps())} | "
            + (f"{statistics.fmean(paused):.1f} s / {max(paused):.1f} s |" if paused else "- |")
            + (
                f" {statistics.fmean(stopped):.1f} s / {max(stopped):.1f} s |"
                if stopped
                else " - |"
            )
            + (
                f" {statistics.median(r.hops_ms):.0f} ms / {max(r.hops_ms)} ms |"
                if r.hops_ms
                else " - |"
            )
        )
    notes = [
        "",
        f"Stream: `{stack.SAMPLE.name}` converted ({prepared.records} records, stream time "
        f"{prepared.window.start}-{prepared.window.end}); engine scores weekly from "
        f"{prepared.window.engine_start}. t₁ = {split} (the first model swap of any run): "
        "the same split for all three.",
    ]
    return "\n".join(lines + notes)


def plot(results: Sequence[RunResult], path: Path) -> None:
    """MCC over stream time, one line per run, model swaps marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 4.5))
    styles = {"ours": ("C0", "o"), "original": ("C1", "s"), "offline": ("C7", ".")}
    for r in results:
        colour, marker = styles.get(r.mode, ("C3", "x"))
        points = [(_when(s["timestamp"]), s["mcc"]) for s in r.scores if s["mcc"] is not None]
        if points:
            axes.plot([t for t, _ in points], [y for _, y in points], color=colour,
                      marker=marker, label=r.name)  # fmt: skip
        for swap in r.swaps():
            axes.axvline(_when(swap["timestamp"]), color=colour, alpha=0.4, ls="--")
    axes.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m-%d"))
    figure.autofmt_xdate()
    axes.set_ylabel("MCC (weekly score report)")
    axes.set_title(
        "Real RTCEF loop, maritime sample: engine MCC (dashed: first report of a new model)"
    )
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


READING = """\
Reading the figures: MCC is the engine's own weekly score report (`batch_metrics`).
The engine resets its statistics when it loads a model, so a report due just after
a swap counts only the events since (a handful): an MCC of 0 there is that, not a
bad model, and the original Observer (LowScoreThreshold 0.2) answers it with an
OPTIMIZE in both adaptive runs. "Pause → play" is the controller's `pause` to its
`play`; "engine stopped" is how long the engine really stood still in the round (gaps
of over 2 s in its per-record position messages): it reads `engine_sync` only between
batches of up to 10,000 input records, so it scores on with the old model into the
round and resumes once it has read the new model. "Report → next command" is the
controller's hop inside an OPTIMIZE round, from a step's report to the next command,
measured on a saturated machine: the original Python services poll Kafka in a tight
loop (a `poll` with no timeout in `while True`), about 40 % of a core each, so the
2-core machine runs at a load of about 9 throughout.
All times are the broker's (the topics use `LogAppendTime`). Traffic of every run,
in the recordings' layout: `traffic/<run>/<topic>.jsonl`."""


#: Beside each run's topics: one JSON line per answered step (``RunResult.step_costs``).
STEP_COSTS: Final = "step_costs.jsonl"


def load_result(path: Path) -> RunResult:
    """A run's ``result.json``, as ``run`` wrote it."""
    return RunResult(**json.loads(path.read_text()))


def keep_traffic(results: Sequence[RunResult], work: Path, out: Path) -> None:
    """Copy each run's recorded topics beside the results (small: the bulk topics are not kept)."""
    for result in results:
        target = out / "traffic" / result.name
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(work / result.name / "traffic", target)


def _when(timestamp: int) -> datetime:
    return datetime.fromtimestamp(timestamp, tz=UTC)


def write_results(results: Sequence[RunResult], prepared: Prepared, out: Path) -> None:
    """RESULTS.md and mcc.png beside it."""
    rounds = "\n".join(
        f"* {r.name}: " + (", ".join(f"{x['kind']} ({x['steps']} steps) {x['paused_s']} s "
                                      f"({x.get('engine_stopped_s', '?')} s) → model "
                                      f"{x['model_id']}" for x in r.rounds) or "no rounds")
        for r in results
    )  # fmt: skip
    problems = "\n".join(
        f"* {r.name}: {len(r.dead_letters)} dead letters, {len(r.undecodable)} undecodable, "
        f"{len(r.errors)} error lines in the real services' logs"
        for r in results
    )
    text = (
        "# The real RTCEF loop: this controller, the original, and no adaptation\n\n"
        "Written by `just rtcef-loop` (`python -m tests.rtcef.loop`); "
        f"{time.strftime('%Y-%m-%d')}. Builds: "
        + ", ".join(f"{k} {v} s" for k, v in prepared.build_seconds.items())
        + " (0 s: cached)."
        + "".join(f" {r.name} ran with " + ", ".join(f"`{k}={v}`" for k, v in r.settings.items())
                  + "." for r in results if r.settings)
        + "\n\n" + table(results, prepared)
        + "\n\n![MCC over stream time](mcc.png)\n\n" + READING
        + "\n\n## OPTIMIZE rounds\n\n" + optimize_table(results)
        + "\n\n## Rounds (pause → play; engine stopped)\n\n"
        + rounds + "\n\n## Checks\n\n" + problems + "\n"
    )  # fmt: skip
    out.write_text(text)
    plot(results, out.parent / "mcc.png")


@contextmanager
def exclusive(work: Path) -> Iterator[None]:
    """One loop per work folder: a second one must not rewrite the files the first one reads."""
    work.mkdir(parents=True, exist_ok=True)
    with (work / ".lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise stack.StackError(f"another loop is using {work}") from None
        yield


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.rtcef.loop",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--runs", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument(
        "--budget", type=int, default=15,
        help="opt_step commands per OPTIMIZE round, both controllers (15)",
    )  # fmt: skip
    parser.add_argument("--limit", type=int, help="replay only the first N records")
    parser.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE",
        help="a setting of our controller (repeatable), e.g. ROUND_BUDGET_S=75",
    )  # fmt: skip
    parser.add_argument(
        "--seeds", type=int, nargs="+",
        help="repeat the runs once per seed (both controllers' optimiser seed); "
             "runs are named <mode>-<seed>, interleaved by seed",
    )  # fmt: skip
    parser.add_argument("--work", type=lambda text: Path(text).resolve(), default=DEFAULT_WORK)
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument(
        "--report-only", action="store_true",
        help="rewrite the results from the runs already in --work (no run)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    with stack.interrupts_as_keyboard_interrupt(), exclusive(args.work):
        try:
            if not args.report_only:
                stack.check_ports_free()
            prepared = prepare(args.work, limit=args.limit)
            say(f"prepared: {prepared.records} records; builds {prepared.build_seconds}")
            plan = (
                [(mode, None, mode) for mode in args.runs]
                if not args.seeds
                else [(mode, seed, f"{mode}-{seed}") for seed in args.seeds for mode in args.runs]
            )
            if args.report_only:
                results = [load_result(args.work / label / "result.json")
                           for _, _, label in plan]  # fmt: skip
            else:
                settings = dict(item.split("=", 1) for item in args.set)
                results = [run(prepared, args.work, mode, args.budget, settings=settings,
                               seed=seed, label=label)
                           for mode, seed, label in plan]  # fmt: skip
        except KeyboardInterrupt:
            say("interrupted: every process was stopped")
            return 130
    write_results(results, prepared, args.results)
    keep_traffic(results, args.work, args.results.parent)
    print((args.results).read_text())
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main())
