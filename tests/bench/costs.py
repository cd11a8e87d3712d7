"""Benchmark section 7: the best model each optimiser finds in the same factory seconds.

Every OPTIMIZE round pauses the forecasting engine for as long as the factory
works, and the real factory's time per step grows steeply with ``order``. Here a
round's resource is factory seconds, not steps. Costs are what the real factory
took for each step of the real loop (``step_costs.jsonl`` beside its traffic,
written by ``just rtcef-loop``; kept in ``tests/rtcef/step-costs/``), interpolated
like the recorded scores (``dataflow.sim.surfaces.recorded_costs``); scores are the rtcef profile's
surfaces of section 3. Each round gets half of what 15 steps and a finalise
take at the recorded mean cost (the shipped round, halved), and every method is
cut where its steps and its finalised model (the best step built again) would
pass that. Each surface is run cold (a first round) and "from 5 kept", as the
rtcef rounds after the first (and the real loop's, warm-started) are: five
observations with their costs, the best 5 of 30 random evaluations (seeded apart
from the round), which ours measures again first and scikit-optimize is told:

* ``ours + cost``: this controller with ``ROUND_BUDGET_S`` at those seconds (its own
  stop rule: the acquisition among affordable points, finalised before a step it
  expects to overrun);
* ``ours``: the same optimiser blind to cost;
* ``skopt``: scikit-optimize's ``Optimizer`` with gp_hedge and its defaults, the
  original controller's set-up, asked and told;
* ``random``: uniform random search.

The table gives per method the median steps and seconds, the median true score of
the finalised step, and a one-sided Wilcoxon signed-rank test on the pairs ("ours
+ cost lower than this method"); the plot the median simple regret against seconds.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import msgspec
import numpy as np

from dataflow.domain import bayes, dialects, strategy
from dataflow.domain import optimizer as o
from dataflow.sim.surfaces import SYNTHETIC, Surface, noisy, recorded, recorded_costs
from tests.bench import optimiser

METHODS = ("ours + cost", "ours", "skopt", "random")
#: Most steps any method may take (the seconds run out long before).
MAX_STEPS = 40
NOISE_SD = 0.02
#: Kept observations: the best ``Profile.keep`` of this many random ones, seeded apart.
KEPT_FROM, KEPT_SEED = 30, 1000
Rows = list[tuple[str, ...]]
#: A round's evaluations: point, reported score, seconds.
Steps = list[tuple[o.Point, float, float]]
Kept = tuple[o.Observation, ...]


@dataclass(frozen=True)
class Case:
    surface: str
    #: A fresh reported-score surface per call (the same noise, in order).
    reported: Callable[[int], Surface]
    truth: Surface
    #: Whether a round starts from 5 kept observations (see the module docstring).
    warm: bool = False

    def kept(self, profile: o.Profile, cost: Surface, seed: int) -> tuple[o.Observation, ...]:
        """The round's carried-over observations: none cold, else the best 5 of 30 random."""
        if not self.warm:
            return ()
        surface, rng = self.reported(seed + KEPT_SEED), np.random.RandomState(seed + KEPT_SEED)
        seen = []
        for x in bayes.space(profile).rvs(KEPT_FROM, rng):
            point = o.to_point(profile, x)
            params = o.named(profile, point)
            seen.append(o.Observation(point, surface(params), cost(params)))
        return tuple(sorted(seen, key=lambda ob: ob.y)[: profile.keep])


def cost_files(directory: Path) -> list[Path]:
    """Every step-cost file in ``directory``: ``*.jsonl`` or a run's ``*/step_costs.jsonl``."""
    return sorted([*directory.glob("*/step_costs.jsonl"), *directory.glob("*.jsonl")])


def cases(recordings: Path) -> list[Case]:
    profile = dialects.PROFILES["rtcef"]
    found = []
    for name in ("bowl", "rastrigin"):
        truth = SYNTHETIC[name](profile)
        found.append(Case(name, lambda seed, s=truth: s, truth))
    bowl = SYNTHETIC["bowl"](profile)
    found.append(Case(f"noisy bowl (sd {NOISE_SD})",
                      lambda seed: noisy(bowl, NOISE_SD, seed), bowl))  # fmt: skip
    if recordings.exists():
        pooled = recorded(profile, recordings)
        found.append(Case("recorded, pooled", lambda seed: pooled, pooled))
    warm = [dataclasses.replace(c, surface=f"{c.surface}, from 5 kept", warm=True)
            for c in found]  # fmt: skip
    return found + warm


