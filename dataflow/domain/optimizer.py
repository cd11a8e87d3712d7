"""Step-wise Bayesian optimisation over scikit-optimize, driven by a compact snapshot.

Role: the state machine's optimiser. Its whole memory is an ``OptimiserSnapshot``
(plain, frozen, versioned data: the search space, the observations, and the
gp_hedge bookkeeping), never a live skopt object: Bytewax deep-copies and pickles
the state of every touched key at each epoch, and a live ``skopt.Optimizer``
carries every fitted GP (hundreds of KB). Each ``propose`` rebuilds what it needs
(one GP fit on the observations) from the snapshot.

Determinism: a proposal depends only on the snapshot, whose random seed is derived
from (session key, round, observation count). So a snapshot restored after a
crash proposes exactly what the uninterrupted run would have proposed, whatever
order Kafka delivered other keys' messages in.

Two modes on the same code: the step-wise API (``start``, ``propose``, ``learn``,
``finalise``) used by the state machine, and ``run_optimization`` for scripts.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Literal, TypeAlias

import msgspec
import numpy as np
from scipy.optimize import fmin_l_bfgs_b
from skopt.acquisition import gaussian_ei, gaussian_lcb, gaussian_pi
from skopt.space import Integer, Real, Space

from dataflow.domain import gp
from dataflow.domain.errors import ConfigError, SnapshotError
from dataflow.domain.messages import Params, ParamValue

SNAPSHOT_VERSION: Final = 1
Acquisition: TypeAlias = Literal["EI", "PI", "LCB", "gp_hedge"]
_HEDGE_PORTFOLIO: Final = ("EI", "LCB", "PI")  # skopt's order for gp_hedge
Point: TypeAlias = tuple[ParamValue, ...]


class Dimension(msgspec.Struct, frozen=True):
    """One named axis of the search space."""

    name: str
    kind: Literal["Real", "Integer"]
    low: float | int
    high: float | int


class Profile(msgspec.Struct, frozen=True):
    """How a round searches: the space, the budget and the acquisition strategy."""

    name: str
    dimensions: tuple[Dimension, ...]
    #: New evaluations (``opt_step`` commands) per round.
    budget: int
    #: Random proposals until this many observations (carried-over ones included) exist.
    n_initial: int
    acquisition: Acquisition
    #: Observations of a round carried into the next one (the newest ones).
    keep: int = 0
    #: Random candidates scored by the acquisition function at each proposal.
    n_candidates: int = 5000
    #: L-BFGS refinements of the acquisition optimum, started from the best candidates.
    n_refine: int = 0
    xi: float = 0.01
    kappa: float = 1.96

    @property
    def names(self) -> tuple[str, ...]:
        """Dimension names, in search-space (``opt_step`` list) order."""
        return tuple(d.name for d in self.dimensions)

    def validate(self) -> None:
        """Raise ``ConfigError`` listing every inconsistency of this profile."""
        problems = []
        if not self.dimensions:
            problems.append("no dimensions")
        if len(set(self.names)) != len(self.names):
            problems.append(f"duplicate dimension names {self.names}")
        for d in self.dimensions:
            if not d.low < d.high:
                problems.append(f"{d.name}: low {d.low} must be below high {d.high}")
            if d.kind == "Integer" and not (isinstance(d.low, int) and isinstance(d.high, int)):
                problems.append(f"{d.name}: Integer bounds must be integers")
        if self.budget < 1:
            problems.append(f"budget {self.budget} must be at least 1")
        if self.n_initial < 1 or self.keep < 0 or self.n_candidates < 1 or self.n_refine < 0:
            problems.append("n_initial >= 1, keep >= 0, n_candidates >= 1, n_refine >= 0")
        if problems:
            raise ConfigError(f"optimiser profile {self.name!r}: " + "; ".join(problems))


PROFILES: Final[Mapping[str, Profile]] = {
    # The seed (PyFlink) controller: two continuous parameters, a fresh GP each round.
    "seed": Profile(
        name="seed",
        dimensions=(
            Dimension("pMin", "Real", 0.001, 0.1),
            Dimension("gamma", "Real", 0.0, 0.005),
        ),
        budget=10,
        n_initial=5,
        acquisition="EI",
    ),
    # The original RTCEF controller: 15 new evaluations a round, warm-started from the
    # newest 5 observations of the previous round (or of the offline optimisation).
    "rtcef": Profile(
        name="rtcef",
        dimensions=(
            Dimension("confidence", "Real", 0.0, 1.0),
            Dimension("order", "Integer", 1, 5),
            Dimension("pmin", "Real", 0.0001, 0.01),
            Dimension("gamma", "Real", 0.0001, 0.01),
        ),
        budget=15,
        n_initial=5,
        acquisition="gp_hedge",
        keep=5,
    ),
}


class Observation(msgspec.Struct, frozen=True, array_like=True):
    """A point (in search-space order) and its score (lower is better)."""

    x: Point
    y: float


class OptimiserSnapshot(msgspec.Struct, frozen=True):
    """Everything a round's optimiser knows. Small, plain and versioned."""

    profile: Profile
    #: Session key and round number: with the observation count they seed every proposal.
    key: str
    round: int
    #: Observations carried in from before this round (warm start).
    prior: tuple[Observation, ...] = ()
    #: This round's observations, in evaluation order (``best_i`` indexes these).
    observations: tuple[Observation, ...] = ()
    #: The proposal awaiting its score.
    pending: Point | None = None
    #: gp_hedge: accumulated gains per portfolio member, and each member's last
    #: candidate (in the space's transformed [0, 1] coordinates).
    gains: tuple[float, ...] | None = None
    hedge_candidates: tuple[tuple[float, ...], ...] | None = None
    #: The surrogate's last fitted hyperparameters: the next fit starts from them.
    theta: tuple[float, ...] | None = None
    version: int = SNAPSHOT_VERSION

    @property
    def remaining(self) -> int:
        """How many evaluations this round may still ask for."""
        return self.profile.budget - len(self.observations)


