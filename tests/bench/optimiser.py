"""Benchmark section 3: how good a model each optimiser finds within one round's budget.

Every ``opt_step`` is a model trained and tested by the factory, so what counts is
the quality of the round's best step (its ``best_i``) after the budget, not the
milliseconds. Three methods get exactly the same rounds, paired by seed:

* ``ours``: this controller's optimiser (``dataflow.domain.strategy``), as a round runs it;
* ``skopt``: scikit-optimize's ``gp_minimize`` with the profile's budget, initial
  points and acquisition function, told the same kept observations, and its own
  defaults otherwise (LCB's kappa 1.96, as the original RTCEF controller ran it);
* ``random``: uniform random search with the same budget.

Surfaces (``dataflow.sim.surfaces``): a smooth bowl and a rugged Rastrigin in both
profiles; the recorded RTCEF step reports pooled over every run, and each run's
own (a month of data each, ``--per-run`` seeds each); a noisy bowl, where the same
parameters score differently on repeat as a retrained model does; and rounds that
start from the 5 observations the rtcef profile keeps from the round before
(that previous round is run by ours, and all three methods are told its newest
5). A round's result is the *true* score of the step it would finalise (the
lowest *reported* score): on the noisy surface the two differ.

The table gives the median over rounds and a one-sided Wilcoxon signed-rank test
on the pairs ("ours lower than this method"); the plot the median simple regret
of the step each method would finalise after each evaluation.
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dataflow.domain import bayes, dialects, strategy
from dataflow.domain import optimizer as o
from dataflow.sim.surfaces import SYNTHETIC, Surface, noisy, recorded, recorded_runs

#: The spread of a retrained model's score (f_val = -MCC) on the noisy surface.
NOISE_SD = 0.02
METHODS = ("ours", "skopt", "random")
Rows = list[tuple[str, ...]]


@dataclass(frozen=True)
class Trial:
    """One round, run by every method: what they evaluate and what they are told first."""

    seed: int
    #: Scores as the factory reports them; a fresh one per method (same noise, in order).
    reported: Callable[[], Surface]
    #: The model's real quality (the reported score without noise).
    truth: Surface
    #: Observations kept from the previous round.
    prior: tuple[o.Observation, ...] = ()
    #: Trials with the same group share a surface (their regret has the same floor).
    group: str = ""


@dataclass(frozen=True)
class Case:
    """A table row per method: a profile, a surface and its rounds."""

    profile: o.Profile
    surface: str
    trials: list[Trial]


@dataclass
class Outcome:
    """Per method: seconds per step, the finalised step's true score, and its trace."""

    seconds: list[float]
    best: list[float]
    #: True score of the step each round would finalise after each evaluation.
    traces: list[list[float]]


def cases(quick: bool, recordings: Path, per_run: int | None = None) -> Iterator[Case]:
    """Every case, in table order."""
    seeds = range(5 if quick else 50)
    runs_seeds = range(per_run if per_run is not None else (2 if quick else 10))
    for name in ("seed", "rtcef"):
        profile = dialects.PROFILES[name]
        for surface in ("bowl", "rastrigin"):
            truth = SYNTHETIC[surface](profile)
            yield Case(profile, surface, [_plain(seed, truth) for seed in seeds])
    rtcef = dialects.PROFILES["rtcef"]
    bowl = SYNTHETIC["bowl"](rtcef)
    yield Case(rtcef, f"noisy bowl (sd {NOISE_SD})", [_noisy(seed, bowl) for seed in seeds])
    pooled = recorded(rtcef, recordings) if recordings.exists() else None
    if pooled is not None:
        yield Case(rtcef, "recorded, pooled", [_plain(seed, pooled) for seed in seeds])
        runs = recorded_runs(rtcef, recordings)
        trials = [_plain(seed, surface, group=run) for run, surface in runs.items()
                  for seed in runs_seeds]  # fmt: skip
        yield Case(rtcef, f"recorded, per run ({len(runs)} runs)", trials)
    warm: list[tuple[str, Callable[[int, int], Trial]]] = [
        ("bowl", lambda seed, _: _plain(seed, bowl)),
        (f"noisy bowl (sd {NOISE_SD})", lambda seed, stream: _noisy(seed, bowl, stream)),
    ]
    if pooled is not None:
        warm.append(("recorded, pooled", lambda seed, _, s=pooled: _plain(seed, s)))
    for surface, trial in warm:
        yield Case(rtcef, f"{surface}, from {rtcef.keep} kept",
                   [_kept(rtcef, trial(seed, 1), trial(seed, 2)) for seed in seeds])  # fmt: skip


def _plain(seed: int, surface: Surface, group: str = "") -> Trial:
    return Trial(seed, lambda: surface, surface, group=group)


def _noisy(seed: int, surface: Surface, stream: int = 0) -> Trial:
    return Trial(seed, lambda: noisy(surface, NOISE_SD, 1000 * stream + seed), surface)


def _kept(profile: o.Profile, previous: Trial, trial: Trial) -> Trial:
    """``trial`` told the newest ``keep`` observations of ``previous``'s round (run by ours).

    The two rounds see different noise, as two rounds of a real factory do.
    """
    ran = strategy.run_optimization(previous.reported(), profile, key=f"previous-{trial.seed}")
    return Trial(trial.seed, trial.reported, trial.truth, o.carried(ran), trial.group)


