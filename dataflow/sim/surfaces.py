"""Response surfaces: what score (``f_val``, lower is better) a simulated factory reports.

Synthetic surfaces have a known optimum, so a test or demo can tell how close the
controller's rounds got. Each works on any search space by first mapping every
parameter into [0, 1] with the profile's bounds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Final

import numpy as np

from dataflow.domain.messages import Params
from dataflow.domain.optimizer import Profile

Surface = Callable[[Params], float]


def _unit(profile: Profile, params: Params) -> list[float]:
    values = dict(params)
    return [(float(values[d.name]) - float(d.low)) / (float(d.high) - float(d.low))
            for d in profile.dimensions]  # fmt: skip


def bowl(profile: Profile, optimum: float = 0.3) -> Surface:
    """A smooth bowl: ``-1 + sum((u - optimum)^2)``, minimum ``-1`` at ``u = optimum``."""

    def score(params: Params) -> float:
        return -1.0 + sum((u - optimum) ** 2 for u in _unit(profile, params))

    return score


def rastrigin(profile: Profile) -> Surface:
    """A rugged surface (many local minima), global minimum ``-1`` at ``u = 0.5``."""

    def score(params: Params) -> float:
        xs = [(u - 0.5) * 5.12 * 2 for u in _unit(profile, params)]
        raw = 10 * len(xs) + sum(x * x - 10 * math.cos(2 * math.pi * x) for x in xs)
        return -1.0 + raw / (40.0 * len(xs))

    return score


SYNTHETIC: Final[dict[str, Callable[[Profile], Surface]]] = {
    "bowl": bowl,
    "rastrigin": rastrigin,
}


def recorded(profile: Profile, directory: Path, neighbours: int = 3) -> Surface:
    """Every recorded RTCEF run's step reports, pooled, as one surface: parameters -> ``f_val``.

    Reads every ``month_*/factory_reports.jsonl`` under ``directory`` whose
    ``params_dict`` names exactly the profile's parameters and whose metrics
    carry ``f_val``; a query scores the inverse-distance-weighted mean of its
    nearest recorded points in the unit cube (exact matches score as recorded).
    """
    points = [point for path in _runs(directory) for point in _steps(profile, path)]
    if not points:
        raise ValueError(f"no recorded step reports for {list(profile.names)} under {directory}")
    return _interpolated(profile, points, neighbours)


def recorded_runs(profile: Profile, directory: Path, neighbours: int = 3) -> dict[str, Surface]:
    """One surface per recorded run (``month_N``) that has step reports, as ``recorded`` builds it.

    Each run saw a different month of data, so the same parameters scored
    differently in each: pooled, those differences average out.
    """
    surfaces = {}
    for path in _runs(directory):
        points = _steps(profile, path)
        if points:
            surfaces[path.parent.name] = _interpolated(profile, points, neighbours)
    return surfaces


def recorded_costs(profile: Profile, paths: list[Path], neighbours: int = 3) -> Surface:
    """Seconds the real factory took per step, as a surface: parameters -> seconds.

    Reads ``step_costs.jsonl`` files (one JSON object per answered step: ``params``,
    ``seconds``; written by ``just rtcef-loop`` beside each run's traffic) whose
    parameters are exactly the profile's; a query costs the inverse-distance-weighted
    mean, in log seconds, of its nearest recorded steps in the unit cube.
    """
    points = []
    for path in paths:
        for line in path.read_text().splitlines():
            row = json.loads(line)
            params = row.get("params") or {}
            if sorted(params) == sorted(profile.names) and row.get("seconds", 0) > 0:
                points.append((_unit(profile, tuple(params.items())), math.log(row["seconds"])))
    if not points:
        raise ValueError(f"no recorded step costs for {list(profile.names)} in {paths}")
    log_seconds = _interpolated(profile, points, neighbours)
    return lambda params: math.exp(log_seconds(params))


def noisy(surface: Surface, sd: float, seed: int) -> Surface:
    """``surface`` plus Gaussian noise of ``sd`` at every call, as a retrained model scores.

    The same parameters score differently on repeat; the noise is seeded, so a
    run is reproducible.
    """
    rng = np.random.RandomState(seed)

    def score(params: Params) -> float:
        return surface(params) + float(rng.normal(0.0, sd))

    return score


def _runs(directory: Path) -> list[Path]:
    return sorted(directory.glob("month_*/factory_reports.jsonl"))


def _steps(profile: Profile, path: Path) -> list[tuple[list[float], float]]:
    steps = []
    for line in path.read_text().splitlines():
        report = json.loads(line)
        metrics = json.loads(report["metrics"]) if report["metrics"] else {}
        params = json.loads(report["params_dict"]) if report["params_dict"] else {}
        if "f_val" in metrics and sorted(params) == sorted(profile.names):
            steps.append((_unit(profile, tuple(params.items())), float(metrics["f_val"])))
    return steps


def _interpolated(
    profile: Profile, points: list[tuple[list[float], float]], neighbours: int
) -> Surface:
    table = np.array([point for point, _ in points])
    values = np.array([value for _, value in points])

    def score(params: Params) -> float:
        distances = np.linalg.norm(table - np.array(_unit(profile, params)), axis=1)
        nearest = np.argsort(distances, kind="stable")[:neighbours]
        if distances[nearest[0]] < 1e-12:
            return float(values[nearest[0]])
        weights = 1.0 / distances[nearest]
        return float(np.sum(weights * values[nearest]) / np.sum(weights))

    return score
