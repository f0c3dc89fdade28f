"""Inception Score (Salimans et al. 2016): exp(E_x KL(p(y|x) || p(y))), mean and std over splits.

High when each sample is classified confidently (low entropy p(y|x)) and the classes are diverse
(high entropy p(y)); ranges from 1 to the number of classes. Computed here with whatever classifier
the backbone has (the domain classifier on the spine), so it compares only within one backbone."""
from __future__ import annotations

import numpy as np

from gan_core.metrics.frechet import MetricError


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def inception_score(probs: np.ndarray, splits: int = 10) -> tuple[float, float]:
    p = np.asarray(probs, np.float64)
    if p.ndim != 2 or len(p) < splits or not np.isfinite(p).all():
        raise MetricError(f"inception score needs finite (N >= splits={splits}, K) probabilities, got {p.shape}")
    scores = []
    for part in np.array_split(p, splits):
        py = part.mean(axis=0, keepdims=True)
        # KL(p(y|x) || p(y)) per sample; 0 * log 0 = 0
        kl = np.where(part > 0, part * (np.log(np.clip(part, 1e-300, None)) - np.log(np.clip(py, 1e-300, None))), 0.0)
        scores.append(np.exp(kl.sum(axis=1).mean()))
    return float(np.mean(scores)), float(np.std(scores))
