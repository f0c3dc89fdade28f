"""What a GAN family declares, so the pipeline, checkpoints and registry treat all families alike.

A family names the kind of dataset it trains on, builds its networks from the config, lists the
losses it supports, owns its train step and names the metrics its evaluation reports. Adding a
family is adding one entry to `gan_core.models.ARCHS`; nothing in flows/ changes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from torch import nn

if TYPE_CHECKING:
    from gan_core.config import DataConfig, ModelConfig, TrainConfig
    from gan_core.train import TrainState

DATASET_KINDS = ("unconditional", "labelled", "paired", "unpaired", "superres")


@dataclass(frozen=True)
class Family:
    name: str
    dataset_kind: str  # one of DATASET_KINDS; labelled datasets also feed unconditional families
    build_g: Callable[["ModelConfig", "DataConfig"], nn.Module]
    build_d: Callable[["ModelConfig", "DataConfig"], nn.Module]
    losses: tuple[str, ...]  # keys of gan_core.losses.LOSSES this family accepts
    step: Callable[["TrainState", "object", "TrainConfig"], dict[str, float]]
    metrics: tuple[str, ...] = ("fid",)

    def __post_init__(self):
        if self.dataset_kind not in DATASET_KINDS:
            raise ValueError(f"family {self.name}: dataset_kind {self.dataset_kind!r} not in {DATASET_KINDS}")
