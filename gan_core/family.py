"""What a GAN family declares, so the pipeline, checkpoints and registry treat all families alike.

A family names the kind of dataset it trains on, builds its networks from the config (and the
dataset's class count, for conditional families), lists the losses it supports, owns its train
step, names the metrics its evaluation reports and the one its champion gate compares (with the
direction that is better), sets its own defaults (WGAN's RMSprop, ...), which apply wherever
params.yaml or an override leaves a field out, and may own a settings section (Options).
Image-conditioned families (pix2pix, cyclegan, srgan) also say how held-out data becomes the
generator's inputs and targets, how they are scored, and which module is exported. Adding a family
is a file in gan_core/models/ and one entry in `gan_core.models.ARCHS`; nothing in flows/ changes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

if TYPE_CHECKING:
    from gan_core.config import PipelineConfig
    from gan_core.sections import DataConfig, ModelConfig, TrainConfig
    from gan_core.state import TrainState

DATASET_KINDS = ("unconditional", "labelled", "paired", "unpaired", "superres", "captioned")
IMAGE_KINDS = ("paired", "unpaired", "superres")  # the generator reads an image, not noise
# (model, data, n_classes, options): n_classes is the dataset's class count (conditional families),
# options the family's Options instance (None for families without settings of their own)
Builder = Callable[["ModelConfig", "DataConfig", int, Any], nn.Module]
# held-out (images A, images B or None, options) -> (G's inputs, targets or None), float in [-1, 1]
Heldout = Callable[[torch.Tensor, "torch.Tensor | None", Any], tuple[torch.Tensor, "torch.Tensor | None"]]
# (inference module, inputs, targets or None, options) -> metrics without the sample-count suffix
Score = Callable[[nn.Module, torch.Tensor, "torch.Tensor | None", Any], dict[str, float]]


@dataclass(frozen=True)
class Gate:
    """The metric the champion gate compares, and which way is better."""
    metric: str  # a key of the evaluation's metrics without the sample count (fid, psnr)
    higher_is_better: bool

    @property
    def direction(self) -> str:
        return "higher" if self.higher_is_better else "lower"


FID_GATE = Gate("fid", higher_is_better=False)


def same_module(G: nn.Module) -> nn.Module:
    return G


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
    options: type | None = None  # frozen dataclass of the family's own settings (params section `<name>:`)
    gate: Gate = FID_GATE
    # image-conditioned families: what is exported and translates (G itself, or CycleGAN's two
    # directions behind one module), how held-out data becomes inputs/targets, and the scores
    infer: Callable[[nn.Module], nn.Module] = same_module
    heldout: Heldout | None = None
    score: Score | None = None
    directions: tuple[str, ...] = ()  # names of the translation directions (a2b, b2a), if several
    # families that also map images to codes (aae): G (or G_ema) -> its images-to-codes module, exported
    # beside the generator and run by `ganpipe encode`; and the evaluation's scores that need it
    # (G, held-out images in [-1, 1], their labels or None, options, seed) -> metrics without the count
    encode: Callable[[nn.Module], nn.Module] | None = None
    score_codes: Callable[[nn.Module, torch.Tensor, "torch.Tensor | None", Any, int], dict[str, float]] | None = None
    # keys of the checkpoint's `extra` a registered version is tagged with (`family.<key>`): what the
    # family resolved while training that a reader of the model needs (SRGAN's content-loss backbone)
    lineage: tuple[str, ...] = ()
    # settings that only hold together with the rest of the config (SRGAN's warm-up < train.steps);
    # raises ConfigError naming the field
    check: Callable[["PipelineConfig"], None] | None = None
    # how many batches each step reads (gan_core.growth.Growth for progressive growing); None: n_critic
    schedule: Callable[["PipelineConfig"], Any] | None = None
    # the step updates D once per batch of the step, so train.n_critic > 1 means n_critic D updates;
    # False: the step reads one batch (or merges its batches into one) and n_critic must be 1
    multi_critic: bool = True
    # the networks use different layers at different steps (growing resolutions): DDP must expect
    # parameters without gradients. A bool, or a function of the family's options (stylegan grows
    # only when asked, and DDP's search for unused parameters costs every backward)
    dynamic_graph: bool | Callable[[Any], bool] = False
    # DP-SGD (privacy.enabled) can train its D: one forward per private image, no gradient penalty
    # (a double backward Opacus' per-sample hooks cannot take: wgan_gp, progan, stylegan's R1), no
    # spectral-norm parametrisation (biggan), and one image per sample (not pix2pix's pairs)
    private: bool = False
    # what G reads besides z: "latent" (z, and labels for conditional families), or "text": token ids
    # (B, L) int64 of the dataset version's vocabulary, then z (StackGAN); evaluated on held-out captions
    conditioning: str = "latent"
    # model.ssl (gan_core/ssl.py) can train its D: a noise family whose D ends in gan_core.layers.DHead,
    # whose input (D's features) the rotation head reads, and whose step is gan_core.steps.noise_step
    ssl: bool = False

    def grows(self, options: Any) -> bool:
        return bool(self.dynamic_graph(options) if callable(self.dynamic_graph) else self.dynamic_graph)

    def __post_init__(self):
        if self.dataset_kind not in DATASET_KINDS:
            raise ValueError(f"family {self.name}: dataset_kind {self.dataset_kind!r} not in {DATASET_KINDS}")
        loss = self.defaults.get("model", {}).get("loss", "nonsat")
        if loss not in self.losses:
            raise ValueError(f"family {self.name}: default loss {loss!r} not in its losses {self.losses}")
        if self.image_input and (self.heldout is None or self.score is None):
            raise ValueError(f"family {self.name}: an image-conditioned family declares heldout and score")

    @property
    def conditional(self) -> bool:
        """Needs class labels: built with the dataset's class count, trained on (image, label)."""
        return self.dataset_kind == "labelled"

    @property
    def image_input(self) -> bool:
        """G reads an image (translation, super-resolution) rather than a latent vector."""
        return self.dataset_kind in IMAGE_KINDS
