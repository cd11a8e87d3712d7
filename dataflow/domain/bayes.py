"""The Gaussian-process strategy: scikit-optimize's ``gp_minimize`` as a pure, step-wise function.

Role: choose the next point of a round. ``propose`` rebuilds what it needs (one
GP fit on the observations, ``dataflow.domain.gp``) from the snapshot alone, so
a snapshot restored after a crash proposes exactly what the uninterrupted run
would have.

Determinism: a proposal depends only on the snapshot, whose random seed is derived
from (session key, round, observation count, ``OPTIMISER_SEED``), never on the
order Kafka delivered other keys' messages in.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from typing import Any, Final

import msgspec
import numpy as np
from numpy.typing import NDArray
from scipy.optimize import fmin_l_bfgs_b
from skopt.acquisition import gaussian_ei, gaussian_lcb, gaussian_pi
from skopt.space import Integer, Real, Space

from dataflow.domain import cost, gp, optimizer
from dataflow.domain.optimizer import (
    Observation,
    OptimiserSnapshot,
    Point,
    Profile,
    to_point,
    to_unit,
)

_HEDGE_PORTFOLIO: Final = ("EI", "LCB", "PI")  # skopt's order for gp_hedge
#: How many of the best random candidates the local sample (``Profile.n_local``) surrounds.
_LOCAL_CENTRES: Final = 5


def propose(snapshot: OptimiserSnapshot) -> tuple[Point, OptimiserSnapshot]:
    """The next point to evaluate, and the snapshot with this strategy's bookkeeping.

    Pure: the same snapshot always gives the same point. ``strategy.propose``
    checks the snapshot first and marks the point pending. A round with a time
    budget chooses by the acquisition among the points it can afford
    (``dataflow.domain.cost``); if it can afford none, the cheapest (the caller then
    finalises instead).
    """
    profile = snapshot.profile
    rng = np.random.RandomState(_seed(snapshot, len(snapshot.observations)))
    told = optimizer.told(snapshot)
    budget = _Budget.of(snapshot)
    count = len(snapshot.prior) + len(snapshot.observations)  # every measurement counts
    if count >= profile.n_initial:
        try:
            with np.errstate(all="ignore"):
                point, gains, candidates, theta = _model_based(profile, told, snapshot, rng, budget)
            return point, msgspec.structs.replace(
                snapshot, gains=gains, hedge_candidates=candidates, theta=theta
            )
        except (ValueError, ArithmeticError, np.linalg.LinAlgError):
            # Numerically hopeless scores (a factory reporting 1e300s, say) must not
            # crash the step: Bytewax would replay the same report into the same crash
            # for ever. A random proposal, seeded like every other, keeps replay exact.
            rng = np.random.RandomState(_seed(snapshot, count))
    if budget is None:
        raw = space(profile).rvs(n_samples=1, random_state=rng)[0]
        return to_point(profile, raw), snapshot
    # A budgeted random start: the first of a random sample the round can afford.
    sample = _sample_unit(profile, profile.n_candidates, rng)
    costs = budget.model.predict(sample)
    affordable = budget.accounts.affordable(costs)
    index = int(np.argmax(affordable)) if affordable.any() else int(np.argmin(costs))
    return _from_unit(profile, sample[index]), snapshot


@dataclass(frozen=True)
class _Budget:
    """A round's time budget, as the acquisition sees it: what each candidate would cost."""

    accounts: cost.Ledger
    model: cost.CostModel

    @classmethod
    def of(cls, snapshot: OptimiserSnapshot) -> _Budget | None:
        """The round's budget, or None without one or before any cost was measured."""
        accounts = cost.ledger(snapshot)
        if accounts is None or accounts.model is None:
            return None
        return cls(accounts, accounts.model)

    def screened(self, X: gp.Array, values: gp.Array) -> gp.Array:  # noqa: N803
        """Acquisition values (minimised), the points the round cannot afford last.

        Not per expected second: on the real factory's recorded costs, cost-cooled EI
        (Lee et al. 2020) and EI per second (Snoek et al. 2012) finalised worse models
        than the acquisition alone at equal seconds (README, "Time-budgeted rounds").
        """
        return np.where(self.accounts.affordable(self.model.predict(X)), values, np.inf)


def _seed(snapshot: OptimiserSnapshot, count: int) -> int:
    text = f"{snapshot.key}\x1f{snapshot.round}\x1f{count}"
    if snapshot.profile.seed:  # 0: the proposals every earlier version made
        text += f"\x1f{snapshot.profile.seed}"
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:4], "big")


