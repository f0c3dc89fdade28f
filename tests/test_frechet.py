import numpy as np
import pytest
import scipy.linalg

from gan_core.metrics.frechet import MetricError, feature_stats, fid_from_stats, frechet_distance


def _rand_cov(rng, d):
    a = rng.standard_normal((d, 2 * d))
    return a @ a.T / (2 * d)


def test_identical_statistics_give_zero():
    rng = np.random.default_rng(0)
    mu, s = rng.standard_normal(32), _rand_cov(rng, 32)
    assert frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-8)


def test_equal_covariances_give_squared_mean_distance():
    rng = np.random.default_rng(1)
    s = _rand_cov(rng, 16)
    mu1, mu2 = rng.standard_normal(16), rng.standard_normal(16)
    assert frechet_distance(mu1, s, mu2, s) == pytest.approx(np.sum((mu1 - mu2) ** 2), rel=1e-9)


def test_diagonal_gaussians_closed_form():
    # for commuting (diagonal) covariances: |dmu|^2 + sum (sqrt(a) - sqrt(b))^2
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 0.0])
    expected = 5.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_agrees_with_an_independent_float64_computation():
    rng = np.random.default_rng(2)
    d = 512
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d) * 0.5
    s1, s2 = _rand_cov(rng, d), _rand_cov(rng, d)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = covmean.real
    ref = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-6)


def test_feature_stats_and_sample_fid_of_two_gaussians():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((20000, 4))
    y = rng.standard_normal((20000, 4)) * 2.0 + 1.0  # N(1, 4I)
    # exact: |dmu|^2 = 4, tr: 4 + 16 - 2 * 4 * sqrt(4) = 4  -> 8
    assert fid_from_stats(feature_stats(x), feature_stats(y)) == pytest.approx(8.0, rel=0.03)


def test_non_finite_inputs_are_errors_never_scores():
    with pytest.raises(MetricError, match="non-finite"):
        feature_stats(np.array([[0.0, np.nan], [1.0, 2.0], [3.0, 4.0]]))
    with pytest.raises(MetricError):
        frechet_distance(np.array([np.inf]), np.eye(1), np.zeros(1), np.eye(1))
    with pytest.raises(MetricError, match="shape"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
