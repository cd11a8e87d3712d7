"""The optimiser's data: the search space, the observations, and the round's snapshot.

Role: what a round of Bayesian optimisation remembers, as plain, frozen,
versioned records (Bytewax deep-copies and pickles the state of every touched
key at each epoch, so no live skopt object ever enters it), and the operations
every search strategy shares: open a round, record a score, pick the best step,
carry observations into the next round, read a warm start. *How* the next point
is chosen is a strategy's (``dataflow.domain.strategy``; the Gaussian process
one is ``dataflow.domain.bayes``).

The classes keep this module's path: recovery stores pickle them by it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal, TypeAlias

import msgspec

from dataflow.domain.errors import ConfigError, SnapshotError
from dataflow.domain.messages import Params, ParamValue

SNAPSHOT_VERSION: Final = 1
Acquisition: TypeAlias = Literal["EI", "PI", "LCB", "gp_hedge"]
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
    #: How the next point is chosen: a name in ``dataflow.domain.strategy.STRATEGIES``.
    strategy: str = "gp"
    #: Extra candidates drawn around the best random ones (Gaussian, ``local_scale`` in
    #: the unit cube), scored by the acquisition function too; 0: none.
    n_local: int = 0
    local_scale: float = 0.05
    #: The round's last evaluations that go to the model's predicted minimum (the
    #: posterior mean's, over the same candidates) instead of the acquisition function.
    exploit_last: int = 0
    #: A round that starts from carried-over observations spends its first evaluation
    #: on the best of them (the first lowest score), measured again on today's data;
    #: before the random start and ``exploit_last`` (a one-step round is only that).
    remeasure_best_kept: bool = False
    #: Factory seconds a round may spend on its steps and its finalised model (``None``:
    #: no time limit, only ``budget``). Costs are learned from the records' timestamps
    #: (``dataflow.domain.cost``); a round finalises before a step it expects to overrun,
    #: and chooses by its acquisition among the points it can afford.
    round_budget_s: float | None = None
    #: Mixed into every proposal's random state with the session key, round and
    #: observation count; 0 (the default) leaves the proposals as they always were.
    seed: int = 0

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
        if self.n_local < 0 or not 0 < self.local_scale <= 1:
            problems.append("n_local >= 0 and 0 < local_scale <= 1")
        if not 0 <= self.exploit_last <= max(self.budget, 0):
            problems.append(f"exploit_last {self.exploit_last} must be in [0, budget]")
        if not 0 <= self.seed < 2**32:
            problems.append(f"seed {self.seed} must be in [0, 2**32)")
        if self.round_budget_s is not None and not (
            math.isfinite(self.round_budget_s) and self.round_budget_s > 0
        ):
            problems.append(f"round_budget_s {self.round_budget_s} must be a positive number")
        if problems:
            raise ConfigError(f"optimiser profile {self.name!r}: " + "; ".join(problems))


class Observation(msgspec.Struct, frozen=True, array_like=True):
    """A point (in search-space order), its score (lower is better) and what it cost."""

    x: Point
    y: float
    #: Factory seconds, from the command's cause to its report in the logs; None: unknown.
    cost_s: float | None = None


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
    #: The pending proposal's predicted cost in seconds (``round_budget_s`` rounds only).
    predicted_s: float | None = None

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
        check_point(profile, observation.x)
    return OptimiserSnapshot(profile=profile, key=key, round=round_number, prior=tuple(prior))


def learn(snapshot: OptimiserSnapshot, y: float, cost_s: float | None = None) -> OptimiserSnapshot:
    """Record the score of the pending proposal (and what it cost, if known)."""
    check_snapshot(snapshot)
    if snapshot.pending is None:
        raise SnapshotError("learn: no proposal is awaiting a score")
    if not math.isfinite(y):
        raise SnapshotError(f"learn: score must be finite, got {y!r}")
    if cost_s is not None and not (math.isfinite(cost_s) and cost_s >= 0):
        cost_s = None  # clocks of two producers disagreeing: unknown, not negative
    observation = Observation(snapshot.pending, float(y), cost_s)
    return msgspec.structs.replace(
        snapshot, observations=(*snapshot.observations, observation), pending=None,
        predicted_s=None,
    )  # fmt: skip


def best_index(snapshot: OptimiserSnapshot) -> int:
    """0-based index, within this round, of the first lowest score (the ``best_i``)."""
    if not snapshot.observations:
        raise SnapshotError("best_index: the round has no observations")
    return _first_lowest(snapshot.observations)


def _first_lowest(observations: Sequence[Observation]) -> int:
    """Index of the first observation with the lowest score (ties: the earliest)."""
    ys = [observation.y for observation in observations]
    return ys.index(min(ys))


def finalise(snapshot: OptimiserSnapshot) -> tuple[int, Params]:
    """The round's ``best_i`` and its parameters, named."""
    index = best_index(snapshot)
    return index, named(snapshot.profile, snapshot.observations[index].x)