def budget_s(profile: o.Profile, cost: Surface, seed: int = 0) -> float:
    """Half of what the shipped round (15 steps and a finalise) takes at the mean cost."""
    rng = np.random.RandomState(seed)
    sample = [cost(o.named(profile, o.to_point(profile, x)))
              for x in bayes.space(profile).rvs(2000, rng)]  # fmt: skip
    return round(0.5 * (profile.budget + 1) * float(np.mean(sample)), 1)


def _ours_costed(profile: o.Profile, surface: Surface, cost: Surface, seed: int,
                 seconds: float, kept: Kept) -> Steps:  # fmt: skip
    budgeted = msgspec.structs.replace(profile, budget=MAX_STEPS, round_budget_s=seconds)
    snapshot = o.start(budgeted, f"bench-{seed}", int(bool(kept)), kept)
    steps: Steps = []
    while snapshot.remaining > 0:
        point, proposed = strategy.propose(snapshot)
        if not strategy.affordable(proposed):
            break
        params = o.named(profile, point)
        score, spent = surface(params), cost(params)
        snapshot = o.learn(proposed, score, spent)
        steps.append((point, score, spent))
    return steps


def _ours(profile: o.Profile, surface: Surface, cost: Surface, seed: int, seconds: float,
          kept: Kept) -> Steps:  # fmt: skip
    blind = msgspec.structs.replace(profile, budget=MAX_STEPS)
    snapshot = o.start(blind, f"bench-{seed}", int(bool(kept)), kept)
    steps: Steps = []
    while snapshot.remaining > 0 and not _spent(steps, seconds):
        point, snapshot = strategy.propose(snapshot)
        params = o.named(profile, point)
        score = surface(params)
        snapshot = o.learn(snapshot, score)
        steps.append((point, score, cost(params)))
    return steps


def _skopt(profile: o.Profile, surface: Surface, cost: Surface, seed: int, seconds: float,
           kept: Kept) -> Steps:  # fmt: skip
    from skopt import Optimizer

    optimiser = Optimizer(bayes.space(profile).dimensions, "GP", acq_func="gp_hedge",
                          n_initial_points=profile.n_initial, random_state=seed)  # fmt: skip
    steps: Steps = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kept:  # the original tells its kept evaluations (keepNEvals) to the new optimiser
            optimiser.tell([list(ob.x) for ob in kept], [ob.y for ob in kept])
        while len(steps) < MAX_STEPS and not _spent(steps, seconds):
            point = o.to_point(profile, optimiser.ask())
            params = o.named(profile, point)
            score = surface(params)
            optimiser.tell(list(point), score)
            steps.append((point, score, cost(params)))
    return steps


def _random(profile: o.Profile, surface: Surface, cost: Surface, seed: int, seconds: float,
            kept: Kept) -> Steps:  # fmt: skip
    """Uniform random search: what was kept does not steer it."""
    rng = np.random.RandomState(seed)
    steps: Steps = []
    for x in bayes.space(profile).rvs(MAX_STEPS, rng):
        if _spent(steps, seconds):
            break
        point = o.to_point(profile, x)
        params = o.named(profile, point)
        steps.append((point, surface(params), cost(params)))
    return steps


_RUNNERS = {"ours + cost": _ours_costed, "ours": _ours, "skopt": _skopt, "random": _random}


def _spent(steps: Steps, seconds: float) -> bool:
    """Whether a blind method has certainly run out (its steps alone use the seconds)."""
    return sum(c for _, _, c in steps) >= seconds


def cut(steps: Steps, seconds: float) -> Steps:
    """The steps a round could take in ``seconds`` and still finalise its best (built again).

    The first step is always taken (a round cannot finalise without one).
    """
    kept: Steps = []
    spent, best = 0.0, None
    for step in steps:
        after = step if best is None or step[1] < best[1] else best
        if kept and spent + step[2] + after[2] > seconds:
            break
        kept.append(step)
        spent, best = spent + step[2], after
    return kept


@dataclass
class Outcome:
    steps: list[int]
    seconds: list[float]
    best: list[float]
    #: (seconds so far with the finalise, true score finalised then) after each step.
    traces: list[list[tuple[float, float]]]


