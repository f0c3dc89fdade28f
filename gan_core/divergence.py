"""The divergence check, kept on the device: the loop records each step's non-finite losses without
waiting for the device, and reads the record (one all-reduce, one host read) only at the steps where
it must know: log steps, checkpoint steps (before the checkpoint is written, so a non-finite state is
never saved) and the last step. A diverged run therefore stops at most `min(log_every,
checkpoint_every) - 1` steps after its first non-finite loss, and the error names both steps.

Per set of metric keys (a lazy term such as R1 appears only on some steps) a device tensor holds,
per key, the first step whose value was NaN/Inf (NEVER while finite). Updating it is a few small
kernels queued behind the step: no `.item()`, no host copy.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist

NEVER = 2 ** 62  # "no non-finite value yet": above any step, so a MIN over steps and ranks keeps real ones


class DivergedError(RuntimeError):
    """A loss became NaN/Inf: training stops; retrying the same config would diverge again."""


class Divergence:
    def __init__(self, device: torch.device, world: int = 1):
        self.device, self.world = device, world
        self.first: dict[tuple[str, ...], torch.Tensor] = {}  # keys -> (len(keys),) int64 first bad step
        self.host: dict[str, int] = {}  # keys whose values came as Python numbers: checked for free

    def record(self, step: int, out: dict) -> None:
        """Note which of this step's values are non-finite; never waits for the device."""
        tensors = {}
        for k, v in out.items():
            if torch.is_tensor(v):
                tensors[k] = v
            elif not math.isfinite(v) and k not in self.host:
                self.host[k] = step
        if not tensors:
            return
        keys = tuple(tensors)
        values = torch.stack([v.detach().reshape(()).float() for v in tensors.values()])
        first = self.first.get(keys)
        if first is None:
            first = self.first[keys] = torch.full((len(keys),), NEVER, dtype=torch.int64, device=self.device)
        # steps only grow, so the minimum keeps the first non-finite step of each key
        torch.minimum(first, torch.where(values.isfinite(), NEVER, step), out=first)

    def check(self, step: int) -> None:
        """Collective when distributed (every rank calls it at the same steps): raise DivergedError on
        every rank if any rank has recorded a non-finite value. One all-reduce and one host read."""
        mins = [f.min() for f in self.first.values()]
        local = torch.stack(mins).min() if mins else torch.tensor(NEVER, device=self.device)
        if self.host:
            local = torch.clamp(local, max=min(self.host.values()))
        first = local.reshape(1).clone()
        if self.world > 1 and dist.is_initialized():
            dist.all_reduce(first, op=dist.ReduceOp.MIN)
        k = int(first.item())
        if k == NEVER:
            return
        raise DivergedError(f"diverged at or before step {step} (first non-finite: {', '.join(self.keys_at(k))} "
                            f"at step {k})")

    def keys_at(self, k: int) -> list[str]:
        """This rank's keys first non-finite at step k (the error path: reading the device is fine here)."""
        bad = [key for key, s in self.host.items() if s == k]
        for keys, first in self.first.items():
            bad += [key for key, s in zip(keys, first.tolist()) if s == k and key not in bad]
        return bad or ["(another rank's losses)"]
