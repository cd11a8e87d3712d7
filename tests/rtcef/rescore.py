"""Score the models of a loop's OPTIMIZE rounds again, all on records fixed by stream time.

``python -m tests.rtcef.rescore RUN_DIR[=NAME]...`` (``just rtcef-rescore``, after
``just rtcef-loop``; a run folder is ``<work>/<run>``, with its ``models/`` and
``traffic/``, beside the loop's ``<work>/stream.json``).

Why: a step's f_val is -MCC of the step's model on the data set the factory
assembled when the round began, the very records it was trained on (the factory's
train/test split is commented out: ``services/factory.py``). Which records that set
holds depends on the services' timing (how far the collector had got), so the
finalised f_vals of two runs are in-sample marks from two different exams. Here
every model sits the same one, out of sample: the records of the ``--weeks`` weeks
of stream time after its round began (``--from``: after one stream time, for every
round), from the converted stream the loop replayed, tested by Wayeb's own
``loadAndTest`` (the call the factory scores a step with) with the model's own
confidence threshold. Rounds begun at the same stream time (a round starts at a
weekly score report, so many do) sit exactly the same records.

Scored: each round's finalised model (the one the factory built at ``opt_finalise``,
which the engine then serves) and, with ``--steps``, every step's model, so a round
can be judged by what it found as well as by what it kept. No broker is needed: one
Wayeb JVM of its own (``service`` mode, on ``PORTS``) and the client half,
``tests/rtcef/rescore_client.py``, run by the services' Python 3.9 environment
(py4j). A loop may run meanwhile (its JVMs keep their ports), sharing the CPU.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scipy import stats

from tests.rtcef import loop, stack, wayeb
from tests.support import jsonl

HERE = Path(__file__).resolve().parent
CLIENT = HERE / "rescore_client.py"
WEEK = 604_800
#: The factory's stream domain for data set files (``[factory] model.param.domain``).
DOMAIN = "maritimejson"
DEFAULT_WORK = stack.ROOT / ".rtcef-rescore"
#: py4j ports (Java, Python) of its own Wayeb JVM (``service`` mode takes them; a loop's
#: JVMs keep theirs, ``stack.SERVER_PORTS`` and ``stack.SERVICE_PORTS``, so both can run).
PORTS = (25344, 25343)


@dataclass(frozen=True)
class Model:
    """One model a round produced: its file, its confidence threshold, the factory's f_val."""

    model_id: int
    path: Path
    confidence: float
    f_val: float | None


@dataclass(frozen=True)
class Round:
    """One OPTIMIZE round of a run, as its traffic tells it."""

    run: str
    index: int
    stream_ts: int
    steps: tuple[Model, ...]
    best_i: int
    finalised: Model

    @property
    def group(self) -> str:
        """The run's name without its seed: ``ours-3-b78`` and ``ours-8-b78`` are ``ours-b78``."""
        parts = self.run.split("-")
        return "-".join(parts[:1] + parts[2:]) if parts[1:2] and parts[1].isdigit() else self.run


def _confidence(params_dict: str) -> float:
    return float(loop.unwrapped(json.loads(params_dict))["confidence"])


def _f_val(metrics: str) -> float | None:
    return float(json.loads(metrics)["f_val"]) if metrics else None


def rounds_of(run_dir: Path, label: str | None = None) -> list[Round]:
    """The run's OPTIMIZE rounds that were finalised, from its recorded traffic.

    ``label`` names the run (its folder's name by default).

    A step's model is the one its report names (``model_id``; its parameters are the
    report's); the finalised model is the one the ``opt_finalise`` report names, with
    the parameters of the step ``best_i`` names (the factory retrains that step's).
    ``best_i`` counts every ``opt_step`` of the round; ``steps`` keeps the answered ones.
    A round whose ``opt_finalise`` was not answered (the run ended first) is left out.
    """
    traffic = run_dir / "traffic"
    commands = [json.loads(line) for line in jsonl(traffic / "factory_commands.jsonl")]
    reports = {r["reply_id"]: r for r in map(json.loads, jsonl(traffic / "factory_reports.jsonl"))}
    models = run_dir / "models"

    def model(report: dict[str, Any], like: Model | None = None) -> Model:
        model_id = int(report["model_id"])
        path = models / f"wayeb_{model_id}.model"
        if like is not None:  # built at opt_finalise from step ``like``: its threshold and score
            return Model(model_id, path, like.confidence, like.f_val)
        return Model(model_id, path, _confidence(report["params_dict"]), _f_val(report["metrics"]))

    rounds: list[Round] = []
    steps: list[Model | None] = []  # None: a step the factory never answered
    for command in commands:
        kind = command["type"]
        if kind == "opt_initialise":
            steps = []
        elif kind == "opt_step":
            report = reports.get(command["id"])
            steps.append(None if report is None else model(report))
        elif kind == "opt_finalise" and command["id"] in reports:
            best_i = command["best_i"]
            best = steps[best_i] if 0 <= best_i < len(steps) else None
            if best is None:
                raise stack.StackError(f"{run_dir}: opt_finalise {command['id']} names step "
                                       f"{best_i}, of which no report was recorded")  # fmt: skip
            rounds.append(Round(label or run_dir.name, command["optimisation_id"],
                                command["timestamp"], tuple(m for m in steps if m is not None),
                                best_i, model(reports[command["id"]], like=best)))  # fmt: skip
    return rounds