# --------------------------------------------------------------------------- step-wise API


def start(
    profile: Profile, key: str, round_number: int, prior: Sequence[Observation] = ()
) -> OptimiserSnapshot:
    """Open a round: an empty snapshot that already knows the carried-over observations."""
    profile.validate()
    for observation in prior:
        _check_point(profile, observation.x)
    return OptimiserSnapshot(profile=profile, key=key, round=round_number, prior=tuple(prior))


def propose(snapshot: OptimiserSnapshot) -> tuple[Point, OptimiserSnapshot]:
    """The next point to evaluate, and the snapshot that awaits its score.

    Pure: the same snapshot always gives the same point.
    """
    _check_snapshot(snapshot)
    if snapshot.pending is not None:
        raise SnapshotError("propose: a proposal is already awaiting its score")
    if snapshot.remaining <= 0:
        raise SnapshotError("propose: the round's budget is spent")
    profile = snapshot.profile
    rng = np.random.RandomState(_seed(snapshot.key, snapshot.round, len(snapshot.observations)))
    told = snapshot.prior + snapshot.observations
    if len(told) >= profile.n_initial:
        try:
            with np.errstate(all="ignore"):
                point, gains, candidates, theta = _model_based(profile, told, snapshot, rng)
            return point, msgspec.structs.replace(
                snapshot, pending=point, gains=gains, hedge_candidates=candidates, theta=theta
            )
        except (ValueError, ArithmeticError, np.linalg.LinAlgError):
            # Numerically hopeless scores (a factory reporting 1e300s, say) must not
            # crash the step: Bytewax would replay the same report into the same crash
            # for ever. A random proposal, seeded like every other, keeps replay exact.
            rng = np.random.RandomState(_seed(snapshot.key, snapshot.round, len(told)))
    raw = _space(profile).rvs(n_samples=1, random_state=rng)[0]
    point = _to_point(profile, raw)
    return point, msgspec.structs.replace(snapshot, pending=point)


def learn(snapshot: OptimiserSnapshot, y: float) -> OptimiserSnapshot:
    """Record the score of the pending proposal."""
    _check_snapshot(snapshot)
    if snapshot.pending is None:
        raise SnapshotError("learn: no proposal is awaiting a score")
    if not math.isfinite(y):
        raise SnapshotError(f"learn: score must be finite, got {y!r}")
    observation = Observation(snapshot.pending, float(y))
    return msgspec.structs.replace(
        snapshot, observations=(*snapshot.observations, observation), pending=None
    )


def best_index(snapshot: OptimiserSnapshot) -> int:
    """0-based index, within this round, of the first lowest score (the ``best_i``)."""
    if not snapshot.observations:
        raise SnapshotError("best_index: the round has no observations")
    ys = [o.y for o in snapshot.observations]
    return ys.index(min(ys))


