"""Does G obey its controls? Metrics for the label a conditional G was asked for, and for the
categorical code of an InfoGAN, read off the domain classifier's predictions on G's images.

    class_acc   fraction of images the classifier assigns the requested class (chance: 1 / classes)
    code_acc    accuracy of the best code -> class mapping (each code value mapped to its most
                frequent predicted class). A collapsed G scores high here without any control,
                so it is reported with
    code_nmi    normalised mutual information between code and predicted class: 0 when the code
                says nothing about the class, 1 when it determines it; unaffected by collapse
"""
from __future__ import annotations

import numpy as np


def class_accuracy(requested: np.ndarray, predicted: np.ndarray) -> float:
    return float(np.mean(np.asarray(requested) == np.asarray(predicted)))


def contingency(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Counts table (values of a) x (values of b)."""
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    table = np.zeros((a.max() + 1, b.max() + 1), dtype=np.float64)
    np.add.at(table, (a, b), 1.0)
    return table


def mapped_accuracy(codes: np.ndarray, predicted: np.ndarray) -> float:
    """Accuracy when each code value predicts its most frequent class (cluster purity)."""
    table = contingency(codes, predicted)
    return float(table.max(axis=1).sum() / table.sum())


def normalized_mutual_info(a: np.ndarray, b: np.ndarray) -> float:
    """I(a; b) / sqrt(H(a) H(b)) in nats; 0 when either variable is constant."""
    p = contingency(a, b)
    p /= p.sum()
    pa, pb = p.sum(1), p.sum(0)
    nz = p > 0
    mi = float((p[nz] * np.log(p[nz] / (pa[:, None] * pb[None, :])[nz])).sum())
    ha = -float((pa[pa > 0] * np.log(pa[pa > 0])).sum())
    hb = -float((pb[pb > 0] * np.log(pb[pb > 0])).sum())
    return mi / np.sqrt(ha * hb) if ha > 0 and hb > 0 else 0.0


def control_scores(kind: str, requested: np.ndarray, logits: np.ndarray, name) -> dict[str, float]:
    """Metrics for `kind` ("class" or "code") given the classifier's logits; `name(prefix)` adds n."""
    predicted = np.asarray(logits).argmax(1)
    if kind == "class":
        return {name("class_acc"): class_accuracy(requested, predicted)}
    if kind == "code":
        return {name("code_acc"): mapped_accuracy(requested, predicted),
                name("code_nmi"): normalized_mutual_info(requested, predicted)}
    return {}
