"""What an evaluation costs: measured in the logs, predicted from the parameters.

Role: the time side of a round with a time budget (``Profile.round_budget_s``).
The real factory's time per step grows steeply with some parameters (Wayeb's
``order``: ~3.5 s at 2, ~8.5 s at 3, 14-21 s at 5 on one machine), and the round
pauses the engine for as long as it lasts. Three pure pieces:

* **Measured.** A step's cost is the time between its command's cause and its
  report, both read from the records' own timestamps in their topics (the
  report's, and the report, marker or instruction that made the controller send
  the command), never from the local clock: a replay measures the same seconds and
  makes the same choices. It is kept with the observation (``Observation.cost_s``).
* **Predicted.** Least squares on log seconds, linear in the unit-cube
  coordinates, with a small ridge on the slopes: a simple, low-variance model of
  the kind Guinet et al. (2020, "Pareto-efficient acquisition functions for
  cost-aware Bayesian optimization") found to predict training times well. It is
  fitted on every costed observation the round knows (carried-over ones too).
* **Spent.** A step fits if the round's spent seconds, its predicted cost, and
  the finalised model's (the best step's configuration built once more: the best
  so far, or this one if it becomes the best) stay within the budget; a cost not
  measured (a record without a timestamp, a late answer to a resent command)
  counts as predicted. A round's first step always goes (a round cannot finalise
  without one); a round whose costs are all unknown is bounded by its step budget
  alone.

Limits, documented in the README: costs are differences of record timestamps, so a
round's first step (instruction to report) assumes the Observer's and the factory's
clocks agree unless the topics use ``LogAppendTime`` (the broker's one clock); a
step's cost includes any time the controller was down between its cause and its
sending; the time of failed attempts and of waits for a deadline is not counted.

The acquisition is cost-cooled expected improvement (Lee et al. 2020, "Cost-aware
Bayesian optimization", CArBO): ``EI(x) / cost(x) ** alpha``, ``alpha`` the
fraction of the budget still unspent, so a round starts where improvement is
cheap and ends on plain EI. ``dataflow.domain.bayes`` applies it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np

from dataflow.domain.gp import Array
from dataflow.domain.optimizer import Observation, OptimiserSnapshot, Point, to_unit

#: Ridge penalty on the slopes (unit-cube coordinates, log seconds).
RIDGE: Final = 0.02
#: Costs below this are read as this (a log of 0 is undefined; a step is never free).
FLOOR_S: Final = 0.01


@dataclass(frozen=True)
class CostModel:
    """``log seconds = intercept + slopes . unit(x)``."""

    intercept: float
    slopes: tuple[float, ...]

    def predict(self, unit: Array) -> Array:
        """Predicted seconds of each row of unit-cube points."""
        return np.asarray(np.exp(self.intercept + unit @ np.array(self.slopes)), dtype=float)


def costed(snapshot: OptimiserSnapshot) -> tuple[Observation, ...]:
    """The observations whose cost is known, carried-over ones first."""
    return tuple(o for o in snapshot.prior + snapshot.observations if o.cost_s is not None)


def fit(snapshot: OptimiserSnapshot) -> CostModel | None:
    """The cost model of what the snapshot has measured; None if nothing was."""
    known = costed(snapshot)
    if not known:
        return None
    profile = snapshot.profile
    X = np.array([to_unit(profile, o.x) for o in known], dtype=float)  # noqa: N806
    y = np.log(np.array([max(float(o.cost_s or 0.0), FLOOR_S) for o in known]))
    centre = X.mean(axis=0)
    Xc = X - centre  # noqa: N806
    slopes = np.linalg.solve(Xc.T @ Xc + RIDGE * np.eye(X.shape[1]), Xc.T @ (y - y.mean()))
    intercept = float(y.mean() - centre @ slopes)
    return CostModel(intercept, tuple(float(s) for s in slopes))


def predicted(snapshot: OptimiserSnapshot, point: Point) -> float | None:
    """Predicted seconds of evaluating ``point``; None without a budget or a measurement."""
    if snapshot.profile.round_budget_s is None:
        return None
    model = fit(snapshot)
    if model is None:
        return None
    return float(model.predict(np.array([to_unit(snapshot.profile, point)]))[0])


def affordable(snapshot: OptimiserSnapshot, costs: Array) -> Array:
    """Which of the predicted ``costs`` the round can still spend (see the module docstring)."""
    budget = snapshot.profile.round_budget_s
    if budget is None or not snapshot.observations:
        return np.ones(len(costs), dtype=bool)
    best = _best_cost(snapshot)
    finalise = costs if best is None else np.maximum(costs, best)
    return np.asarray(spent(snapshot) + costs + finalise <= budget, dtype=bool)


def fits(snapshot: OptimiserSnapshot, predicted_s: float | None) -> bool:
    """Whether a step predicted to cost ``predicted_s`` fits the round's time budget."""
    if predicted_s is None:
        return True
    return bool(affordable(snapshot, np.array([predicted_s]))[0])


def spent(snapshot: OptimiserSnapshot) -> float:
    """Factory seconds this round's steps cost so far; an unknown cost counts as predicted."""
    return math.fsum(_cost_of(snapshot, o) for o in snapshot.observations)


def _cost_of(snapshot: OptimiserSnapshot, observation: Observation) -> float:
    """An observation's measured seconds, else the model's prediction for it, else 0."""
    if observation.cost_s is not None:
        return observation.cost_s
    guess = predicted(snapshot, observation.x)
    return 0.0 if guess is None else guess


def expected_total(snapshot: OptimiserSnapshot) -> float:
    """The round's seconds if it finalises now: its steps and the best one built again."""
    return spent(snapshot) + (_best_cost(snapshot) or 0.0)


def cooling(snapshot: OptimiserSnapshot) -> float:
    """CArBO's exponent: the unspent fraction of the budget (1 at the start, 0 at the end)."""
    budget = snapshot.profile.round_budget_s
    if budget is None:
        return 0.0
    return min(1.0, max(0.0, (budget - spent(snapshot)) / budget))


def _best_cost(snapshot: OptimiserSnapshot) -> float | None:
    """The seconds of the step the round would finalise (measured, else predicted)."""
    observations = snapshot.observations
    if not observations:
        return None
    ys = [o.y for o in observations]
    best = observations[ys.index(min(ys))]
    return best.cost_s if best.cost_s is not None else predicted(snapshot, best.x)
