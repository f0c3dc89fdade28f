"""How well a set of codes matches a prior: the kernel two-sample test of Gretton et al. 2012.

MMD^2 (unbiased) with an RBF kernel whose bandwidth is the median pairwise distance of the pooled
samples (the median heuristic), and a permutation test: the p-value is the share of random
relabellings of the pooled samples whose MMD^2 is at least the observed one (with the usual +1 in
numerator and denominator, so it is never 0). Pure torch, float64, on the CPU: n of a few hundred
gives (2n)^2 kernel entries, computed once and reused by every permutation.
"""
from __future__ import annotations

import torch


def median_bandwidth(d2: torch.Tensor) -> float:
    """sigma: the median of the pooled samples' pairwise distances (off-diagonal), 1 if all coincide."""
    n = d2.shape[0]
    off = d2[~torch.eye(n, dtype=torch.bool)]
    med = off.clamp_min(0).sqrt().median().item() if off.numel() else 0.0
    return med if med > 0 else 1.0


def _mmd2(k: torch.Tensor, first: torch.Tensor, n: int) -> torch.Tensor:
    """Unbiased MMD^2 for each row of `first` ((P, n + m) 0/1: which pooled rows form the first
    sample, n of them), from the pooled kernel matrix: all relabellings in one matrix product."""
    a = first.to(k.dtype)
    b = 1 - a
    m = k.shape[0] - n
    diag = k.diagonal()
    ka, kb = a @ k, b @ k
    within_a = ((ka * a).sum(1) - a @ diag) / (n * (n - 1))
    within_b = ((kb * b).sum(1) - b @ diag) / (m * (m - 1))
    return within_a + within_b - 2 * (ka * b).sum(1) / (n * m)


def mmd_test(x: torch.Tensor, y: torch.Tensor, permutations: int = 200, seed: int = 0) -> tuple[float, float]:
    """(MMD^2, permutation p-value) of samples x (n, d) and y (m, d), n, m >= 2. Seeded: same inputs,
    same p-value."""
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1] or len(x) < 2 or len(y) < 2:
        raise ValueError(f"mmd_test: need (n>=2, d) and (m>=2, d) samples, got {tuple(x.shape)} and {tuple(y.shape)}")
    pooled = torch.cat([x, y]).double()
    d2 = torch.cdist(pooled, pooled).pow(2)
    k = torch.exp(-d2 / (2 * median_bandwidth(d2) ** 2))
    n, total = len(x), len(pooled)
    first = (torch.arange(total) < n)[None]
    observed = _mmd2(k, first, n)[0]
    g = torch.Generator().manual_seed(seed)
    perms = torch.stack([torch.randperm(total, generator=g) for _ in range(permutations)])
    stats = _mmd2(k, first[0][perms], n)  # row i: the labels of permutation i
    hits = int((stats >= observed).sum())
    return float(observed), (1 + hits) / (1 + permutations)
