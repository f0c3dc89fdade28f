"""The config's sections: one frozen dataclass per params.yaml section, each validating itself on
construction and raising ConfigError naming the field.

A leaf: it imports nothing from gan_core, so the families (gan_core.models), which take these
sections and raise ConfigError, sit below gan_core.config, which assembles a PipelineConfig from
the sections and the families' defaults and settings.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
DATASET_RE = re.compile(r"^(?P<name>[a-z0-9][a-z0-9_-]{0,63})(@(?P<version>v[0-9]+|latest))?$")
MINIBATCH = ("none", "mbd", "stddev")  # mini-batch layer in D: none, Salimans 2016, ProGAN stddev
OPTIMIZERS = ("adam", "rmsprop")


class ConfigError(ValueError):
    """A config value is invalid. The message starts with the dotted field name."""

    def __init__(self, field_name: str, reason: str):
        super().__init__(f"{field_name}: {reason}")
        self.field = field_name
        self.reason = reason


def check(cond: bool, field_name: str, reason: str) -> None:
    if not cond:
        raise ConfigError(field_name, reason)


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


@dataclass(frozen=True)
class DataConfig:
    name: str = "digits"  # NAME or NAME@VERSION: a catalogued dataset (data/catalog.yaml) or a built-in
    resolution: int = 16  # square side after normalisation
    channels: int = 1  # 1 (grey) or 3 (RGB)

    def __post_init__(self):
        check(bool(DATASET_RE.match(self.name)), "data.name",
              f"{self.name!r} must be NAME or NAME@vN (NAME: lower-case letters, digits, '-', '_')")
        check(_is_pow2(self.resolution) and 8 <= self.resolution <= 1024, "data.resolution",
              f"must be a power of two in [8, 1024], got {self.resolution}")
        check(self.channels in (1, 3), "data.channels", f"must be 1 or 3, got {self.channels}")


    @property
    def dataset(self) -> str:
        """The dataset's name without any @version."""
        return DATASET_RE.match(self.name)["name"]

    @property
    def version(self) -> str | None:
        """The pinned version (v3), or None for the latest."""
        v = DATASET_RE.match(self.name)["version"]
        return None if v in (None, "latest") else v


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "dcgan"  # a key of gan_core.models.ARCHS
    loss: str = "nonsat"  # a key of gan_core.losses.LOSSES the family supports
    z_dim: int = 64
    g_channels: int = 64  # generator width at the output resolution; doubles per halving
    d_channels: int = 64  # discriminator width at the input resolution; doubles per halving
    minibatch: str = "none"  # none | mbd (mini-batch discrimination) | stddev (mini-batch stddev); any D

    def __post_init__(self):
        for name in ("z_dim", "g_channels", "d_channels"):
            check(getattr(self, name) > 0, f"model.{name}", f"must be > 0, got {getattr(self, name)}")
        check(self.minibatch in MINIBATCH, "model.minibatch", f"must be one of {MINIBATCH}, got {self.minibatch!r}")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 3000  # optimizer steps of G (each with one D step)
    batch_size: int = 64  # global batch, split evenly over workers
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    optimizer: str = "adam"  # adam (betas above) | rmsprop (WGAN)
    n_critic: int = 1  # D updates per G update, each on its own real batch
    ema_decay: float = 0.995  # G_ema <- decay * G_ema + (1 - decay) * G
    ema_start: int = 100  # copy G into G_ema until this step (early G moves too fast to average)
    seed: int = 0
    num_workers: int = 2  # Ray Train workers (one per GPU with use_gpu)
    use_gpu: bool = False
    threads_per_worker: int = 0  # torch intra-op threads per worker; 0 = cores // workers
    checkpoint_every: int = 500  # steps between checkpoints reported to Ray
    log_every: int = 25  # steps between metric records streamed to MLflow
    max_failures: int = 1  # Ray Train worker-group restarts from the last checkpoint
    bf16: bool = False  # bf16 autocast (GPU)
    channels_last: bool = False  # NHWC memory format (GPU convs)

    def __post_init__(self):
        check(self.steps > 0, "train.steps", f"must be > 0, got {self.steps}")
        check(self.num_workers >= 1, "train.num_workers", f"must be >= 1, got {self.num_workers}")
        check(self.batch_size > 0 and self.batch_size % self.num_workers == 0, "train.batch_size",
              f"must be a positive multiple of train.num_workers={self.num_workers}, got {self.batch_size}")
        for name in ("lr_g", "lr_d"):
            check(getattr(self, name) > 0, f"train.{name}", f"must be > 0, got {getattr(self, name)}")
        for name in ("beta1", "beta2", "ema_decay"):
            v = getattr(self, name)
            check(0 <= v < 1, f"train.{name}", f"must be in [0, 1), got {v}")
        check(self.ema_start >= 0, "train.ema_start", f"must be >= 0, got {self.ema_start}")
        check(self.threads_per_worker >= 0, "train.threads_per_worker", "must be >= 0")
        check(self.checkpoint_every > 0, "train.checkpoint_every", "must be > 0")
        check(self.log_every > 0, "train.log_every", "must be > 0")
        check(self.max_failures >= 0, "train.max_failures", "must be >= 0")
        check(self.optimizer in OPTIMIZERS, "train.optimizer", f"must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        check(self.n_critic >= 1, "train.n_critic", f"must be >= 1, got {self.n_critic}")

    @property
    def per_worker_batch(self) -> int:
        return self.batch_size // self.num_workers


@dataclass(frozen=True)
class EvalConfig:
    n_fake: int = 2000  # generated samples for FID; the metric name carries it (fid_2k)
    batch_size: int = 500
    backbone: str = "domain-classifier"  # feature network; FIDs compare only within one backbone
    seed: int = 1234  # seed of the evaluation latents, so the same G gives the same FID
    grid: int = 8  # sample grid is grid x grid
    every: int = 500  # cheap in-training evaluation every this many steps (0: off), on a background thread
    n_cheap: int = 500  # samples for the cheap tier; its metrics carry this n (fid_500)

    def __post_init__(self):
        check(self.n_fake >= 2, "eval.n_fake", f"must be >= 2, got {self.n_fake}")
        check(self.every >= 0, "eval.every", f"must be >= 0 (0 turns it off), got {self.every}")
        check(self.n_cheap >= 10, "eval.n_cheap", f"must be >= 10, got {self.n_cheap}")
        check(self.batch_size > 0, "eval.batch_size", f"must be > 0, got {self.batch_size}")
        check(1 <= self.grid <= 32, "eval.grid", f"must be in [1, 32], got {self.grid}")


@dataclass(frozen=True)
class RegisterConfig:
    promotion_margin: float = 0.0  # candidate becomes champion only if fid < champion_fid - margin
    model_prefix: str = "ganpipe"  # registered name: <prefix>-<dataset>-<arch>

    def __post_init__(self):
        check(self.promotion_margin >= 0, "register.promotion_margin",
              f"must be >= 0, got {self.promotion_margin}")
        check(bool(NAME_RE.match(self.model_prefix)), "register.model_prefix",
              f"{self.model_prefix!r} must match {NAME_RE.pattern}")


SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "eval": EvalConfig,
            "register": RegisterConfig}