def run(case: Case) -> dict[str, Outcome]:
    """Every method on every round of ``case``."""
    outcomes = {method: Outcome([], [], []) for method in METHODS}
    for trial in case.trials:
        for method in METHODS:
            began = time.perf_counter()
            steps = _RUNNERS[method](case.profile, trial)
            seconds = (time.perf_counter() - began) / case.profile.budget
            trace = _finalised(case.profile, trial, steps)
            outcome = outcomes[method]
            outcome.seconds.append(seconds)
            outcome.best.append(trace[-1])
            outcome.traces.append(trace)
    return outcomes


def _finalised(profile: o.Profile, trial: Trial, steps: list[tuple[o.Point, float]]) -> list[float]:
    """After each step: the true score of the step with the lowest reported score so far."""
    trace, best = [], None
    for point, reported in steps:
        if best is None or reported < best[1]:
            best = (point, reported)
        trace.append(trial.truth(o.named(profile, best[0])))
    return trace


def _ours(profile: o.Profile, trial: Trial) -> list[tuple[o.Point, float]]:
    snapshot = strategy.run_optimization(trial.reported(), profile, key=f"bench-{trial.seed}",
                                         prior=trial.prior)  # fmt: skip
    return [(observation.x, observation.y) for observation in snapshot.observations]


def _skopt(profile: o.Profile, trial: Trial) -> list[tuple[o.Point, float]]:
    from skopt import gp_minimize

    surface = trial.reported()

    def objective(x: list[float]) -> float:
        return surface(o.named(profile, o.to_point(profile, x)))

    told = len(trial.prior)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = gp_minimize(
            objective,
            bayes.space(profile).dimensions,
            n_calls=profile.budget,
            n_initial_points=max(0, profile.n_initial - told),
            acq_func=profile.acquisition,
            x0=[list(observation.x) for observation in trial.prior] or None,
            y0=[observation.y for observation in trial.prior] or None,
            random_state=trial.seed,
        )
    evaluated = zip(result.x_iters[told:], result.func_vals[told:], strict=True)
    return [(o.to_point(profile, x), float(y)) for x, y in evaluated]


def _random(profile: o.Profile, trial: Trial) -> list[tuple[o.Point, float]]:
    surface = trial.reported()
    rng = np.random.RandomState(trial.seed)
    points = [o.to_point(profile, x) for x in bayes.space(profile).rvs(profile.budget, rng)]
    return [(point, surface(o.named(profile, point))) for point in points]


_RUNNERS = {"ours": _ours, "skopt": _skopt, "random": _random}


def paired_p(ours: list[float], other: list[float]) -> str:
    """One-sided Wilcoxon signed-rank p that ``ours`` is lower than ``other`` ("-" if equal)."""
    from scipy.stats import wilcoxon

    if ours is other or all(a == b for a, b in zip(ours, other, strict=True)):
        return "-"
    return f"{wilcoxon(ours, other, alternative='less').pvalue:.3f}"


def rows(case: Case, outcomes: dict[str, Outcome]) -> Rows:
    """The table's rows for a case: per method its time, median, and the paired test."""
    ours = outcomes["ours"].best
    found = []
    for method, outcome in outcomes.items():
        p_value = paired_p(ours, outcome.best)
        found.append((case.profile.name, case.surface, method,
                      f"{statistics.median(outcome.seconds) * 1e3:.1f}",
                      f"{statistics.median(outcome.best):.4f}", p_value,
                      str(len(case.trials))))  # fmt: skip
    return found


def regret(case: Case, outcomes: dict[str, Outcome]) -> dict[str, np.ndarray]:
    """Median simple regret after each evaluation, per method.

    Regret is the finalised step's true score minus the best true score any method
    reached on that surface (per run for the per-run surfaces): the surfaces'
    optima on the discrete axes are not known in closed form.
    """
    floors: dict[str, float] = {}
    for index, trial in enumerate(case.trials):
        lowest = min(min(outcome.traces[index]) for outcome in outcomes.values())
        floors[trial.group] = min(floors.get(trial.group, lowest), lowest)
    medians = {}
    for method, outcome in outcomes.items():
        pairs = zip(outcome.traces, case.trials, strict=True)
        gaps = np.array([np.array(trace) - floors[trial.group] for trace, trial in pairs])
        medians[method] = np.median(gaps, axis=0)
    return medians


def plot(curves: dict[str, dict[str, np.ndarray]], path: Path) -> None:
    """One panel per case, one line per method, regret on a log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(4, len(curves))
    lines = -(-len(curves) // columns)
    figure, panels = plt.subplots(lines, columns, figsize=(3.4 * columns, 3.0 * lines),
                                  squeeze=False)  # fmt: skip
    for axes, (title, medians) in zip(panels.flat, curves.items(), strict=False):
        for method, median in medians.items():
            steps = np.arange(1, median.size + 1)
            axes.plot(steps, np.maximum(median, 1e-6), label=method)
        axes.set_yscale("log")
        axes.set_title(title, fontsize=8)
        axes.set_xlabel("evaluation", fontsize=8)
    for axes in panels.flat[len(curves) :]:
        axes.set_visible(False)
    for axes in panels[:, 0]:
        axes.set_ylabel("median simple regret", fontsize=8)
    panels.flat[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def bench(quick: bool, recordings: Path, plot_to: Path | None) -> Rows:
    """Section 3: every case's rows; the regret curves plotted to ``plot_to``."""
    table: Rows = []
    curves = {}
    for case in cases(quick, recordings):
        outcomes = run(case)
        table += rows(case, outcomes)
        curves[f"{case.profile.name} / {case.surface}"] = regret(case, outcomes)
        print(f"  optimiser: {case.profile.name} / {case.surface} done", flush=True)
    if plot_to is not None:
        plot(curves, plot_to)
    return table