def finalise(snapshot: OptimiserSnapshot) -> tuple[int, Params]:
    """The round's ``best_i`` and its parameters, named."""
    index = best_index(snapshot)
    return index, named(snapshot.profile, snapshot.observations[index].x)


def carried(snapshot: OptimiserSnapshot) -> tuple[Observation, ...]:
    """The observations the next round starts from (the newest ``keep`` of this round)."""
    keep = snapshot.profile.keep
    return snapshot.observations[-keep:] if keep else ()


def named(profile: Profile, point: Point) -> Params:
    """A point as (name, value) pairs in search-space order."""
    return tuple(zip(profile.names, point, strict=True))


# --------------------------------------------------------------------------- snapshots as bytes

_SNAPSHOT_ENCODER: Final = msgspec.msgpack.Encoder()
_SNAPSHOT_DECODER: Final = msgspec.msgpack.Decoder(OptimiserSnapshot)


def snapshot_bytes(snapshot: OptimiserSnapshot) -> bytes:
    """The snapshot as compact MessagePack (what its size is measured by)."""
    return _SNAPSHOT_ENCODER.encode(snapshot)


def restore(data: bytes) -> OptimiserSnapshot:
    """Rebuild a snapshot from ``snapshot_bytes``; raises ``SnapshotError`` if unusable."""
    try:
        snapshot = _SNAPSHOT_DECODER.decode(data)
    except msgspec.DecodeError as error:
        raise SnapshotError(f"restore: {error}") from error
    _check_snapshot(snapshot)
    return snapshot


# --------------------------------------------------------------------------- warm-start files


def warm_start_document(profile: Profile, observations: Sequence[Observation]) -> dict[str, Any]:
    """The offline-optimisation JSON shape of the recordings (dimensions, x_iters, func_vals)."""
    return {
        "dimensions": [
            {"name": d.name, "kind": d.kind, "bounds": [d.low, d.high]} for d in profile.dimensions
        ],
        "x_iters": [list(o.x) for o in observations],
        "func_vals": [o.y for o in observations],
    }


def observations_from_warm_start(
    profile: Profile, document: Mapping[str, Any]
) -> tuple[Observation, ...]:
    """Read an offline-optimisation document, mapping its dimensions to the profile's by name.

    The recordings list dimensions as ``[order, confidence, pmin, gamma]`` while
    commands use ``[confidence, order, pmin, gamma]``: only names are trusted,
    and without regard to case (the maritime pickles say ``Order``, ``Pmin``).
    """
    try:
        names = [str(d["name"]) for d in document["dimensions"]]
        rows = document["x_iters"]
        ys = document["func_vals"]
    except (KeyError, TypeError) as error:
        raise ConfigError(f"warm start: missing or malformed field {error}") from error
    folded = [n.casefold() for n in names]
    wanted = [n.casefold() for n in profile.names]
    if len(set(folded)) != len(folded) or sorted(folded) != sorted(wanted):
        raise ConfigError(f"warm start: dimensions {names} do not match {list(profile.names)}")
    if len(rows) != len(ys):
        raise ConfigError(f"warm start: {len(rows)} x_iters but {len(ys)} func_vals")
    order = [folded.index(n) for n in wanted]
    observations = []
    for row, y in zip(rows, ys, strict=True):
        point = _to_point(profile, [row[i] for i in order])
        observations.append(Observation(point, float(y)))
    return tuple(observations)


# --------------------------------------------------------------------------- blocking mode


def run_optimization(
    objective: Callable[[Params], float],
    profile: Profile,
    *,
    key: str = "offline",
    round_number: int = 0,
    prior: Sequence[Observation] = (),
) -> OptimiserSnapshot:
    """Evaluate ``objective`` for a whole round's budget; the finished snapshot is returned.

    Uses exactly the step-wise API, so a script and the controller propose alike.
    ``warm_start_document(profile, snapshot.observations)`` turns the result into
    a warm-start file for the controller.
    """
    snapshot = start(profile, key, round_number, prior)
    while snapshot.remaining > 0:
        point, snapshot = propose(snapshot)
        snapshot = learn(snapshot, float(objective(named(profile, point))))
    return snapshot


# --------------------------------------------------------------------------- internals