def space(profile: Profile) -> Space:
    """The profile's search space as scikit-optimize's (axes normalised to [0, 1])."""
    dims = [
        Integer(int(d.low), int(d.high), name=d.name, transform="normalize")
        if d.kind == "Integer"
        else Real(float(d.low), float(d.high), name=d.name, transform="normalize")
        for d in profile.dimensions
    ]
    return Space(dims)


def _model_based(
    profile: Profile,
    told: tuple[Observation, ...],
    snapshot: OptimiserSnapshot,
    rng: np.random.RandomState,
    budget: _Budget | None,
) -> tuple[
    Point, tuple[float, ...] | None, tuple[tuple[float, ...], ...] | None, tuple[float, ...]
]:
    X = np.array([to_unit(profile, o.x) for o in told])  # noqa: N806
    y = np.array([o.y for o in told], dtype=float)
    # The GP normalises y itself; scores far beyond [-1, 1] (f_val is -MCC) would
    # overflow on the way, so bring them back first. Ordinary scores are untouched.
    y = y / max(1.0, float(np.max(np.abs(y))))
    # Two hyperparameter searches, the better likelihood wins: from the previous fit
    # (the data grew by a point, so its optimum moved little; scikit-optimize's start
    # the first time) and from a fresh start with little noise. From the previous fit
    # alone, a round kept the local optimum of its first, five-point fit (on rtcef's
    # bowl, 196 of 500 fits found a better likelihood from the fresh start, and rounds
    # did no better than random search); scikit-optimize restarts thrice, at ~10x the cost.
    start_theta = gp.default_theta(X.shape[1])
    if snapshot.theta is not None and len(snapshot.theta) == len(start_theta):
        start_theta = np.array(snapshot.theta)
    model = gp.fit(X, y, [start_theta, gp.fresh_theta(X.shape[1])])
    theta = tuple(float(t) for t in model.theta)
    candidates = _sample_unit(profile, profile.n_candidates, rng)
    if budget is not None:
        costs = budget.model.predict(candidates)
        if not budget.accounts.affordable(costs).any():  # the caller finalises instead
            cheapest = candidates[int(np.argmin(costs))]
            return _from_unit(profile, cheapest), snapshot.gains, snapshot.hedge_candidates, theta
    if snapshot.remaining <= profile.exploit_last:
        # The round finalises its best reported step, so what its last evaluations
        # learn can no longer steer this round (the next may keep them): they go where
        # the model predicts the minimum. The acquisition functions keep exploring to
        # the end (LCB's corners, EI's margin xi); on the smooth bowls this last step
        # closed the gap to scikit-optimize's L-BFGS-polished proposals (benchmark
        # section 3). A round still in its random start (n_initial) stays random.
        predicted = _Predicted(model.predict(candidates), np.zeros(len(candidates)))
        x = _minimise_acquisition(model, predicted, "mean", candidates, float(np.min(y)), profile,
                                  rng, budget)  # fmt: skip
        return _from_unit(profile, x), snapshot.gains, snapshot.hedge_candidates, theta
    portfolio = _HEDGE_PORTFOLIO if profile.acquisition == "gp_hedge" else (profile.acquisition,)
    predicted = _Predicted(*model.predict(candidates, return_std=True))
    y_opt = float(np.min(y))
    best = [_minimise_acquisition(model, predicted, acq, candidates, y_opt, profile, rng, budget)
            for acq in portfolio]  # fmt: skip
    if profile.acquisition != "gp_hedge":
        return _from_unit(profile, best[0]), None, None, theta
    gains = np.array(snapshot.gains if snapshot.gains is not None else (0.0,) * len(portfolio))
    if snapshot.hedge_candidates is not None:
        # skopt's hedge: reward each member by how good the model now thinks its last pick is.
        gains = gains - model.predict(np.array(snapshot.hedge_candidates))
    logits = gains - np.max(gains)
    probabilities = np.exp(logits) / np.sum(np.exp(logits))
    chosen = int(np.argmax(rng.multinomial(1, probabilities)))
    point = _from_unit(profile, best[chosen])
    hedge = tuple(tuple(float(v) for v in b) for b in best)
    return point, tuple(float(g) for g in gains), hedge, theta


class _Predicted:
    """A model stand-in holding predictions already made for the candidates.

    skopt's acquisition functions ask the model to predict; the three members of
    gp_hedge would each predict the same 5000 candidates. This answers from memory.
    """

    def __init__(self, mean: gp.Array, std: gp.Array) -> None:
        self.mean, self.std = mean, std

    def predict(self, X: gp.Array, return_std: bool = False) -> Any:  # noqa: N803
        return (self.mean, self.std) if return_std else self.mean


_ACQUISITIONS: Final = {"EI": gaussian_ei, "PI": gaussian_pi, "LCB": gaussian_lcb}


