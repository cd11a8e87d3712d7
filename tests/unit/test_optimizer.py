"""The optimiser: pure proposals, small snapshots, exact resume, warm starts, both modes."""

from __future__ import annotations

import copy
import json
import pickle

import msgspec
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dataflow.domain import dialects, strategy
from dataflow.domain import optimizer as o
from dataflow.domain.errors import ConfigError, SnapshotError
from tests.support import RECORDINGS

RTCEF, SEED = dialects.PROFILES["rtcef"], dialects.PROFILES["seed"]


def bowl(params: o.Params) -> float:
    """A smooth test function with its minimum inside both spaces' bounds."""
    values = dict(params)
    return sum((float(v) - 0.004) ** 2 for v in values.values())


def grown(profile: o.Profile, count: int, key: str = "k") -> o.OptimiserSnapshot:
    snapshot = o.start(msgspec.structs.replace(profile, budget=count + 1), key, 0)
    for _ in range(count):
        point, snapshot = strategy.propose(snapshot)
        snapshot = o.learn(snapshot, bowl(o.named(profile, point)))
    return snapshot


def test_the_same_snapshot_always_proposes_the_same_point() -> None:
    snapshot = grown(RTCEF, 7)
    assert strategy.propose(snapshot) == strategy.propose(snapshot)


def test_a_restored_snapshot_proposes_exactly_what_the_uninterrupted_run_would() -> None:
    snapshot = grown(RTCEF, 9)
    data = pickle.dumps(snapshot)

    assert pickle.loads(data) == snapshot  # what Bytewax stores and restores
    assert strategy.propose(pickle.loads(data)) == strategy.propose(snapshot)
    assert strategy.propose(copy.deepcopy(snapshot)) == strategy.propose(snapshot)


def test_proposals_depend_on_the_session_key() -> None:
    assert (
        strategy.propose(grown(SEED, 2, key="a"))[0] != strategy.propose(grown(SEED, 2, key="b"))[0]
    )


def test_an_optimiser_seed_gives_other_proposals_and_zero_gives_the_old_ones() -> None:
    zero = grown(msgspec.structs.replace(SEED, seed=0), 2)
    assert strategy.propose(zero)[0] == strategy.propose(grown(SEED, 2))[0]
    seeded = grown(msgspec.structs.replace(SEED, seed=1), 2)
    assert strategy.propose(seeded)[0] != strategy.propose(zero)[0]
    assert strategy.propose(seeded) == strategy.propose(seeded)


def test_a_snapshot_with_fifty_four_dimensional_observations_is_under_16_kb() -> None:
    snapshot = grown(RTCEF, 50)
    assert len(snapshot.observations) == 50
    assert len(pickle.dumps(snapshot)) < 16 * 1024


@pytest.mark.parametrize("profile", [SEED, RTCEF], ids=lambda p: p.name)
def test_every_proposal_is_inside_the_space_with_integers_on_integer_axes(profile) -> None:
    snapshot = grown(profile, 12)
    for observation in snapshot.observations:
        for d, value in zip(profile.dimensions, observation.x, strict=True):
            assert d.low <= value <= d.high
            assert isinstance(value, int if d.kind == "Integer" else float)


def test_blocking_mode_runs_the_budget_on_the_step_wise_code() -> None:
    snapshot = strategy.run_optimization(bowl, SEED, key="offline")

    stepwise = o.start(SEED, "offline", 0)
    while stepwise.remaining:
        point, stepwise = strategy.propose(stepwise)
        stepwise = o.learn(stepwise, bowl(o.named(SEED, point)))
    assert snapshot == stepwise
    best_i, best = o.finalise(snapshot)
    assert bowl(best) == min(ob.y for ob in snapshot.observations)
    assert best_i == [ob.y for ob in snapshot.observations].index(bowl(best))


def test_the_model_based_phase_beats_its_own_random_start_on_a_smooth_function() -> None:
    snapshot = strategy.run_optimization(bowl, msgspec.structs.replace(SEED, budget=15), key="k")
    random_best = min(ob.y for ob in snapshot.observations[: SEED.n_initial])
    model_best = min(ob.y for ob in snapshot.observations[SEED.n_initial :])
    assert model_best < random_best


