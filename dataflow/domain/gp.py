"""A small Gaussian-process surrogate for the optimiser, in plain NumPy.

Role: the model behind each proposal. It is the model scikit-optimize uses by
default for ``base_estimator="GP"`` (constant amplitude x Matern 5/2 with one
length scale per axis, plus white noise, on a normalised target), fitted by
maximising the log marginal likelihood with analytic gradients. Written out
here because scikit-learn's generic kernel machinery costs ~1 ms per likelihood
evaluation, which made each proposal 20x slower than the arithmetic needs at the
sizes a round has (tens of points, a handful of axes).

Pure: no state beyond the arrays it is given; deterministic for a given start.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray
from scipy.linalg import cho_solve, cholesky, solve_triangular
from scipy.optimize import fmin_l_bfgs_b

Array = NDArray[np.float64]

SQRT5: Final = math.sqrt(5.0)
#: log-space bounds, as scikit-optimize sets them: amplitude, each length scale, noise.
AMPLITUDE_BOUNDS: Final = (math.log(0.01), math.log(1000.0))
LENGTH_BOUNDS: Final = (math.log(0.01), math.log(100.0))
NOISE_BOUNDS: Final = (math.log(1e-5), math.log(1e5))
_JITTER: Final = 1e-10


def default_theta(n_dims: int) -> Array:
    """Amplitude 1, length scales 1, noise 1 (log space), scikit-optimize's starting point."""
    return np.zeros(n_dims + 2)


def fresh_theta(n_dims: int) -> Array:
    """Amplitude 1, length scales 1, noise 0.01 (log space): a start that assumes signal.

    From ``default_theta`` (noise as large as the signal) a fit of a few points
    often settles in a local optimum with short length scales or a flat model.
    """
    theta = default_theta(n_dims)
    theta[-1] = math.log(1e-2)
    return theta


def theta_bounds(n_dims: int) -> list[tuple[float, float]]:
    """L-BFGS-B bounds for ``[log amplitude, log length scales..., log noise]``."""
    return [AMPLITUDE_BOUNDS, *([LENGTH_BOUNDS] * n_dims), NOISE_BOUNDS]


def _matern(delta_sq: Array) -> tuple[Array, Array]:
    """Matern 5/2 of scaled squared distances, and exp(-sqrt5 r) terms reused by gradients."""
    r = np.sqrt(np.maximum(delta_sq.sum(axis=-1), 0.0))
    decay = np.exp(-SQRT5 * r)
    return (1.0 + SQRT5 * r + (5.0 / 3.0) * r * r) * decay, (1.0 + SQRT5 * r) * decay


def negative_log_likelihood(theta: Array, X: Array, y: Array) -> tuple[float, Array]:  # noqa: N803
    """Negative log marginal likelihood of normalised ``y`` and its gradient in ``theta``."""
    n, d = X.shape
    amplitude, lengths, noise = math.exp(theta[0]), np.exp(theta[1 : d + 1]), math.exp(theta[-1])
    scaled = (X[:, None, :] - X[None, :, :]) / lengths
    delta_sq = scaled * scaled
    shape, slope = _matern(delta_sq)
    signal = amplitude * shape
    K = signal.copy()  # noqa: N806
    K.flat[:: n + 1] += noise + _JITTER
    try:
        L = np.linalg.cholesky(K)  # noqa: N806
    except np.linalg.LinAlgError:
        return 1e25, np.zeros_like(theta)
    # K^-1 from the factor (what cho_solve against the identity does, without its checks):
    # the likelihood runs ~30 times a fit, at sizes where call overhead is the cost.
    factor_inverse = solve_triangular(L, np.eye(n), lower=True, check_finite=False)
    K_inverse = factor_inverse.T @ factor_inverse  # noqa: N806
    alpha = K_inverse @ y
    nll = 0.5 * float(y @ alpha) + float(np.log(np.diag(L)).sum()) + 0.5 * n * math.log(2 * math.pi)
    inner = np.outer(alpha, alpha) - K_inverse
    grad = np.empty_like(theta)
    grad[0] = -0.5 * float(np.sum(inner * signal))
    # d K / d log l_k = amplitude * 5/3 * slope * delta_sq[..., k], contracted with inner.
    weighted = (inner * slope).reshape(n * n) @ delta_sq.reshape(n * n, d)
    grad[1 : d + 1] = -0.5 * amplitude * (5.0 / 3.0) * weighted
    grad[-1] = -0.5 * noise * float(np.trace(inner))
    return nll, grad


