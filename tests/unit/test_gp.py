"""The optimiser's Gaussian process: the model scikit-learn would fit, computed faster."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

from dataflow.domain import gp


def data(n: int = 18, d: int = 4, seed: int = 3) -> tuple[gp.Array, gp.Array]:
    rng = np.random.RandomState(seed)
    X = rng.uniform(0.0, 1.0, (n, d))  # noqa: N806
    y = np.sin(3.0 * X[:, 0]) + X[:, 1] ** 2 - 0.5 * X[:, 2] + 0.05 * rng.randn(n)
    return X, (y - y.mean()) / y.std()


def reference(theta: gp.Array, d: int) -> GaussianProcessRegressor:
    amplitude, lengths, noise = np.exp(theta[0]), np.exp(theta[1 : d + 1]), np.exp(theta[-1])
    kernel = ConstantKernel(amplitude) * Matern(lengths, nu=2.5) + WhiteKernel(noise)
    return GaussianProcessRegressor(kernel, optimizer=None, normalize_y=True)


THETAS = [np.array(t) for t in ([0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                                [0.7, -1.2, 0.3, 1.5, -0.4, np.log(1e-3)],
                                [-1.0, 2.0, -2.5, 0.1, 0.9, np.log(0.3)])]  # fmt: skip


@pytest.mark.parametrize("theta", THETAS)
def test_the_likelihood_and_its_gradient_are_scikit_learns(theta: gp.Array) -> None:
    X, y = data()  # noqa: N806
    model = reference(theta, X.shape[1]).fit(X, y)
    expected, expected_grad = model.log_marginal_likelihood(theta, eval_gradient=True)
    nll, grad = gp.negative_log_likelihood(theta, X, y)
    assert nll == pytest.approx(-expected, rel=1e-9)
    np.testing.assert_allclose(grad, -expected_grad, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("theta", THETAS)
def test_predictions_are_scikit_learns_without_the_noise_term(theta: gp.Array) -> None:
    X, y = data()  # noqa: N806
    y = 3.0 * y - 0.8  # the model normalises the target itself
    queries = np.vstack([np.random.RandomState(9).uniform(0.0, 1.0, (4000, X.shape[1])), X])
    mean, std = gp.GaussianProcess(X, y, theta).predict(queries, return_std=True)
    expected_mean, expected_std = (
        reference(theta, X.shape[1]).fit(X, y).predict(queries, return_std=True)
    )
    np.testing.assert_allclose(mean, expected_mean, rtol=1e-8, atol=1e-8)
    # scikit-learn's predictive std includes the white noise; scikit-optimize's (and ours) not.
    noise = np.exp(theta[-1]) * np.std(y) ** 2
    np.testing.assert_allclose(std**2 + noise, expected_std**2, rtol=1e-6, atol=1e-9)


def test_a_fit_finds_a_likelihood_at_least_as_good_as_each_start() -> None:
    X, y = data()  # noqa: N806
    starts = [gp.default_theta(X.shape[1]), gp.fresh_theta(X.shape[1])]
    model = gp.fit(X, y, starts)
    found, _ = gp.negative_log_likelihood(model.theta, X, y)
    assert all(found <= gp.negative_log_likelihood(start, X, y)[0] for start in starts)
