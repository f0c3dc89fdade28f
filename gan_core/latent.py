"""What a generator takes as input, described once so training, evaluation, sampling and the
exported (pt2) model all draw it the same way.

Every generator carries a `LatentSpec` as `G.latent`:
    z_dim       Gaussian noise dimensions
    n_classes   > 0: class-conditional, G(z, y) with y int64 labels in [0, n_classes)
    code_cat    > 0: InfoGAN categorical code, one-hot, appended to z
    code_cont   InfoGAN continuous codes, uniform in [-1, 1], appended after the one-hot
An exported program has no attributes, so the registered model stores the spec as JSON metadata.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class LatentSpec:
    z_dim: int
    n_classes: int = 0
    code_cat: int = 0
    code_cont: int = 0

    @property
    def input_dim(self) -> int:
        """Length of the float vector G reads (noise plus any InfoGAN codes)."""
        return self.z_dim + self.code_cat + self.code_cont

    @property
    def conditional(self) -> bool:
        return self.n_classes > 0

    @property
    def controls(self) -> int:
        """How many values `labels` may take: classes for conditional G, categories for InfoGAN."""
        return self.n_classes or self.code_cat

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LatentSpec":
        return cls(**{k: int(v) for k, v in d.items() if k in cls.__dataclass_fields__})

    def sample(self, n: int, generator: torch.Generator | None = None, labels: torch.Tensor | None = None,
               device: torch.device | str = "cpu", check_labels: bool = True) -> "Latent":
        """n latents on `device`. `labels` picks the class (conditional) or the categorical code (InfoGAN);
        left out, classes cycle 0,1,2,... (balanced) and codes are drawn at random.

        Drawn where they are used: from `generator` on its own device (then moved), else from the
        global RNG of `device` itself (on a GPU the CUDA generator, which the run seeds with
        torch.manual_seed and the checkpoint saves per rank), so a training step never copies noise
        from the host. CPU and CUDA streams differ for the same seed; on the CPU the draws are exactly
        those of the CPU generator, as before. `labels` stay on their device; `check_labels=False`
        skips the range check, whose comparison would wait for the device (the training step's labels
        come from the prepared dataset, already checked against its class count)."""
        device = torch.device(device)
        at = generator.device if generator is not None else device
        z = torch.randn(n, self.z_dim, generator=generator, device=at)
        y = cat = cont = None
        if labels is not None:
            labels = torch.as_tensor(labels, dtype=torch.long)
            if labels.shape != (n,):
                raise ValueError(f"labels: expected shape ({n},), got {tuple(labels.shape)}")
            if self.controls == 0:
                raise ValueError("labels: this generator is unconditional and has no categorical code")
            if check_labels and (labels.min() < 0 or labels.max() >= self.controls):
                raise ValueError(f"labels: must be in [0, {self.controls}), got {labels.min()}..{labels.max()}")
            labels = labels.to(at)
        if self.n_classes:
            y = labels if labels is not None else torch.arange(n, device=at) % self.n_classes
        if self.code_cat:
            cat = labels if labels is not None else torch.randint(self.code_cat, (n,), generator=generator, device=at)
            # one-hot by comparison: F.one_hot range-checks its input with .item() on the CPU
            z = torch.cat([z, (cat[:, None] == torch.arange(self.code_cat, device=at)).to(z.dtype)], dim=1)
        if self.code_cont:
            cont = torch.rand(n, self.code_cont, generator=generator, device=at) * 2 - 1
            z = torch.cat([z, cont], dim=1)
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Latent(move(z), move(y), move(cat), move(cont))


@dataclass(frozen=True)
class Latent:
    z: torch.Tensor  # (n, input_dim) float: noise, then one-hot code, then continuous codes
    y: torch.Tensor | None = None  # (n,) class labels for a conditional G and D
    cat: torch.Tensor | None = None  # (n,) InfoGAN categorical code (the target of Q)
    cont: torch.Tensor | None = None  # (n, code_cont) InfoGAN continuous codes

    @property
    def inputs(self) -> tuple[torch.Tensor, ...]:
        """The positional arguments of G (and of the exported program)."""
        return (self.z,) if self.y is None else (self.z, self.y)

    @property
    def labels(self) -> torch.Tensor | None:
        """What a classifier should recognise in G's output: the class, or the InfoGAN code."""
        return self.y if self.y is not None else self.cat
