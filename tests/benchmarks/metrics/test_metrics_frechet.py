"""The shared Fréchet distance against closed forms and a direct computation."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.metrics.frechet import frechet_distance, frechet_distance_from_features, gaussian_stats


def test_one_dimensional_closed_form():
    # d² = (m1 - m2)² + (s1 - s2)² for N(m1, s1²), N(m2, s2²)
    d = frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-2.0]), np.array([[9.0]]))
    assert d == pytest.approx((1 + 2) ** 2 + (2 - 3) ** 2, rel=1e-10)


def test_diagonal_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    v1, v2 = rng.uniform(0.1, 3, size=5), rng.uniform(0.1, 3, size=5)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-9)


def _psd_sqrt(a):
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def test_general_covariances_match_direct_formula():
    # tr((S1 S2)^{1/2}) == tr((S1^{1/2} S2 S1^{1/2})^{1/2}), computed here with symmetric eigendecompositions
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    s1, s2 = a @ a.T + 0.1 * np.eye(6), b @ b.T + 0.1 * np.eye(6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    r1 = _psd_sqrt(s1)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(_psd_sqrt(r1 @ s2 @ r1))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)
    # symmetric in its two arguments
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(expected, rel=1e-8)


def test_identical_sets_give_zero_and_shift_gives_squared_offset():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(200, 8))
    assert frechet_distance_from_features(x, x) == pytest.approx(0.0, abs=1e-6)
    # a pure translation changes only the mean term
    assert frechet_distance_from_features(x, x + 0.5) == pytest.approx(8 * 0.25, rel=1e-6)


def test_singular_covariances_stay_finite():
    # fewer samples than dimensions: rank-deficient covariances (the usual FVD/FID small-sample case)
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(5, 32)), rng.normal(size=(5, 32)) + 1.0
    d = frechet_distance_from_features(x, y)
    assert np.isfinite(d) and d > 0
    assert frechet_distance_from_features(x, x) == pytest.approx(0.0, abs=1e-4)


def test_gaussian_stats_ddof():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(50, 3))
    mu, s = gaussian_stats(x, ddof=1)
    np.testing.assert_allclose(mu, x.mean(0))
    np.testing.assert_allclose(s, np.cov(x, rowvar=False))
    _, s0 = gaussian_stats(x, ddof=0)
    np.testing.assert_allclose(s0, (x.T @ x) / 50 - np.outer(x.mean(0), x.mean(0)), atol=1e-12)
    with pytest.raises(ValueError):
        gaussian_stats(x[:1], ddof=1)
    with pytest.raises(ValueError):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
