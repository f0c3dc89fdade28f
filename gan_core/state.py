"""What a training step works on (TrainState) and the hooks the loop calls (Callback).

In its own module, apart from the loop (gan_core.train) and the checkpoint format, so the families'
steps, the phases and the metrics' in-training monitor can name them without importing the
training stack.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from gan_core.family import Family
    from gan_core.losses import LossPair


@dataclass
class TrainState:
    family: Family
    G: nn.Module  # DDP-wrapped when distributed
    D: nn.Module
    G_ema: nn.Module  # never wrapped: an average of G's weights, used for evaluation and export
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    loss: LossPair
    device: torch.device
    n_classes: int = 0  # classes of the dataset a conditional family was built for (0: unconditional)
    world: int = 1
    step: int = 0
    images_seen: int = 0
    bf16: bool = False
    channels_last: bool = False
    extra: dict = field(default_factory=dict)  # family-specific state (phase, image pools); checkpointed
    options: Any = None  # the family's Options (its `family:` config section), or None
    # fp16 loss scaling; None on CPU and with bf16 (same exponent range as fp32: nothing to scale).
    # Checkpointed when present, so a resumed fp16 run keeps its scale instead of re-warming it.
    scaler: torch.amp.GradScaler | None = None

    def autocast(self):
        if self.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


class Callback:
    """Hooks the loop calls; override what you need. All run on every rank unless a caller filters."""

    def on_step(self, state: TrainState) -> None: ...

    def on_log(self, state: TrainState, metrics: dict[str, float]) -> None: ...

    def on_checkpoint(self, state: TrainState) -> None: ...

    def on_train_end(self, state: TrainState) -> None: ...
