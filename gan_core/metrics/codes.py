"""The evaluation's scores of families that also encode images (Family.score_codes: aae's
reconstruction error and prior match), on the prepared dataset's held-out rows.

Where a dataset has no held-out rows (the built-in digits, blobs, shapes), the last EVAL_ROWS
training rows stand in and the metrics say so with a `_train` suffix (recon_mse_train_200): a
reconstruction error of trained-on images measures fit, not generalisation, and must never be
compared with a held-out one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gan_core.data import load_prepared, to_float
from gan_core.family import Family
from gan_core.metrics.fid import metric_name

EVAL_ROWS = 500  # at most this many rows: the MMD's permutation test costs (2n)^2 per permutation


def code_scores(family: Family, G: torch.nn.Module, folder: str | Path, options: Any, seed: int) -> dict[str, float]:
    """family.score_codes on up to EVAL_ROWS held-out rows (else training rows), each name suffixed
    with the row count like FID's sample count (recon_mse_200)."""
    data = load_prepared(folder)
    held = data.heldout
    n = min(EVAL_ROWS, held or len(data.images))
    end = len(data.images)
    x = to_float(torch.from_numpy(data.images[end - n:end]))
    labels = None if data.labels is None else torch.from_numpy(data.labels[end - n:end])
    raw = family.score_codes(G, x, labels, options, seed)
    suffix = "" if held else "_train"
    return {metric_name(n, k + suffix): float(v) for k, v in raw.items()}
