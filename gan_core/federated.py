"""The pure parts of federated training: who holds which rows (shards), and how the server averages
the clients' weights (FedAvg, McMahan et al. 2017). The rounds themselves, with Ray actors as
clients, are flows/stages/federated.py.

Shards are a function of (row count, labels, settings, seed) only, so every client computes the same
partition by itself and takes its own part: the server never needs to read the data, not even labels.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

from gan_core.sections import ConfigError, FederatedConfig


def shard_rows(n: int, labels: np.ndarray | None, f: FederatedConfig, seed: int) -> list[np.ndarray]:
    """Row indices (sorted int64) of each client's shard; shards are disjoint.

    iid: a seeded permutation of the n rows cut into `clients` near-equal parts (sizes differ by <= 1).
    classes: client k holds classes_per_client classes, taken round-robin from a seeded permutation of
    the classes (client k: perm[(k*m + j) % C], j < m); the rows of a class are shuffled and divided
    evenly among the clients that hold it. Every class is held by someone when clients*m >= C."""
    if n < f.clients:
        raise ConfigError("federated.clients", f"{f.clients} clients need at least as many training rows, got {n}")
    rng = np.random.default_rng(seed)
    if f.split == "iid":
        return [np.sort(part).astype(np.int64) for part in np.array_split(rng.permutation(n), f.clients)]
    if labels is None:
        raise ConfigError("federated.split", "classes needs a labelled dataset; this one has no labels (use iid)")
    classes = np.unique(labels)
    m = f.classes_per_client
    if m > len(classes):
        raise ConfigError("federated.classes_per_client", f"the dataset has {len(classes)} classes, got {m}")
    order = rng.permutation(classes)
    held = [[int(order[(k * m + j) % len(classes)]) for j in range(m)] for k in range(f.clients)]
    shards: list[list[np.ndarray]] = [[] for _ in range(f.clients)]
    for c in classes:
        holders = [k for k in range(f.clients) if int(c) in held[k]]
        rows = rng.permutation(np.flatnonzero(labels == c))
        for k, part in zip(holders, np.array_split(rows, len(holders)) if holders else []):
            shards[k].append(part)
    return [np.sort(np.concatenate(s)).astype(np.int64) if s else np.empty(0, np.int64) for s in shards]


def shard_classes(f: FederatedConfig, classes: Sequence[int], seed: int) -> list[list[int]]:
    """The classes each client holds under split=classes (what shard_rows uses), for reports."""
    order = np.random.default_rng(seed).permutation(np.asarray(sorted(classes)))
    m = f.classes_per_client
    return [sorted(int(order[(k * m + j) % len(order)]) for j in range(m)) for k in range(f.clients)]


def fedavg(states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """Weighted average of state dicts: out[k] = sum_i w_i * s_i[k] / sum_i w_i (w_i: client i's examples).

    Floating tensors (parameters, BN running mean/var) are averaged in float64 and cast back to their
    dtype. Integer and bool tensors are counters or flags (BN's num_batches_tracked), not weights: an
    average of counters is no count, so they take the maximum (clients start each round from the same
    value and run the same local steps, so they agree anyway)."""
    if not states or len(states) != len(weights):
        raise ValueError(f"fedavg: {len(states)} state dicts and {len(weights)} weights")
    total = float(sum(weights))
    if total <= 0 or any(w < 0 for w in weights):
        raise ValueError(f"fedavg: weights must be >= 0 with a positive sum, got {list(weights)}")
    keys = list(states[0])
    for i, s in enumerate(states[1:], 1):
        if list(s) != keys:
            raise ValueError(f"fedavg: client {i}'s state dict has other keys than client 0's")
    out = {}
    for k in keys:
        ts = [s[k] for s in states]
        if ts[0].is_floating_point():
            acc = sum(t.detach().to(torch.float64) * (w / total) for t, w in zip(ts, weights))
            out[k] = acc.to(ts[0].dtype)
        else:
            out[k] = torch.stack([t.detach() for t in ts]).max(dim=0).values
    return out


def weighted_mean(values: Sequence[Mapping[str, float]], weights: Sequence[float]) -> dict[str, float]:
    """Per-key weighted mean of the clients' metrics (a key only some clients report: over those)."""
    out = {}
    for k in sorted({k for v in values for k in v}):
        pairs = [(v[k], w) for v, w in zip(values, weights) if k in v]
        out[k] = sum(x * w for x, w in pairs) / max(sum(w for _, w in pairs), 1e-12)
    return out
