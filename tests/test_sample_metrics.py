import numpy as np
import pytest

from gan_core.metrics.frechet import MetricError
from gan_core.metrics.inception_score import inception_score, softmax
from gan_core.metrics.kid import kernel_inception_distance, mmd2_unbiased
from gan_core.metrics.precision_recall import precision_recall


def test_inception_score_bounds():
    k = 5
    confident_diverse = np.eye(k)[np.arange(100) % k]  # each split holds every class equally
    assert inception_score(confident_diverse, splits=4) == pytest.approx((k, 0.0))
    assert inception_score(np.eye(k)[np.zeros(100, int)], splits=4)[0] == pytest.approx(1.0)  # one class only
    assert inception_score(np.full((100, k), 1 / k), splits=4)[0] == pytest.approx(1.0)  # no confidence
    assert np.allclose(softmax(np.array([[0.0, np.log(3.0)]])), [[0.25, 0.75]])


def test_mmd_of_point_masses_is_the_kernel_closed_form():
    d = 4
    a, b = np.full((6, d), 1.0), np.full((7, d), -0.5)
    k = lambda u, v: (u @ v / d + 1) ** 3
    expected = k(a[0], a[0]) + k(b[0], b[0]) - 2 * k(a[0], b[0])
    assert mmd2_unbiased(a, b) == pytest.approx(expected)


def test_kid_is_near_zero_for_one_distribution_and_grows_with_shift():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((1000, 16)), rng.standard_normal((1000, 16))
    same, same_std = kernel_inception_distance(x, y, subsets=20, subset_size=500)
    assert abs(same) < 3 * same_std + 1e-3
    small = kernel_inception_distance(x, y + 0.3, subsets=20, subset_size=500)[0]
    large = kernel_inception_distance(x, y + 1.0, subsets=20, subset_size=500)[0]
    assert 0 < small < large
    assert kernel_inception_distance(x, y, seed=1) == kernel_inception_distance(x, y, seed=1)


def test_precision_recall_on_constructed_manifolds():
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [20, 0], [0, 20], [20, 20]], float)
    real = np.concatenate([c + rng.standard_normal((200, 2)) for c in centres])
    assert precision_recall(real, real.copy()) == (1.0, 1.0)
    collapsed = centres[0] + rng.standard_normal((200, 2))  # one mode of four: faithful, poor coverage
    p, r = precision_recall(real, collapsed)
    assert p > 0.95 and 0.2 < r < 0.3
    p, r = precision_recall(real, real + 100.0)  # far away: neither
    assert (p, r) == (0.0, 0.0)


def test_bad_inputs_are_errors():
    with pytest.raises(MetricError):
        kernel_inception_distance(np.zeros((5, 2)), np.full((5, 2), np.nan))
    with pytest.raises(MetricError):
        precision_recall(np.zeros((3, 2)), np.zeros((10, 2)), k=3)
    with pytest.raises(MetricError):
        inception_score(np.zeros((3, 2)), splits=10)
