"""Response surfaces: what score (``f_val``, lower is better) a simulated factory reports.

Synthetic surfaces have a known optimum, so a test or demo can tell how close the
controller's rounds got. Each works on any search space by first mapping every
parameter into [0, 1] with the profile's bounds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final

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
