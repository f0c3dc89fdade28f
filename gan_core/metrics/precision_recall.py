"""Improved precision and recall (Kynkäänniemi et al. 2019) on features.

Each set's manifold is the union of balls around its samples, of radius the distance to the k-th
nearest neighbour within the set. Precision: share of fake samples inside the real manifold
(fidelity). Recall: share of real samples inside the fake manifold (coverage, catches mode collapse)."""
from __future__ import annotations

import numpy as np

from gan_core.metrics.frechet import MetricError


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def knn_radii(x: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """Squared distance from each row to its k-th nearest other row."""
    out = np.empty(len(x))
    for i in range(0, len(x), chunk):
        d = _sq_dists(x[i:i + chunk], x)
        out[i:i + chunk] = np.partition(d, k, axis=1)[:, k]  # index 0 is the point itself (distance 0)
    return out


def coverage(points: np.ndarray, centres: np.ndarray, radii: np.ndarray, chunk: int = 1024) -> float:
    """Share of points within radius of at least one centre."""
    inside = np.empty(len(points), dtype=bool)
    for i in range(0, len(points), chunk):
        inside[i:i + chunk] = (_sq_dists(points[i:i + chunk], centres) <= radii[None, :]).any(axis=1)
    return float(inside.mean())


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if min(len(real), len(fake)) <= k or real.shape[1:] != fake.shape[1:]:
        raise MetricError(f"precision/recall need > k={k} samples of equal dimension, got {real.shape}, {fake.shape}")
    if not (np.isfinite(real).all() and np.isfinite(fake).all()):
        raise MetricError("precision/recall: non-finite features")
    precision = coverage(fake, real, knn_radii(real, k))
    recall = coverage(real, fake, knn_radii(fake, k))
    return precision, recall
