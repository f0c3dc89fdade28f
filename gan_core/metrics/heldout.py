"""Evaluation of image-conditioned families (translation, super-resolution) on held-out rows.

The generator reads held-out inputs (edges, domain A, low-resolution images) and its outputs are
scored against the held-out targets by the family's own `score` (PSNR, SSIM, L1, cycle error, ...).
The fingerprint names the held-out data and the family's settings (a PSNR with another border
shave or scale is another number), so the champion gate compares only like with like. It has the
same surface as the noise families' Evaluator (`evaluate`, `samples`, `fingerprint`), so the
monitor, the evaluate stage and the CLI drive both alike.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from gan_core.config import canonical_json
from gan_core.data import PreparedDataset, heldout_arrays, to_float
from gan_core.family import Family
from gan_core.metrics.fid import Fingerprint, metric_name
from gan_core.metrics.frechet import MetricError


def translate(family: Family, module: nn.Module, inputs: torch.Tensor, direction: int = 0,
              batch_size: int = 256) -> torch.Tensor:
    """The inference module's outputs for `inputs`, in batches; families with several directions
    (CycleGAN) take the direction (0 = the first, a2b) as a second input."""
    out = []
    with torch.no_grad():
        for i in range(0, len(inputs), batch_size):
            x = inputs[i:i + batch_size]
            args = (x, torch.full((len(x),), direction, dtype=torch.long)) if family.directions else (x,)
            out.append(module(*args).float())
    return torch.cat(out) if out else inputs.new_zeros((0,))


@dataclass(frozen=True)
class HeldoutEvaluator:
    family: Family
    options: Any
    inputs: torch.Tensor  # (n, C, h, w) float in [-1, 1]: what G reads
    targets: torch.Tensor | None  # (n, C, H, W): what it should produce, where known
    digest: str  # sha256 of the held-out data and the family's settings
    columns: int = 6  # sample grids: two input | output | target triplets a row

    def count(self, n: int) -> int:
        """How many held-out rows an evaluation of n scores."""
        return min(n, len(self.inputs))

    def fingerprint(self, n: int) -> Fingerprint:
        return Fingerprint(backbone=f"heldout-{self.family.name}", weights_sha256="none", resize="none",
                           image_range="[-1,1]", n_real=n, n_fake=n, ref_stats_sha256=self.digest)

    def evaluate(self, module: nn.Module, n: int, seed: int, batch_size: int,
                 device: torch.device | str = "cpu") -> tuple[dict[str, float], Fingerprint]:
        """The family's scores on the first n held-out rows (all of them when n is larger), named
        with the row count like FID's sample count (psnr_200). `seed` fixes any randomness G has."""
        n = min(n, len(self.inputs))
        x, y = self.inputs[:n], None if self.targets is None else self.targets[:n]
        was_training = getattr(module, "training", False)
        _set_mode(module, False)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                raw = self.family.score(module, x, y, self.options)
        finally:
            _set_mode(module, was_training)
        scores = {metric_name(n, k): float(v) for k, v in raw.items()}
        gate = metric_name(n, self.family.gate.metric)
        if gate not in scores:
            raise MetricError(f"{self.family.name}: its score gave no {self.family.gate.metric!r} (the gate metric)")
        return scores, self.fingerprint(n)

    def samples(self, module: nn.Module, k: int, seed: int, batch_size: int = 256) -> torch.Tensor:
        """Triplets input | output | target (input upscaled to the output size, a blank target where
        none is known) for the first k // 3 held-out rows: a grid of `columns` reads them in order."""
        x = self.inputs[:max(1, k // 3)]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            _set_mode(module, False)
            out = translate(self.family, module, x, batch_size=batch_size).clamp(-1, 1)
        size = tuple(out.shape[-2:])
        shown_in = torch.nn.functional.interpolate(x, size=size, mode="nearest") if x.shape[-2:] != size else x
        target = self.targets[:len(x)] if self.targets is not None else torch.full_like(out, -1.0)
        return torch.stack([_as_channels(shown_in, out.shape[1]), out, target], dim=1).flatten(0, 1)


def _as_channels(x: torch.Tensor, c: int) -> torch.Tensor:
    return x.expand(-1, c, -1, -1) if x.shape[1] == 1 and c == 3 else x


def _set_mode(module: nn.Module, training: bool) -> None:
    try:
        module.train(training)
    except NotImplementedError:  # a torch.export program is frozen in eval mode
        pass


def heldout_evaluator(family: Family, options: Any, data: PreparedDataset) -> HeldoutEvaluator:
    """The evaluator of an image-conditioned family on a prepared dataset's held-out rows."""
    a, b = heldout_arrays(data)
    fa = to_float(torch.from_numpy(a))
    fb = to_float(torch.from_numpy(b)) if b is not None else None
    inputs, targets = family.heldout(fa, fb, options)
    h = hashlib.sha256()
    for t in (a, b):
        if t is not None:
            h.update(t.tobytes())
    h.update(canonical_json({"family": family.name, "options": dataclasses.asdict(options) if options else {},
                             "metrics": sorted(family.metrics)}).encode())
    return HeldoutEvaluator(family, options, inputs, targets, h.hexdigest())
