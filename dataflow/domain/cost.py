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
  so far, or this one if it becomes the best), the last two each raised by the
  model's spread (one standard deviation of its residuals, in log seconds, pooled
  with ``PRIOR_SPREAD`` weighted as ``PRIOR_WEIGHT`` residuals), stay
  within the budget: a budget is what the engine's pause must not pass, and a step
  runs over its prediction as often as under it. A cost not
  measured (a record without a timestamp, a late answer to a resent command)
  counts as predicted. A round's first step always goes (a round cannot finalise
  without one); a round whose costs are all unknown is bounded by its step budget
  alone.

Limits, documented in the README: costs are differences of record timestamps, so a
round's first step (instruction to report) assumes the Observer's and the factory's
clocks agree unless the topics use ``LogAppendTime`` (the broker's one clock); a
step's cost includes any time the controller was down between its cause and its
sending; the time of failed attempts and of waits for a deadline is not counted.

``dataflow.domain.bayes`` chooses by the profile's acquisition among the points
the round can afford. Not per expected second: on the real factory's recorded
costs, where cost and the model's quality both grow with ``order``, cost-cooled EI
(Lee et al. 2020, "Cost-aware Bayesian optimization") and EI per second (Snoek et
al. 2012) finalised worse models at equal seconds than the acquisition alone
(README, "Time-budgeted rounds").
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
#: The spread (sd of log seconds) a round assumes before its fit has residuals to measure
#: one: about what the real factory's steps showed (0.08-0.26 per run, 0.44 in one 7-step run).
PRIOR_SPREAD: Final = 0.2
#: How many residuals' worth of weight the prior spread keeps against the measured ones:
#: an sd from two or three residuals is often far below the truth (or 0 by chance).
PRIOR_WEIGHT: Final = 3


@dataclass(frozen=True)
class CostModel:
    """``log seconds = intercept + slopes . unit(x)``, give or take ``spread``."""

    intercept: float
    slopes: tuple[float, ...]
    #: The residuals' standard deviation in log seconds, pooled with ``PRIOR_SPREAD``.
    spread: float = PRIOR_SPREAD

    def predict(self, unit: Array) -> Array:
        """Predicted seconds of each row of unit-cube points."""
        return np.asarray(np.exp(self.intercept + unit @ np.array(self.slopes)), dtype=float)

    @property
    def margin(self) -> float:
        """The factor a prediction is raised by when a round asks whether it can afford it."""
        return math.exp(self.spread)


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
    # The residuals' variance pooled with the prior's (a scaled inverse chi-squared prior
    # of PRIOR_WEIGHT degrees of freedom): the prior alone until the fit has residual
    # degrees of freedom, the measured spread as they grow.
    freedom = max(0, len(known) - X.shape[1] - 1)
    residuals = y - (intercept + X @ slopes)
    squares = float(residuals @ residuals) if freedom else 0.0
    spread = math.sqrt((PRIOR_WEIGHT * PRIOR_SPREAD**2 + squares) / (PRIOR_WEIGHT + freedom))
    return CostModel(intercept, tuple(float(s) for s in slopes), spread)


@dataclass(frozen=True)
class Ledger:
    """A budgeted round's accounts at one moment, worked out once per proposal.

    ``spent`` counts an unknown cost as predicted; ``best_s`` is the seconds of the
    step the round would finalise (measured, else predicted; None if neither).
    """

    budget_s: float
    model: CostModel | None
    spent: float
    best_s: float | None
    #: Whether the round has a step of its own (its first step always goes).
    started: bool

    def affordable(self, costs: Array) -> Array:
        """Which of the predicted ``costs`` the round can still spend (see the module docstring).

        The step and the finalised model are each taken at the cost model's ``margin``
        above their prediction (the best step's measured seconds likewise: a model built
        again takes as long give or take the same spread).
        """
        if not self.started:
            return np.ones(len(costs), dtype=bool)
        step = costs * self.margin
        finalise = step if self.best_s is None else np.maximum(step, self.best_s * self.margin)
        return np.asarray(self.spent + step + finalise <= self.budget_s, dtype=bool)

    @property
    def margin(self) -> float:
        """The factor ``affordable`` raises predictions by (1 before any cost was measured)."""
        return 1.0 if self.model is None else self.model.margin

    def finalised_s(self, predicted_s: float) -> float:
        """The finalised model's seconds if a step predicted at ``predicted_s`` is taken next."""
        return predicted_s if self.best_s is None else max(predicted_s, self.best_s)

    @property
    def expected_total(self) -> float:
        """The round's seconds if it finalises now: its steps and the best one built again."""
        return self.spent + (self.best_s or 0.0)


def ledger(snapshot: OptimiserSnapshot) -> Ledger | None:
    """The round's accounts; None for a round without a time budget."""
    budget = snapshot.profile.round_budget_s
    if budget is None:
        return None
    model = fit(snapshot)
    profile = snapshot.profile

    def seconds(observation: Observation) -> float | None:
        if observation.cost_s is not None or model is None:
            return observation.cost_s
        return float(model.predict(np.array([to_unit(profile, observation.x)]))[0])

    observations = snapshot.observations
    spent = math.fsum(seconds(o) or 0.0 for o in observations)
    best_s = None
    if observations:
        ys = [o.y for o in observations]
        best_s = seconds(observations[ys.index(min(ys))])
    return Ledger(budget, model, spent, best_s, bool(observations))


def predicted(snapshot: OptimiserSnapshot, point: Point) -> float | None:
    """Predicted seconds of evaluating ``point``; None without a budget or a measurement."""
    if snapshot.profile.round_budget_s is None:
        return None
    model = fit(snapshot)
    if model is None:
        return None
    return float(model.predict(np.array([to_unit(snapshot.profile, point)]))[0])


def fits(snapshot: OptimiserSnapshot, predicted_s: float | None) -> bool:
    """Whether a step predicted to cost ``predicted_s`` fits the round's time budget."""
    accounts = ledger(snapshot)
    if predicted_s is None or accounts is None:
        return True
    return bool(accounts.affordable(np.array([predicted_s]))[0])
