"""Small TrainStates and batches for step-level tests of a family's nets (no config, no data files)."""
import copy

import torch

from gan_core.losses import LOSSES
from gan_core.state import TrainState


def train_state(G, D, options, lr: float, loss: str) -> TrainState:
    """G, D and an EMA copy with Adam at (0, 0.99), the betas of the progressive and style families."""
    return TrainState(family=None, G=G, D=D, G_ema=copy.deepcopy(G).eval().requires_grad_(False),
                      opt_g=torch.optim.Adam(G.parameters(), lr, betas=(0.0, 0.99)),
                      opt_d=torch.optim.Adam(D.parameters(), lr, betas=(0.0, 0.99)),
                      loss=LOSSES[loss], device=torch.device("cpu"), options=options)


def grey_batch(n: int, res: int, seed: int = 0) -> dict:
    """n random grey uint8 images, as the sharded loader yields them."""
    g = torch.Generator().manual_seed(seed)
    return {"images": torch.randint(0, 256, (n, 1, res, res), dtype=torch.uint8, generator=g)}
