"""Running a generator outside training: eval mode, in batches, on its own device, its mode restored.

Eval mode, not a paper's test-time dropout or batch statistics: scores must be a function of the
weights alone (the gate compares two generators on them) and equal what the exported program,
frozen in eval mode, produces. The same helpers drive modules and loaded torch.export programs.
"""
from __future__ import annotations

import torch
from torch import nn


def set_mode(module: nn.Module, training: bool) -> None:
    try:
        module.train(training)
    except NotImplementedError:  # a torch.export program is frozen in the mode it was exported in (eval)
        pass


def device_of(module: nn.Module, default: torch.device) -> torch.device:
    p = next(module.parameters(), None) if hasattr(module, "parameters") else None
    return p.device if p is not None else default  # a parameter-free module runs where the inputs are


@torch.no_grad()
def run_batched(module: nn.Module, inputs: torch.Tensor, direction: int | None = None,
                batch_size: int = 256) -> torch.Tensor:
    """module(inputs) (and the direction, for modules that translate several ways, as an int64 per
    row) in eval mode and in batches; float32 results on the inputs' device."""
    was_training = getattr(module, "training", False)
    set_mode(module, False)
    device = device_of(module, inputs.device)
    try:
        out = []
        for x in inputs.split(batch_size):
            args = (x.to(device),)
            if direction is not None:
                args += (torch.full((len(x),), direction, dtype=torch.long, device=device),)
            out.append(module(*args).float().to(inputs.device))
    finally:
        set_mode(module, was_training)
    return torch.cat(out) if out else inputs.new_zeros((0,))