def run(case: Case, cost: Surface, seeds: range, seconds: float) -> dict[str, Outcome]:
    profile = dialects.PROFILES["rtcef"]
    outcomes = {method: Outcome([], [], [], []) for method in METHODS}
    for seed in seeds:
        kept = case.kept(profile, cost, seed)
        for method in METHODS:
            steps = cut(_RUNNERS[method](profile, case.reported(seed), cost, seed, seconds, kept),
                        seconds)  # fmt: skip
            trace, spent, best = [], 0.0, None
            for step in steps:
                best = step if best is None or step[1] < best[1] else best
                spent += step[2]
                trace.append((spent + best[2], case.truth(o.named(profile, best[0]))))
            outcome = outcomes[method]
            outcome.steps.append(len(steps))
            outcome.seconds.append(trace[-1][0])
            outcome.best.append(trace[-1][1])
            outcome.traces.append(trace)
    return outcomes


def rows(case: Case, outcomes: dict[str, Outcome], seconds: float) -> Rows:
    """Per method: median steps, seconds and finalised score, and the paired test."""
    ours = outcomes["ours + cost"].best
    found = []
    for method, outcome in outcomes.items():
        p_value = optimiser.paired_p(ours, outcome.best)
        found.append((case.surface, f"{seconds:g}", method,
                      f"{statistics.median(outcome.steps):g}",
                      f"{statistics.median(outcome.seconds):.1f}",
                      f"{statistics.median(outcome.best):.4f}", p_value,
                      str(len(outcome.best))))  # fmt: skip
    return found


Curves = tuple[np.ndarray, dict[str, np.ndarray]]


def regret(outcomes: dict[str, Outcome], seconds: float) -> Curves:
    """Median simple regret against seconds, per method (floor: the best any method reached)."""
    grid = np.linspace(0.0, seconds, 101)
    floor = min(score for o_ in outcomes.values() for t in o_.traces for _, score in t)
    medians = {}
    for method, outcome in outcomes.items():
        curves = []
        for trace in outcome.traces:
            curve = np.full(grid.size, np.nan)
            for spent, score in trace:
                curve[grid >= spent] = score - floor
            curves.append(curve)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # before a method's first finalisable step: NaN
            medians[method] = np.nanmedian(np.array(curves), axis=0)
    return grid, medians


def plot(curves: dict[str, Curves], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = 2 if len(curves) > 4 else 1  # cold above, from 5 kept below
    columns = -(-len(curves) // rows)
    figure, panels = plt.subplots(rows, columns, figsize=(3.4 * columns, 3.0 * rows),
                                  squeeze=False)  # fmt: skip
    for axes, (title, (grid, medians)) in zip(panels.flat, curves.items(), strict=False):
        for method, median in medians.items():
            axes.plot(grid, np.maximum(median, 1e-6), label=method)
        axes.set_yscale("log")
        axes.set_title(title, fontsize=8)
        axes.set_xlabel("factory seconds", fontsize=8)
    for row in panels:
        row[0].set_ylabel("median simple regret", fontsize=8)
    panels[0, 0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _one_case(index: int, quick: bool, recordings: Path, files: list[Path]) -> tuple[Rows, Curves]:
    """One case's rows and curves (a worker process's share: cases are independent)."""
    profile = dialects.PROFILES["rtcef"]
    cost = recorded_costs(profile, files)
    seconds = budget_s(profile, cost)
    case = cases(recordings)[index]
    outcomes = run(case, cost, range(5 if quick else 50), seconds)
    print(f"  cost: {case.surface} done", flush=True)
    return rows(case, outcomes, seconds), regret(outcomes, seconds)


def bench(quick: bool, recordings: Path, traffic: Path, plot_to: Path | None) -> Rows:
    """Section 7's rows; the regret curves plotted to ``plot_to``.

    The cases run in worker processes, one case each, as many at once as there are
    cores: each is deterministic (its seeds, its surfaces), so the table is a serial run's.
    """
    files = cost_files(traffic)
    if not files:
        raise SystemExit(f"section 7 needs recorded step costs: run `just rtcef-loop` "
                         f"(none under {traffic})")  # fmt: skip
    names = [case.surface for case in cases(recordings)]
    with ProcessPoolExecutor(max_workers=min(len(names), os.cpu_count() or 1)) as pool:
        done = list(pool.map(partial(_one_case, quick=quick, recordings=recordings, files=files),
                             range(len(names))))  # fmt: skip
    table: Rows = [row for case_rows, _ in done for row in case_rows]
    if plot_to is not None:
        plot({name: curve for name, (_, curve) in zip(names, done, strict=True)}, plot_to)
    return table