def write_window(stream: Path, start: int, weeks: int, out: Path) -> int:
    """The stream's records in (start, start + weeks weeks] as a data set file; their count."""
    end = start + weeks * WEEK
    count = 0
    with stream.open() as source, out.open("w") as sink:
        for line in source:
            if start < json.loads(line)["timestamp"] <= end:
                sink.write(line if line.endswith("\n") else line + "\n")
                count += 1
    return count


def mcc(tp: float, tn: float, fp: float, fn: float) -> float:
    """Matthews' correlation coefficient; 0 when a margin is empty (as the factory counts it)."""
    margins = (tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)
    return 0.0 if margins == 0 else (tp * tn - fp * fn) / math.sqrt(margins)


def score(python: str, jobs: Sequence[tuple[Path, Model]]) -> list[float]:
    """MCC of each (window file, model), by Wayeb's ``loadAndTest`` via the client."""
    payload = json.dumps([{"test": str(test), "model": str(m.path), "confidence": m.confidence}
                          for test, m in jobs])  # fmt: skip
    result = subprocess.run(
        [python, str(CLIENT), str(PORTS[0]), DOMAIN],
        input=payload, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise stack.StackError(f"rescore client failed:\n{result.stderr[-3000:]}")
    return [round(mcc(*counts), 4) for counts in json.loads(result.stdout)]


@dataclass(frozen=True)
class Scored:
    """A round's models scored on its window: the finalised one's MCC, and each step's."""

    round: Round
    records: int
    finalised_mcc: float
    step_mccs: tuple[float, ...] | None


def _median(values: Iterable[float]) -> str:
    values = list(values)
    return f"{statistics.median(values):.4f}" if values else "-"


def report(scored: Sequence[Scored], window: str) -> str:
    """The rounds, one a row, then the medians per group of runs, overall and per round start.

    ``window`` says which records the models were scored on.
    """
    rows = [
        "| run | round | begun (stream time) | window records | steps | finalised step's f_val "
        "(factory) | finalised model's MCC on the window | highest step MCC on the window |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in scored:
        r = s.round
        f_val = "-" if r.finalised.f_val is None else f"{r.finalised.f_val:.4f}"
        steps = "-" if s.step_mccs is None else f"{max(s.step_mccs):.4f}"
        rows.append(f"| {r.run} | {r.index} | {r.stream_ts} | {s.records} | {len(r.steps)} "
                    f"| {f_val} | {s.finalised_mcc:.4f} | {steps} |")  # fmt: skip
    names = sorted({s.round.group for s in scored})
    summary = [
        "",
        f"Medians over rounds (window: {window}):",
        "",
        "| rounds | runs | count | finalised step's f_val (factory) "
        "| finalised model's MCC on the window |",
        "|---|---|---|---|---|",
    ]
    groups: list[tuple[str, list[Scored]]] = [("all", list(scored))]
    for start in sorted({s.round.stream_ts for s in scored}):
        groups.append((f"begun at {start}", [s for s in scored if s.round.stream_ts == start]))
    for label, members in groups:
        for name in names:
            mine = [s for s in members if s.round.group == name]
            if not mine:
                continue
            f_vals = [s.round.finalised.f_val for s in mine if s.round.finalised.f_val is not None]
            summary.append(f"| {label} | {name} | {len(mine)} | {_median(f_vals)} "
                           f"| {_median(s.finalised_mcc for s in mine)} |")  # fmt: skip
    return "\n".join(rows + summary + _tests(scored, names)) + "\n"


def _tests(scored: Sequence[Scored], names: Sequence[str]) -> list[str]:
    """Does the factory's f_val rank models as the window does; do the groups differ?

    Spearman's rank correlation of the factory's f_val with the window's MCC over all
    rounds (-1: the same order, f_val being -MCC), and for each pair of groups the
    two-sided Mann-Whitney test of their finalised models' window MCCs.
    """
    lines = [""]
    pairs = [(s.round.finalised.f_val, s.finalised_mcc) for s in scored
             if s.round.finalised.f_val is not None]  # fmt: skip
    if len(pairs) >= 3:
        rho = stats.spearmanr([f for f, _ in pairs], [m for _, m in pairs]).statistic
        lines.append(f"Rank correlation of the factory's f_val with the window's MCC, over "
                     f"{len(pairs)} rounds: Spearman {float(rho):.2f}.")  # fmt: skip
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            a = [s.finalised_mcc for s in scored if s.round.group == first]
            b = [s.finalised_mcc for s in scored if s.round.group == second]
            p = stats.mannwhitneyu(a, b, alternative="two-sided").pvalue
            lines.append(f"Finalised models' window MCC, {first} ({len(a)}) against {second} "
                         f"({len(b)}): Mann-Whitney two-sided p = {float(p):.2f}.")  # fmt: skip
    return lines


def rescore(
    runs: Sequence[tuple[Path, str | None]],
    *,
    weeks: int = 4,
    start: int | None = None,
    steps: bool = False,
    work: Path = DEFAULT_WORK,
    say: Callable[[str], None] = lambda text: None,
) -> list[Scored]:
    """Score the finalised model (and with ``steps`` every step's) of each run's rounds.

    ``runs``: run folders (``<work>/<run>``, beside the loop's ``stream.json``), each
    with a name or None (the folder's). The windows are written into ``work``; the
    Wayeb JVM runs there, on ``PORTS``, and is stopped before this returns.
    """
    if weeks < 1:
        raise stack.StackError(f"a window of {weeks} weeks holds no record")
    if any(stack.port_open(port) for port in PORTS):
        raise stack.StackError(f"ports {PORTS} are taken: is another rescore running?")
    for run, _ in runs:
        if not (run.parent / "stream.json").is_file():
            raise stack.StackError(f"no {run.parent / 'stream.json'}: the loop's converted "
                                   "stream (a loop with --limit writes another)")  # fmt: skip
    classpath, python = wayeb.ensure_built(quiet=True), stack.ensure_services_python(quiet=True)
    work.mkdir(parents=True, exist_ok=True)
    windows: dict[tuple[Path, int], tuple[Path, int]] = {}  # (stream, begin) -> (file, records)
    rounds: list[tuple[Round, tuple[Path, int]]] = []
    for run, name in runs:
        for r in rounds_of(run, name):
            stream, begin = run.parent / "stream.json", r.stream_ts if start is None else start
            if (stream, begin) not in windows:
                digest = hashlib.sha256(str(stream).encode()).hexdigest()[:8]
                out = work / f"window-{digest}-{begin}-{weeks}w.json"
                windows[(stream, begin)] = (out, write_window(stream, begin, weeks, out))
            rounds.append((r, windows[(stream, begin)]))
    services = stack.Stack(work)
    try:
        ports = ["--pythonPort", str(PORTS[1]), "--javaPort", str(PORTS[0])]
        services.start_wayeb("wayeb_rescore", classpath, ["service", *ports], PORTS)
        scored = []
        for r, (test, records) in rounds:
            jobs = [(test, r.finalised)] + ([(test, m) for m in r.steps] if steps else [])
            mccs = score(python, jobs)
            scored.append(Scored(r, records, mccs[0], tuple(mccs[1:]) if steps else None))
            say(f"{r.run} round {r.index}: finalised {mccs[0]:.4f}")
    finally:
        services.close()
    return scored


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.rtcef.rescore",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR[=NAME]",
                        help="run folders of a loop (<work>/<run>), each optionally named "
                             "(ours-1-b78: grouped by name less the seed)")  # fmt: skip
    parser.add_argument("--weeks", type=int, default=4, help="the window's length (4)")
    parser.add_argument("--from", dest="start", type=int, metavar="STREAM_TS",
                        help="one window for every round, from this stream time "
                             "(default: each round's own, from when it began)")  # fmt: skip
    parser.add_argument("--steps", action="store_true", help="score every step's model too")
    parser.add_argument("--out", type=Path, help="also write the tables here (markdown)")
    parser.add_argument("--work", type=lambda t: Path(t).resolve(), default=DEFAULT_WORK,
                        help="the window files and the JVM's log (.rtcef-rescore)")  # fmt: skip
    args = parser.parse_args(argv)
    runs = [(Path(path).resolve(), name or None) for path, _, name in
            (text.partition("=") for text in args.runs)]  # fmt: skip
    began = time.monotonic()
    try:
        with stack.interrupts_as_keyboard_interrupt():  # SIGTERM too stops the JVM
            scored = rescore(runs, weeks=args.weeks, start=args.start, steps=args.steps,
                             work=args.work, say=lambda t: print(t, file=sys.stderr))  # fmt: skip
    except stack.StackError as error:
        print(f"rescore: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("rescore: interrupted; the JVM was stopped", file=sys.stderr)
        return 130
    window = (
        f"{args.weeks} weeks of stream time after the round began"
        if args.start is None
        else f"{args.weeks} weeks of stream time after {args.start}, for every round"
    )
    text = report(scored, window)
    text += f"\n{len(scored)} rounds scored in {time.monotonic() - began:.0f} s.\n"
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
