"""Fréchet distance between Gaussians fitted to features (the maths of FID).

FID = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)).
tr((S1 S2)^(1/2)) is computed as sum(sqrt(eig(A S2 A))) with A = S1^(1/2) from a symmetric
eigendecomposition: A S2 A is symmetric PSD, so its eigenvalues are real and >= 0 up to rounding,
unlike scipy's general `sqrtm(S1 @ S2)`, which has returned large imaginary parts in some versions.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class MetricError(ValueError):
    """A metric cannot be computed honestly (non-finite features, too few samples, ...)."""


@dataclass(frozen=True)
class FeatureStats:
    mu: np.ndarray  # (D,) float64
    sigma: np.ndarray  # (D, D) float64
    n: int


def feature_stats(features: np.ndarray) -> FeatureStats:
    """Mean and unbiased covariance of (N, D) features, in float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise MetricError(f"features: need (N >= 2, D), got shape {f.shape}")
    if not np.isfinite(f).all():
        raise MetricError(f"features: {int((~np.isfinite(f)).sum())} non-finite values")
    return FeatureStats(f.mean(axis=0), np.cov(f, rowvar=False), len(f))


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise MetricError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    for name, a in (("mu1", mu1), ("sigma1", s1), ("mu2", mu2), ("sigma2", s2)):
        if not np.isfinite(a).all():
            raise MetricError(f"{name}: non-finite values")
    a = _psd_sqrt(s1)
    m = a @ s2 @ a
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = np.sqrt(np.clip(eig, 0, None)).sum()
    diff = mu1 - mu2
    fid = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)
    if not np.isfinite(fid):
        raise MetricError(f"Fréchet distance is not finite ({fid})")
    return max(fid, 0.0)  # rounding can leave a tiny negative for identical statistics


def fid_from_stats(a: FeatureStats, b: FeatureStats) -> float:
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
