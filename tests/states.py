"""Small TrainStates, configs and batches for step-level tests of a family's nets (no data files)."""
import copy
import itertools

import torch

from gan_core.losses import LOSSES
from gan_core.state import TrainState
from conftest import tiny_config


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


def device_batches(kind: str, n: int = 8, res: int = 8, seed: int = 0):
    """Endless: a few batches over and over (WGAN reads n_critic batches per step)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(4):
        b = {"images": torch.randint(0, 256, (n, 1, res, res), generator=g, dtype=torch.uint8),
             "labels": torch.arange(n) % 3}
        if kind in ("paired", "unpaired", "superres"):
            b["images_b"] = torch.randint(0, 256, (n, 1, res, res), generator=g, dtype=torch.uint8)
        if kind == "captioned":  # two captions of 6 ids per image, the second padded after 3
            b["captions"] = torch.randint(2, 20, (n, 2, 6), generator=g) * (torch.arange(6) < torch.tensor([[6], [3]]))
            b["caption_counts"] = torch.full((n,), 2)
        out.append(b)
    return itertools.cycle(out)


def family_config(arch: str, steps: int = 4, log_every: int = 3, checkpoint_every: int = 3, options: dict | None = None,
                  **train):
    """Any family's tiny config; `options`: more of its family settings."""
    # both of StyleGAN's lazy terms (at step 2) and both of SRGAN's phases (warm-up, then GAN)
    family = {"stylegan": {"mapping_layers": 2, "r1_every": 2, "pl_weight": 2.0, "pl_every": 2},
              "srgan": {"warmup_steps": 1, "scale": 2}, "stackgan": {"stage1_steps": 1}}
    if options:
        family[arch] = {**family.get(arch, {}), **options}
    data = {"resolution": 16} if arch == "stackgan" else {}  # its Stage I is half the resolution, >= 8 px
    return tiny_config(model={"arch": arch}, family=family, data=data,
                       train={"steps": steps, "log_every": log_every, "checkpoint_every": checkpoint_every,
                              "n_critic": 1, **train})  # WGAN's 5 critic batches cost time and add no other code path
