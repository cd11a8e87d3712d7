"""The optimiser seam: how a round chooses its next point, by strategy name.

Role: the state machine asks ``propose`` for the next point of a round and
knows nothing else about search. A strategy is a pure function from a snapshot
(``dataflow.domain.optimizer``) to the next point and the snapshot with any
bookkeeping of its own; it must be deterministic (replay proposes the same
points). ``propose`` checks the snapshot before and marks the point pending after, and
gives a warm round's first step to its best kept point when the profile says so
(``Profile.remeasure_best_kept``), whatever the strategy; ``affordable`` says
whether a round with a time budget can still afford it. Adding
one is a module with that function and one line in ``STRATEGIES``; a profile
names it (``Profile.strategy``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import msgspec

from dataflow.domain import bayes, cost
from dataflow.domain.errors import SnapshotError
from dataflow.domain.messages import Params
from dataflow.domain.optimizer import (
    Observation,
    OptimiserSnapshot,
    Point,
    Profile,
    best_kept,
    check_point,
    check_snapshot,
    learn,
    named,
    start,
)


@dataclass(frozen=True)
class Strategy:
    """A way to choose the next point."""

    name: str
    summary: str
    propose: Callable[[OptimiserSnapshot], tuple[Point, OptimiserSnapshot]]


STRATEGIES: Final[Mapping[str, Strategy]] = {
    s.name: s
    for s in (
        Strategy("gp", "a Gaussian process and scikit-optimize's acquisition functions",
                 bayes.propose),
    )
}  # fmt: skip


def propose(snapshot: OptimiserSnapshot) -> tuple[Point, OptimiserSnapshot]:
    """The next point of the round, by the profile's strategy, and the snapshot awaiting it.

    Pure. Raises ``SnapshotError`` for a snapshot this code cannot use, one already
    awaiting a score, or a round whose budget is spent: no strategy sees those.
    """
    check_snapshot(snapshot)
    if snapshot.pending is not None:
        raise SnapshotError("propose: a proposal is already awaiting its score")
    if snapshot.remaining <= 0:
        raise SnapshotError("propose: the round's budget is spent")
    chosen = STRATEGIES.get(snapshot.profile.strategy)
    if chosen is None:
        raise SnapshotError(f"unknown optimiser strategy {snapshot.profile.strategy!r}; "
                            f"known: {list(STRATEGIES)}")  # fmt: skip
    kept = best_kept(snapshot)
    point, proposed = (kept, snapshot) if kept is not None else chosen.propose(snapshot)
    check_point(snapshot.profile, point)
    return point, msgspec.structs.replace(
        proposed, pending=point, predicted_s=cost.predicted(snapshot, point)
    )


def affordable(proposed: OptimiserSnapshot) -> bool:
    """Whether the round's time budget allows the step ``propose`` just made pending.

    Always true without a budget (``Profile.round_budget_s``) or a measured cost; a
    round that cannot afford it finalises instead (``dataflow.domain.cost``).
    """
    return cost.fits(proposed, proposed.predicted_s)


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