def test_a_recorded_offline_optimisation_warm_starts_by_dimension_name() -> None:
    document = json.loads((RECORDINGS / "month_0" / "offline_optimisation.json").read_text())

    observations = o.observations_from_warm_start(RTCEF, document)

    # The file lists [order, confidence, pmin, gamma]; commands use [confidence, order, ...].
    first = document["x_iters"][0]
    assert observations[0] == o.Observation((first[1], first[0], first[2], first[3]),
                                            document["func_vals"][0])  # fmt: skip
    assert len(observations) == len(document["x_iters"]) == 32


def test_a_warm_start_document_round_trips() -> None:
    snapshot = strategy.run_optimization(bowl, SEED)
    document = json.loads(json.dumps(o.warm_start_document(SEED, snapshot.observations)))
    assert o.observations_from_warm_start(SEED, document) == snapshot.observations


def test_a_warm_start_with_other_dimensions_is_refused() -> None:
    document = {"dimensions": [{"name": "x"}], "x_iters": [[1]], "func_vals": [0.0]}
    with pytest.raises(ConfigError, match=r"dimensions \['x'\] do not match"):
        o.observations_from_warm_start(SEED, document)


def test_the_next_round_carries_the_newest_observations() -> None:
    snapshot = grown(RTCEF, 8)
    assert o.carried(snapshot) == snapshot.observations[-5:]
    assert o.carried(grown(SEED, 3)) == ()


KEPT = (
    o.Observation((0.6, 2, 0.005, 0.002), -0.71),
    o.Observation((0.2, 4, 0.001, 0.0001), -0.93),
    o.Observation((0.3, 5, 0.002, 0.0004), -0.88),
    o.Observation((0.25, 4, 0.0009, 0.0001), -0.93),  # as good as the second: not chosen
    o.Observation((0.9, 1, 0.01, 0.01), 0.0),
)


def test_a_warm_round_first_measures_its_best_kept_point_again() -> None:
    assert RTCEF.remeasure_best_kept
    snapshot = o.start(RTCEF, "k", 3, KEPT)

    point, proposed = strategy.propose(snapshot)

    assert point == (0.2, 4, 0.001, 0.0001)  # the first lowest score, as best_i picks
    assert proposed == msgspec.structs.replace(snapshot, pending=point)  # nothing else moved


def test_a_kept_point_outside_todays_space_is_measured_at_its_nearest_point_inside() -> None:
    kept = (*KEPT, o.Observation((1.4, 7, 0.02, 0.00005), -0.95))  # under wider bounds

    point, _ = strategy.propose(o.start(RTCEF, "k", 3, kept))

    assert point == (1.0, 5, 0.01, 0.0001)


def test_after_the_kept_point_the_strategy_chooses_as_it_always_does() -> None:
    from dataflow.domain import bayes

    point, snapshot = strategy.propose(o.start(RTCEF, "k", 3, KEPT))
    snapshot = o.learn(snapshot, -0.9)

    second, proposed = strategy.propose(snapshot)

    chosen, bookkept = bayes.propose(snapshot)
    assert (second, proposed) == (chosen, msgspec.structs.replace(bookkept, pending=chosen))
    assert second != point


def test_a_kept_point_measured_again_gives_way_to_its_new_score() -> None:
    _, snapshot = strategy.propose(o.start(RTCEF, "k", 3, KEPT))
    snapshot = o.learn(snapshot, -0.66, 12.0)

    assert o.told(snapshot) == (
        KEPT[0], KEPT[2], KEPT[3], KEPT[4],  # the kept (0.2, 4, ...) at -0.93 is gone
        o.Observation((0.2, 4, 0.001, 0.0001), -0.66, 12.0),
    )  # fmt: skip


