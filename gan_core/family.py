"""What a GAN family declares, so the pipeline, checkpoints and registry treat all families alike.

A family names the kind of dataset it trains on, builds its networks from the config (and the
dataset's class count, for conditional families), lists the losses it supports, owns its train
step, names the metrics its evaluation reports and sets its own defaults (WGAN's RMSprop, ...),
which apply wherever params.yaml or an override leaves a field out. Adding a family is adding
one entry to `gan_core.models.ARCHS`; nothing in flows/ changes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from torch import nn

if TYPE_CHECKING:
    from gan_core.config import DataConfig, ModelConfig, TrainConfig
    from gan_core.train import TrainState

DATASET_KINDS = ("unconditional", "labelled", "paired", "unpaired", "superres")
Builder = Callable[["ModelConfig", "DataConfig", int], nn.Module]  # (model, data, n_classes)


@dataclass(frozen=True)
class Family:
    name: str
    summary: str  # one line: what makes it this family
    dataset_kind: str  # one of DATASET_KINDS; labelled datasets also feed unconditional families
    build_g: Builder
    build_d: Builder
    losses: tuple[str, ...]  # keys of gan_core.losses.LOSSES this family accepts
    step: Callable[["TrainState", list, "TrainConfig"], dict]
    metrics: tuple[str, ...] = ("fid",)  # evaluation metrics beyond the shared FID/KID/IS/PR set
    defaults: dict[str, dict[str, Any]] = field(default_factory=dict)  # section -> field -> value

    def __post_init__(self):
        if self.dataset_kind not in DATASET_KINDS:
            raise ValueError(f"family {self.name}: dataset_kind {self.dataset_kind!r} not in {DATASET_KINDS}")
        loss = self.defaults.get("model", {}).get("loss", "nonsat")
        if loss not in self.losses:
            raise ValueError(f"family {self.name}: default loss {loss!r} not in its losses {self.losses}")

    @property
    def conditional(self) -> bool:
        """Needs class labels: built with the dataset's class count, trained on (image, label)."""
        return self.dataset_kind == "labelled"