def _seed(key: str, round_number: int, count: int) -> int:
    digest = hashlib.sha256(f"{key}\x1f{round_number}\x1f{count}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def _space(profile: Profile) -> Space:
    dims = [
        Integer(int(d.low), int(d.high), name=d.name, transform="normalize")
        if d.kind == "Integer"
        else Real(float(d.low), float(d.high), name=d.name, transform="normalize")
        for d in profile.dimensions
    ]
    return Space(dims)


def _to_point(profile: Profile, raw: Sequence[Any]) -> Point:
    """Plain Python numbers (ints for Integer axes), clipped to the bounds."""
    if len(raw) != len(profile.dimensions):
        raise ConfigError(f"point {list(raw)} has {len(raw)} values, expected {profile.names}")
    values: list[ParamValue] = []
    for d, value in zip(profile.dimensions, raw, strict=True):
        if d.kind == "Integer":
            values.append(int(min(max(round(float(value)), int(d.low)), int(d.high))))
        else:
            values.append(float(min(max(float(value), float(d.low)), float(d.high))))
    return tuple(values)


def _check_point(profile: Profile, point: Point) -> None:
    if len(point) != len(profile.dimensions):
        raise SnapshotError(f"point {point} does not fit the space {profile.names}")


def _check_snapshot(snapshot: OptimiserSnapshot) -> None:
    if snapshot.version != SNAPSHOT_VERSION:
        raise SnapshotError(
            f"snapshot version {snapshot.version} is not {SNAPSHOT_VERSION}: migrate it first"
        )
    for observation in snapshot.prior + snapshot.observations:
        _check_point(snapshot.profile, observation.x)


def _model_based(
    profile: Profile,
    told: tuple[Observation, ...],
    snapshot: OptimiserSnapshot,
    rng: np.random.RandomState,
) -> tuple[
    Point, tuple[float, ...] | None, tuple[tuple[float, ...], ...] | None, tuple[float, ...]
]:
    X = np.array([_to_unit(profile, o.x) for o in told])  # noqa: N806
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
    portfolio = _HEDGE_PORTFOLIO if profile.acquisition == "gp_hedge" else (profile.acquisition,)
    candidates = _sample_unit(profile, profile.n_candidates, rng)
    predicted = _Predicted(*model.predict(candidates, return_std=True))
    y_opt = float(np.min(y))
    best = [_minimise_acquisition(model, predicted, acq, candidates, y_opt, profile)
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
) -> gp.Array:
    """Best of the random candidates, optionally polished by bounded L-BFGS runs."""
    values = _acquire(predicted, acquisition, candidates, y_opt, profile)
    order = np.argsort(values, kind="stable")
    best_x, best_value = candidates[order[0]], float(values[order[0]])
    bounds = [(0.0, 1.0)] * candidates.shape[1]

    def value(x: gp.Array) -> float:
        return float(_acquire(model, acquisition, x.reshape(1, -1), y_opt, profile)[0])

    for start_x in candidates[order[: profile.n_refine]]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            x, found, _ = fmin_l_bfgs_b(value, start_x, bounds=bounds, approx_grad=True, maxiter=20)
        if float(found) < best_value:
            best_x, best_value = np.clip(x, 0.0, 1.0), float(found)
    return np.asarray(best_x, dtype=float)


def _acquire(
    model: Any,
    acquisition: str,
    X: gp.Array,  # noqa: N803
    y_opt: float,
    profile: Profile,
) -> gp.Array:
    # skopt's definitions, minimised: -EI, -PI and LCB.
    if acquisition == "LCB":
        return np.asarray(gaussian_lcb(X, model, kappa=profile.kappa), dtype=float)
    function = _ACQUISITIONS[acquisition]
    return np.asarray(-function(X, model, y_opt, xi=profile.xi), dtype=float)


def _to_unit(profile: Profile, point: Point) -> list[float]:
    """A point in the unit cube (skopt's ``normalize`` transform)."""
    return [
        (float(v) - float(d.low)) / (float(d.high) - float(d.low))
        for d, v in zip(profile.dimensions, point, strict=True)
    ]


def _from_unit(profile: Profile, unit: gp.Array) -> Point:
    """Back from the unit cube; Integer axes round to the nearest integer."""
    raw = [float(d.low) + float(u) * (float(d.high) - float(d.low))
           for d, u in zip(profile.dimensions, unit, strict=True)]  # fmt: skip
    return _to_point(profile, raw)


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
