"""Kernel Inception Distance (Bińkowski et al. 2018): unbiased MMD^2 with the cubic polynomial
kernel k(x, y) = (x.y / d + 1)^3, averaged over random subsets: 100 subsets of min(1000, n) samples
each, as in the paper. Unbiased, so it can dip below 0 for equal distributions, and it does not grow
with the sample count the way FID does."""
from __future__ import annotations

import numpy as np

from gan_core.metrics.frechet import MetricError


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    # MMD^2_u = sum_{i!=j} k(x_i,x_j)/(m(m-1)) + sum_{i!=j} k(y_i,y_j)/(n(n-1)) - 2 sum_{i,j} k(x_i,y_j)/(mn)
    m, n = len(x), len(y)
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2.0 * kxy.mean())


SUBSETS, SUBSET_SIZE = 100, 1000  # Bińkowski et al. 2018, section 4 (and their reference code)


def kernel_inception_distance(real: np.ndarray, fake: np.ndarray, subsets: int = SUBSETS,
                              subset_size: int = SUBSET_SIZE,
                              seed: int = 0) -> tuple[float, float]:
    """Mean and std of MMD^2 over `subsets` random subsets of min(subset_size, n_real, n_fake) each."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    size = min(subset_size, len(real), len(fake))
    if size < 2 or real.shape[1:] != fake.shape[1:]:
        raise MetricError(f"KID needs >= 2 samples of equal dimension, got {real.shape} and {fake.shape}")
    if not (np.isfinite(real).all() and np.isfinite(fake).all()):
        raise MetricError("KID: non-finite features")
    rng = np.random.default_rng(seed)
    vals = [mmd2_unbiased(real[rng.choice(len(real), size, replace=False)],
                          fake[rng.choice(len(fake), size, replace=False)]) for _ in range(subsets)]
    return float(np.mean(vals)), float(np.std(vals))