def test_a_kept_point_outside_todays_space_stays_beside_its_measurement_inside() -> None:
    wide = o.Observation((1.4, 7, 0.02, 0.00005), -0.95)
    _, snapshot = strategy.propose(o.start(RTCEF, "k", 3, (*KEPT, wide)))
    snapshot = o.learn(snapshot, -0.5)

    # What was measured is another configuration: the nearest point inside today's bounds.
    assert o.told(snapshot) == (*KEPT, wide, o.Observation((1.0, 5, 0.01, 0.0001), -0.5))


def test_the_random_start_counts_a_kept_point_measured_again_twice() -> None:
    from dataflow.domain import bayes

    few = msgspec.structs.replace(RTCEF, n_initial=4)
    kept = KEPT[:3]  # with the new score: three points for the surrogate, four measurements
    _, snapshot = strategy.propose(o.start(few, "k", 3, kept))
    snapshot = o.learn(snapshot, -0.9)

    _, proposed = bayes.propose(snapshot)

    assert len(o.told(snapshot)) == 3
    assert proposed.theta is not None  # model-based: a random proposal fits no GP


def test_the_surrogate_never_sees_the_kept_score_a_round_measured_again() -> None:
    from dataflow.domain import bayes

    _, snapshot = strategy.propose(o.start(RTCEF, "k", 3, KEPT))
    snapshot = o.learn(snapshot, -0.66)
    without = msgspec.structs.replace(snapshot, prior=(KEPT[0], KEPT[2], KEPT[3], KEPT[4]))

    point, proposed = bayes.propose(without)
    assert bayes.propose(snapshot) == (point, msgspec.structs.replace(proposed, prior=KEPT))


def test_without_the_setting_or_without_kept_points_the_strategy_chooses_the_first_step() -> None:
    from dataflow.domain import bayes

    plain = msgspec.structs.replace(RTCEF, remeasure_best_kept=False)
    for snapshot in (o.start(plain, "k", 3, KEPT), o.start(RTCEF, "k", 3)):
        assert o.best_kept(snapshot) is None
        chosen, bookkept = bayes.propose(snapshot)
        pending = msgspec.structs.replace(bookkept, pending=chosen)
        assert strategy.propose(snapshot) == (chosen, pending)


def test_a_round_stored_before_the_setting_existed_restores_with_it_off() -> None:
    cls, fields = RTCEF.__reduce__()
    before = o.Profile.__struct_fields__.index("remeasure_best_kept")

    class Stored:  # what a recovery store written by the previous version holds
        def __reduce__(self) -> tuple[object, tuple[object, ...]]:
            return cls, fields[:before]

    restored = pickle.loads(pickle.dumps(Stored()))

    assert restored == msgspec.structs.replace(RTCEF, remeasure_best_kept=False)


def test_misuse_of_the_step_wise_api_is_a_snapshot_error() -> None:
    fresh = o.start(SEED, "k", 0)
    _, pending = strategy.propose(fresh)
    with pytest.raises(SnapshotError, match="already awaiting"):
        strategy.propose(pending)
    with pytest.raises(SnapshotError, match="no proposal"):
        o.learn(fresh, 1.0)
    with pytest.raises(SnapshotError, match="budget is spent"):
        strategy.propose(strategy.run_optimization(bowl, msgspec.structs.replace(SEED, budget=1)))
    with pytest.raises(SnapshotError, match="version 2 is not 1"):
        strategy.propose(msgspec.structs.replace(fresh, version=2))


def test_a_bad_profile_lists_every_problem() -> None:
    dims = (o.Dimension("a", "Real", 1.0, 0.0), o.Dimension("a", "Integer", 0.5, 2))
    bad = o.Profile("bad", dims, budget=0, n_initial=1, acquisition="EI", exploit_last=3)
    with pytest.raises(ConfigError) as error:
        bad.validate()
    assert str(error.value) == (
        "optimiser profile 'bad': duplicate dimension names ('a', 'a'); a: low 1.0 must be below"
        " high 0.0; a: Integer bounds must be integers; budget 0 must be at least 1;"
        " exploit_last 3 must be in [0, budget]"
    )


