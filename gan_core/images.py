"""Sample grids and PNG files that say where they came from."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, PngImagePlugin

from gan_core.data import to_uint8


def make_grid(images: torch.Tensor, nrow: int, pad: int = 1, scale: int = 4) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (rows*(H+pad)+pad, ...)*scale uint8 grid, HWC (C=3) or HW (C=1).
    Upscaled with nearest neighbour so small images stay inspectable."""
    x = to_uint8(images.detach().cpu())
    n, c, h, w = x.shape
    rows = (n + nrow - 1) // nrow
    grid = torch.zeros(c, rows * (h + pad) + pad, nrow * (w + pad) + pad, dtype=torch.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, top:top + h, left:left + w] = x[i]
    grid = grid.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    arr = grid.permute(1, 2, 0).numpy()
    return arr[..., 0] if c == 1 else arr


def save_png(path: str | Path, array: np.ndarray, provenance: dict) -> Path:
    """Write a PNG whose text chunk `ganpipe` holds provenance (model, step, seed, ...) as JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngImagePlugin.PngInfo()
    info.add_text("ganpipe", json.dumps(provenance, sort_keys=True))
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(array).save(tmp, format="PNG", pnginfo=info)
    tmp.replace(path)
    return path


def read_provenance(path: str | Path) -> dict:
    with Image.open(path) as im:
        return json.loads(im.text["ganpipe"])
