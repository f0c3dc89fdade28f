"""DDP replicas checked, not assumed: every rank must hold the same G, D and G_ema parameters.

DDP keeps replicas equal only while every rank starts from the same weights and averages the same
gradients; a rank that skips an all-reduce, a parameter outside DDP's buckets, or an optimizer
stepping on local gradients makes the ranks drift apart silently, and rank 0's checkpoint would
hide it. At each checkpoint (already a collective) the ranks compare a digest of their parameters:
per tensor, the float64 sum and the float64 sum of |p| weighted by position. Identical tensors
give identical digests bit for bit; a drift of one element changes them. Buffers (batch-norm
statistics) are per rank by design (`distribute` does not broadcast them) and are not compared.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from gan_core.steps import unwrap


class ReplicaMismatch(RuntimeError):
    """Ranks hold different parameters: gradient averaging (or a rank's optimizer) is broken."""


def digest(model: nn.Module) -> torch.Tensor:
    """(n_params, 2) float64: sum and position-weighted |sum| of each parameter tensor."""
    rows = []
    for p in unwrap(model).parameters():
        flat = p.detach().reshape(-1).double()
        weights = torch.arange(1, flat.numel() + 1, device=flat.device, dtype=torch.float64)
        rows.append(torch.stack([flat.sum(), (flat.abs() * weights).sum()]))
    return torch.stack(rows)


def check_replicas(models: dict[str, nn.Module], step: int) -> None:
    """Collective: raise ReplicaMismatch on every rank if any rank's parameters differ from rank 0's.
    A no-op outside a process group of more than one rank."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    parts = [digest(m).reshape(-1) for m in models.values()]
    sizes, mine = [x.numel() for x in parts], torch.cat(parts)
    everyone = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(everyone, mine)
    differ = set()
    for rank, theirs in enumerate(everyone[1:], start=1):
        for name, a, b in zip(models, everyone[0].split(sizes), theirs.split(sizes)):
            if not torch.equal(a, b):
                differ.add(f"{name} on rank {rank}")
    if differ:
        raise ReplicaMismatch(f"DDP replicas differ from rank 0 at step {step}: {', '.join(sorted(differ))} "
                              "(gradient averaging or a rank's optimizer is broken; this checkpoint is not saved)")