@pytest.mark.parametrize("profile", [RTCEF, SEED], ids=["rtcef", "seed"])
@pytest.mark.parametrize("key", ["k", "other"])
def test_the_last_step_of_a_round_goes_where_the_model_predicts_the_minimum(profile, key) -> None:
    from dataflow.domain import gp
    from dataflow.sim.surfaces import SYNTHETIC

    surface = SYNTHETIC["bowl"](profile)  # its minimum inside the space, not at a corner
    assert profile.exploit_last == 1
    snapshot = o.start(profile, key, 0)
    while snapshot.remaining > 1:
        point, snapshot = strategy.propose(snapshot)
        snapshot = o.learn(snapshot, surface(o.named(profile, point)))
    last, proposed = strategy.propose(snapshot)
    # The hedge's bookkeeping is left as it was.
    assert (proposed.gains, proposed.hedge_candidates) == (snapshot.gains,
                                                           snapshot.hedge_candidates)  # fmt: skip
    # The acquisition function would have proposed elsewhere from the same snapshot.
    exploring = msgspec.structs.replace(profile, exploit_last=0)
    assert strategy.propose(msgspec.structs.replace(snapshot, profile=exploring))[0] != last
    # The model the proposal was made with: the observations, and the fit it stored.
    X = np.array([o.to_unit(profile, ob.x) for ob in snapshot.observations])  # noqa: N806
    model = gp.GaussianProcess(X, np.array([ob.y for ob in snapshot.observations]),
                               np.array(proposed.theta))  # fmt: skip
    predicted = model.predict(np.array([o.to_unit(profile, last)]))[0]
    # Chosen from a sample (5,000 random candidates and a local look around the best),
    # so not the exact minimum: below every observation and nearly every random point.
    assert predicted < float(np.min(model.predict(X)))
    random = model.predict(np.random.RandomState(0).uniform(0.0, 1.0, (2000, X.shape[1])))
    assert float(np.mean(random < predicted)) <= 0.005


@pytest.mark.parametrize(
    "scores",
    [[1e308, -1e308, 1e308, 5.0, 1e-300, -1e308], [1e300] * 8, [5e-324, -5e-324] * 4],
    ids=["alternating-extremes", "all-huge", "subnormal"],
)
def test_absurd_but_finite_scores_never_stop_the_optimiser(scores: list[float]) -> None:
    profile = msgspec.structs.replace(RTCEF, budget=len(scores) + 1, n_initial=2)
    snapshot = o.start(profile, "k", 0)
    for y in scores:
        _, snapshot = strategy.propose(snapshot)
        snapshot = o.learn(snapshot, y)

    point, _ = strategy.propose(snapshot)

    assert strategy.propose(snapshot)[0] == point  # still deterministic
    for d, value in zip(profile.dimensions, point, strict=True):
        assert d.low <= value <= d.high


def test_the_step_before_the_last_still_explores_with_the_acquisition_function() -> None:
    from dataflow.sim.surfaces import SYNTHETIC

    surface = SYNTHETIC["bowl"](RTCEF)
    snapshot = o.start(RTCEF, "k", 0)
    while snapshot.remaining > 2:
        point, snapshot = strategy.propose(snapshot)
        snapshot = o.learn(snapshot, surface(o.named(RTCEF, point)))
    point, proposed = strategy.propose(snapshot)
    assert proposed.gains != snapshot.gains  # gp_hedge chose and scored its members
    unchanged = msgspec.structs.replace(RTCEF, exploit_last=0)
    assert strategy.propose(msgspec.structs.replace(snapshot, profile=unchanged))[0] == point


@given(
    st.lists(st.one_of(st.integers(-3, 3).map(float), st.just(float("nan")),
                       st.floats(allow_nan=False)), min_size=1, max_size=40),
    st.integers(1, 45),
)  # fmt: skip
def test_the_few_best_candidates_are_those_a_stable_sort_puts_first(
    values: list[float], count: int
) -> None:
    from dataflow.domain.bayes import _smallest

    array = np.array(values)
    expected = np.argsort(array, kind="stable")[:count]
    assert list(_smallest(array, count)) == list(expected)