class GaussianProcess:
    """A fitted GP: ``predict`` gives the noise-free mean and standard deviation."""

    def __init__(self, X: Array, y: Array, theta: Array) -> None:  # noqa: N803
        self.X = X
        self.theta = theta
        self.y_mean = float(np.mean(y))
        spread = float(np.std(y))
        self.y_std = spread if spread > 0 else 1.0
        target = (y - self.y_mean) / self.y_std
        d = X.shape[1]
        self.amplitude = math.exp(theta[0])
        self.lengths = np.exp(theta[1 : d + 1])
        noise = math.exp(theta[-1])
        K = self._kernel(X) + (noise + _JITTER) * np.eye(len(X))  # noqa: N806
        self.L = cholesky(K, lower=True)
        self.alpha = cho_solve((self.L, True), target)

    def _kernel(self, A: Array) -> Array:  # noqa: N803
        """Kernel of ``A`` with itself, by pairwise differences (exact zeros on the diagonal)."""
        scaled = (A[:, None, :] - A[None, :, :]) / self.lengths
        return self.amplitude * _matern(scaled * scaled)[0]

    def _cross(self, A: Array) -> Array:  # noqa: N803
        """Kernel between ``A`` and the training points, by one matrix product.

        |a - b|^2 = |a|^2 + |b|^2 - 2 a.b on length-scaled coordinates: for thousands of
        candidates this is ~10x cheaper than the pairwise differences ``_kernel`` forms
        (the rounding near zero distance is far below what the Matern kernel resolves).
        """
        a, b = A / self.lengths, self.X / self.lengths
        r = a @ (-2.0 * b.T)
        r += (a * a).sum(axis=1)[:, None]
        r += (b * b).sum(axis=1)[None, :]
        np.maximum(r, 0.0, out=r)
        np.sqrt(r, out=r)
        # amplitude (1 + sqrt5 r + 5/3 r^2) exp(-sqrt5 r), in place: arrays of ~10^5 values.
        kernel = np.exp(r * -SQRT5)
        kernel *= self.amplitude
        polynomial = r * (5.0 / 3.0)
        polynomial += SQRT5
        polynomial *= r
        polynomial += 1.0
        kernel *= polynomial
        return kernel

    def predict(self, Xs: Array, return_std: bool = False) -> Any:  # noqa: N803
        """Posterior mean (and std) in the target's units; same contract as scikit-learn's."""
        cross = self._cross(Xs)
        mean = cross @ self.alpha * self.y_std + self.y_mean
        if not return_std:
            return mean
        v = solve_triangular(self.L, cross.T, lower=True, check_finite=False)
        variance = np.maximum(self.amplitude - np.sum(v * v, axis=0), 1e-12)
        return mean, np.sqrt(variance) * self.y_std


def fit(X: Array, y: Array, starts: list[Array]) -> GaussianProcess:  # noqa: N803
    """Fit hyperparameters from each start (the best likelihood wins) and return the GP."""
    spread = float(np.std(y))
    target = (y - float(np.mean(y))) / (spread if spread > 0 else 1.0)
    bounds = theta_bounds(X.shape[1])
    best_theta, best_value = starts[0], math.inf
    for start in starts:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theta, value, _ = fmin_l_bfgs_b(
                negative_log_likelihood, start, args=(X, target), bounds=bounds, maxiter=200
            )
        if float(value) < best_value:
            best_theta, best_value = np.asarray(theta, dtype=float), float(value)
    return GaussianProcess(X, y, best_theta)
