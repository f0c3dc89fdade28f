"""Sampling controls of style-based generators (StyleGAN): truncation, style-mixing grids and
interpolation strips, from a registered pt2 program or a checkpoint alike.

Such a model takes (z, z_mix, psi, crossover): layer k of the synthesis reads z_mix's style where
k >= crossover, and both styles are pulled toward the average w by psi. The registered model's
metadata (`style`) says how many style inputs there are and which resolution each drives, which is
all the CLI needs; nothing here names a family.
"""
from __future__ import annotations

import torch
from torch import nn


def is_styled(G) -> bool:
    return "style" in (getattr(G, "exported_as", None) or {})


class StyleDefaults(nn.Module):
    """A style program callable as G(z), as evaluation and plain sampling call every generator:
    no mixing (crossover = number of styles), psi = 1 unless given."""

    def __init__(self, program, latent, meta: dict):
        super().__init__()
        self.program, self.latent, self.exported_as = program, latent, meta
        self.num_ws = int(meta["style"]["num_ws"])

    def forward(self, z: torch.Tensor, z_mix: torch.Tensor | None = None, psi: torch.Tensor | float | None = None,
                crossover: torch.Tensor | int | None = None) -> torch.Tensor:
        n = z.shape[0]
        psi = torch.full((n,), 1.0 if psi is None else float(psi)) if not torch.is_tensor(psi) else psi
        cross = crossover if torch.is_tensor(crossover) else torch.full(
            (n,), self.num_ws if crossover is None else int(crossover), dtype=torch.long)
        return self.program(z, z if z_mix is None else z_mix, psi.to(z.dtype), cross)


def _z(G, seeds: list[int]) -> torch.Tensor:
    """One z per seed, each from its own generator: a seed names the same image in every command."""
    return torch.cat([G.latent.sample(1, generator=torch.Generator().manual_seed(s)).z for s in seeds])


@torch.no_grad()
def truncated(G, n: int, seed: int, psi: float) -> torch.Tensor:
    """n images of seeds seed .. seed+n-1 at truncation psi."""
    return G(_z(G, list(range(seed, seed + n))), psi=psi)


def coarse_layers(G) -> int:
    """Styles driving 8 px and below (pose, shape: the paper's 'coarse' styles), leaving at least one
    to the column seed (at 8 px every style is coarse)."""
    res = G.exported_as["style"]["layer_resolutions"]
    return min(max(1, sum(1 for r in res if r <= 8)), len(res) - 1)


@torch.no_grad()
def mixing_grid(G, rows: list[int], cols: list[int], psi: float, layers: int) -> tuple[torch.Tensor, int]:
    """The paper's figure: a header row of column-seed images, a header column of row-seed images, and
    cell (i, j) taking styles [0, layers) from row seed i and the rest from column seed j. The corner is
    blank. Returns (images, columns)."""
    zr, zc = _z(G, rows), _z(G, cols)
    top, left = G(zc, psi=psi), G(zr, psi=psi)
    z = zr.repeat_interleave(len(cols), 0)  # (rows * cols, Z): row-major cells
    cells = G(z, zc.repeat(len(rows), 1), psi=psi, crossover=layers)
    blank = torch.full_like(top[:1], -1.0)
    out = [blank, top]
    for i in range(len(rows)):
        out += [left[i:i + 1], cells[i * len(cols):(i + 1) * len(cols)]]
    return torch.cat(out), len(cols) + 1


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation: Gaussian z's norm concentrates near sqrt(dim), and a straight line
    between two of them passes through the low-norm middle G never saw in training."""
    an, bn = a / a.norm(dim=-1, keepdim=True), b / b.norm(dim=-1, keepdim=True)
    omega = torch.acos((an * bn).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7))
    so = torch.sin(omega)
    return (torch.sin((1 - t) * omega) / so) * a + (torch.sin(t * omega) / so) * b


@torch.no_grad()
def interpolation(G, seed_a: int, seed_b: int, steps: int, psi: float) -> torch.Tensor:
    za, zb = _z(G, [seed_a]), _z(G, [seed_b])
    t = torch.linspace(0, 1, steps)[:, None]
    return G(slerp(za.expand(steps, -1), zb.expand(steps, -1), t), psi=psi)


def styled_sample(G, n: int, seed: int, psi: float, mix: bool, layers: int | None,
                  towards: int | None, steps: int) -> tuple[torch.Tensor, int, dict]:
    """What `ganpipe sample` draws from a style model: a truncated grid, a mixing grid (rows are
    seeds seed.., columns the next ones) or an interpolation strip. Returns (images, columns,
    provenance fields)."""
    import math

    num_ws = G.exported_as["style"]["num_ws"]
    if layers is not None and not 1 <= layers < num_ws:
        raise ValueError(f"--layers: {layers} must be in 1..{num_ws - 1} (the model has {num_ws} style inputs)")
    if mix:
        side = max(1, min(8, int(math.isqrt(n))))
        cross = layers if layers is not None else coarse_layers(G)
        rows, cols = list(range(seed, seed + side)), list(range(seed + side, seed + 2 * side))
        images, columns = mixing_grid(G, rows, cols, psi, cross)
        return images, columns, {"mix": {"rows": rows, "cols": cols, "layers_from_row": cross},
                                 "cells": "row 0: blank, then the cols seeds; column 0: the rows seeds; cell "
                                          "(r, c >= 1): styles [0, layers_from_row) of rows[r-1], the rest of "
                                          "cols[c-1]"}
    if towards is not None:
        strip = {"interpolate": [seed, towards], "steps": steps,
                 "cells": "cell t: slerp of the two seeds' z at t/(steps-1)"}
        return interpolation(G, seed, towards, steps, psi), steps, strip
    return truncated(G, n, seed, psi), int(math.ceil(math.sqrt(n))), {"cells": "cell i: seed + i (one z per seed)"}