def _minimise_acquisition(
    model: gp.GaussianProcess,
    predicted: _Predicted,
    acquisition: str,
    candidates: gp.Array,
    y_opt: float,
    profile: Profile,
    rng: np.random.RandomState,
    budget: _Budget | None = None,
) -> gp.Array:
    """Best of the random candidates and of a local sample around the best of them.

    Optionally polished by bounded L-BFGS runs (``n_refine``; slow: one model
    prediction per evaluation).
    """

    def acquire(source: Any, X: gp.Array) -> gp.Array:  # noqa: N803
        values = _acquire(source, acquisition, X, y_opt, profile)
        return values if budget is None else budget.screened(X, values)

    values = acquire(predicted, candidates)
    order = _smallest(values, max(_LOCAL_CENTRES, profile.n_refine))
    best_x, best_value = candidates[order[0]], float(values[order[0]])
    bounds = [(0.0, 1.0)] * candidates.shape[1]

    def value(x: gp.Array) -> float:
        point = x.reshape(1, -1)
        # A budget judges the point that would be sent: Integer axes rounded.
        return float(acquire(model, point if budget is None else _on_grid(profile, point))[0])

    if profile.n_local:
        # Around the best few random candidates, a denser local look: a random sample
        # finds the right basin, rarely its floor (the acquisition's optimum is often
        # a sharp peak near the incumbent). Vectorised: one prediction for them all.
        centres = candidates[order[:_LOCAL_CENTRES]]
        per = max(1, profile.n_local // len(centres))
        jitter = rng.normal(0.0, profile.local_scale, (len(centres) * per, centres.shape[1]))
        local = _on_grid(profile, np.clip(np.repeat(centres, per, axis=0) + jitter, 0.0, 1.0))
        local_values = acquire(model, local)
        nearest = int(np.argmin(local_values))
        if float(local_values[nearest]) < best_value:
            best_x, best_value = local[nearest], float(local_values[nearest])
    for start_x in candidates[order[: profile.n_refine]]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            x, found, _ = fmin_l_bfgs_b(value, start_x, bounds=bounds, approx_grad=True, maxiter=20)
        if float(found) < best_value:
            best_x, best_value = np.clip(x, 0.0, 1.0), float(found)
    return np.asarray(best_x, dtype=float)


def _smallest(values: gp.Array, count: int) -> NDArray[np.intp]:
    """Indices of the ``count`` smallest values, in ``argsort(kind="stable")``'s order.

    A partition then a sort of the few: sorting all 5000 cost a third of a millisecond
    per acquisition function.
    """
    if count >= len(values):
        return np.argsort(values, kind="stable")
    threshold = np.partition(values, count - 1)[count - 1]
    if np.isnan(threshold):  # fewer than ``count`` numbers: argsort puts the NaNs last
        return np.argsort(values, kind="stable")[:count]
    chosen = np.flatnonzero(values <= threshold)  # ties at the threshold: lowest index first
    return chosen[np.argsort(values[chosen], kind="stable")][:count]


def _acquire(
    model: Any,
    acquisition: str,
    X: gp.Array,  # noqa: N803
    y_opt: float,
    profile: Profile,
) -> gp.Array:
    # skopt's definitions, minimised: -EI, -PI and LCB; and the posterior mean.
    if acquisition == "mean":
        return np.asarray(model.predict(X), dtype=float)
    if acquisition == "LCB":
        return np.asarray(gaussian_lcb(X, model, kappa=profile.kappa), dtype=float)
    function = _ACQUISITIONS[acquisition]
    return np.asarray(-function(X, model, y_opt, xi=profile.xi), dtype=float)


def _from_unit(profile: Profile, unit: gp.Array) -> Point:
    """Back from the unit cube; Integer axes round to the nearest integer."""
    raw = [float(d.low) + float(u) * (float(d.high) - float(d.low))
           for d, u in zip(profile.dimensions, unit, strict=True)]  # fmt: skip
    return to_point(profile, raw)


def _sample_unit(profile: Profile, n: int, rng: np.random.RandomState) -> gp.Array:
    """``n`` uniform candidates in the unit cube; Integer axes only at their grid points."""
    columns = []
    for d in profile.dimensions:
        if d.kind == "Integer":
            span = int(d.high) - int(d.low)
            columns.append(rng.randint(0, span + 1, size=n) / span)
        else:
            columns.append(rng.uniform(0.0, 1.0, size=n))
    return np.column_stack(columns)


def _on_grid(profile: Profile, unit: gp.Array) -> gp.Array:
    """Integer axes moved to their nearest grid point (in unit coordinates)."""
    unit = unit.copy()
    for i, d in enumerate(profile.dimensions):
        if d.kind == "Integer":
            span = int(d.high) - int(d.low)
            unit[:, i] = np.round(unit[:, i] * span) / span
    return unit