def best_kept(snapshot: OptimiserSnapshot) -> Point | None:
    """The point a warm round measures first (``Profile.remeasure_best_kept``), or None.

    The best carried-over observation, when the profile asks for it and the round
    has no observation of its own yet, clipped to today's space (a history kept
    under other bounds must not reach the factory outside them). Its factory model
    is the best kept configuration retrained on the current data: the round then
    never finalises worse than that (up to the factory's own noise). A model alone
    does not go back there: it proposes near the kept optimum, rarely on it, and on
    a rugged surface near is not as good.
    """
    if not (snapshot.profile.remeasure_best_kept and snapshot.prior) or snapshot.observations:
        return None
    return to_point(snapshot.profile, snapshot.prior[_first_lowest(snapshot.prior)].x)


def told(snapshot: OptimiserSnapshot) -> tuple[Observation, ...]:
    """What the surrogate is fitted on: the kept observations, then this round's.

    A kept observation whose point this round has measured again (``best_kept``) gives
    way to the new measurement: its score was measured on older data, and a round is
    asked for because the data moved (the real loop's kept best scored -0.42 offline,
    -0.66 measured again). Kept beside the new score, the pair is read by the GP as
    noise, or, where the two agree, as a point known twice over, which pins the model
    to the kept best (README, "Warm start from kept observations"). A kept point outside
    today's bounds stays: what was measured is its nearest point inside, another
    configuration. Only the surrogate's data changes: the random start still counts
    every measurement, kept ones included (``Profile.n_initial``).
    """
    measured = {o.x for o in snapshot.observations}
    return tuple(o for o in snapshot.prior if o.x not in measured) + snapshot.observations


def carried(snapshot: OptimiserSnapshot) -> tuple[Observation, ...]:
    """The observations the next round starts from (the newest ``keep`` of this round)."""
    keep = snapshot.profile.keep
    return snapshot.observations[-keep:] if keep else ()


def params_problem(profile: Profile, params: Params) -> str | None:
    """Why ``params`` are not a point of the profile's space (names, integers, bounds), or None."""
    names = [n for n, _ in params]
    if sorted(names) != sorted(profile.names):
        return f"parameters {names} must name exactly {list(profile.names)}"
    bounds = {d.name: d for d in profile.dimensions}
    for name, value in params:
        d = bounds[name]
        if d.kind == "Integer" and not isinstance(value, int):
            return f"parameter {name} must be an integer, got {value!r}"
        if not d.low <= value <= d.high:
            return f"parameter {name}={value!r} is outside [{d.low}, {d.high}]"
    return None


def named(profile: Profile, point: Point) -> Params:
    """A point as (name, value) pairs in search-space order."""
    return tuple(zip(profile.names, point, strict=True))


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
        point = to_point(profile, [row[i] for i in order])
        observations.append(Observation(point, float(y)))
    return tuple(observations)


# --------------------------------------------------------------------------- checks


def to_unit(profile: Profile, point: Point) -> list[float]:
    """A point in the unit cube (scikit-optimize's ``normalize`` transform)."""
    return [
        (float(v) - float(d.low)) / (float(d.high) - float(d.low))
        for d, v in zip(profile.dimensions, point, strict=True)
    ]


def to_point(profile: Profile, raw: Sequence[Any]) -> Point:
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


def check_point(profile: Profile, point: Point) -> None:
    """Raise ``SnapshotError`` unless ``point`` has one value per axis."""
    if len(point) != len(profile.dimensions):
        raise SnapshotError(f"point {point} does not fit the space {profile.names}")


def check_snapshot(snapshot: OptimiserSnapshot) -> None:
    """Raise ``SnapshotError`` unless this code can use ``snapshot``."""
    if snapshot.version != SNAPSHOT_VERSION:
        raise SnapshotError(
            f"snapshot version {snapshot.version} is not {SNAPSHOT_VERSION}: migrate it first"
        )
    for observation in snapshot.prior + snapshot.observations:
        check_point(snapshot.profile, observation.x)
