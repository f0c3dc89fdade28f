"""The config's sections: one frozen dataclass per params.yaml section, each validating itself on
construction and raising ConfigError naming the field.

A leaf: it imports nothing from gan_core, so the families (gan_core.models), which take these
sections and raise ConfigError, sit below gan_core.config, which assembles a PipelineConfig from
the sections and the families' defaults and settings.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
DATASET_RE = re.compile(r"^(?P<name>[a-z0-9][a-z0-9_-]{0,63})(@(?P<version>v[0-9]+|latest))?$")
MINIBATCH = ("none", "mbd", "stddev")  # mini-batch layer in D: none, Salimans 2016, ProGAN stddev
OPTIMIZERS = ("adam", "rmsprop")
SSL = ("none", "rotation")  # self-supervised pretext tasks for D (gan_core/ssl.py)


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
    # self-supervised D (gan_core/ssl.py): none | rotation (Chen et al. 2019), with the paper's weights of the
    # rotation loss on real images for D (beta) and on fakes for G (alpha); left out of the params hash at defaults
    ssl: str = "none"
    ssl_weight_d: float = 1.0
    ssl_weight_g: float = 0.2

    def __post_init__(self):
        for name in ("z_dim", "g_channels", "d_channels"):
            check(getattr(self, name) > 0, f"model.{name}", f"must be > 0, got {getattr(self, name)}")
        check(self.minibatch in MINIBATCH, "model.minibatch", f"must be one of {MINIBATCH}, got {self.minibatch!r}")
        check(self.ssl in SSL, "model.ssl", f"must be one of {SSL}, got {self.ssl!r}")
        for name in ("ssl_weight_d", "ssl_weight_g"):
            v = getattr(self, name)
            check(math.isfinite(v) and v >= 0, f"model.{name}", f"must be a finite number >= 0, got {v!r}")


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
    bf16: bool = False  # bf16 autocast: GPUs, and CPUs with AVX-512 BF16 (1.3-1.5x for most families here)
    channels_last: bool = False  # NHWC convolutions: faster for every conv family here (params.yaml turns it on)
    deterministic: bool = False  # GPU: deterministic algorithms + cuBLAS/cuDNN settings (gan_core/determinism.py)

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


FED_SPLITS = ("iid", "classes")  # iid: a random equal share each; classes: each client a subset of the classes
FED_AGGREGATE = ("all", "generator", "discriminator")  # the networks FedAvg averages; the others stay on clients


@dataclass(frozen=True)
class FederatedConfig:
    """Federated rounds (flows/stages/federated.py): `clients` Ray actors, each holding only its shard,
    train `local_steps` from the global weights, then the server averages them (FedAvg)."""
    enabled: bool = False
    clients: int = 3
    rounds: int = 30  # rounds x local_steps must equal train.steps (every stage reads the step count there)
    local_steps: int = 100  # optimizer steps of G per client per round, batch train.batch_size each
    split: str = "iid"
    classes_per_client: int = 2  # split=classes: classes each client holds (rows of a shared class are divided)
    min_clients: int = 2  # a round with fewer surviving clients fails
    aggregate: str = "all"
    client_timeout_s: float = 600.0  # a client that has not answered a round by then is dropped from it

    def __post_init__(self):
        check(self.clients >= 1, "federated.clients", f"must be >= 1, got {self.clients}")
        check(self.rounds >= 1, "federated.rounds", f"must be >= 1, got {self.rounds}")
        check(self.local_steps >= 1, "federated.local_steps", f"must be >= 1, got {self.local_steps}")
        check(self.split in FED_SPLITS, "federated.split", f"must be one of {FED_SPLITS}, got {self.split!r}")
        check(self.classes_per_client >= 1, "federated.classes_per_client",
              f"must be >= 1, got {self.classes_per_client}")
        check(1 <= self.min_clients <= self.clients, "federated.min_clients",
              f"must be in [1, federated.clients={self.clients}], got {self.min_clients}")
        check(self.aggregate in FED_AGGREGATE, "federated.aggregate",
              f"must be one of {FED_AGGREGATE}, got {self.aggregate!r}")
        check(self.client_timeout_s > 0, "federated.client_timeout_s", f"must be > 0, got {self.client_timeout_s}")


ACCOUNTANTS = ("rdp", "prv")  # opacus' Renyi-DP and privacy-random-variable accountants


@dataclass(frozen=True)
class PrivacyConfig:
    """DP-SGD on the discriminator (gan_core/privacy.py, Opacus): per-sample clipping + Gaussian noise on
    D's updates, the only ones that read the private images (G is post-processing of D)."""
    enabled: bool = False
    target_epsilon: float = 0.0  # 0: no target (noise_multiplier as given; epsilon only reported)
    delta: float = 0.0  # 0: 1 / (10 n_train), well below one image's share
    max_grad_norm: float = 1.0  # per-sample clipping norm C
    noise_multiplier: float = 0.0  # sigma; 0 with a target: calibrated so the budget is spent at train.steps
    accountant: str = "rdp"
    stop_when_spent: bool = True  # with a target and a given sigma: stop at the last step the budget allows
    # the registry's automatic gate may let this run's model replace a DP champion even if it is not DP
    allow_non_private: bool = False

    def __post_init__(self):
        check(self.target_epsilon >= 0, "privacy.target_epsilon", f"must be >= 0 (0: no target), got {self.target_epsilon}")
        check(0 <= self.delta < 1, "privacy.delta", f"must be in [0, 1) (0: 1/(10 n_train)), got {self.delta}")
        check(self.max_grad_norm > 0, "privacy.max_grad_norm", f"must be > 0, got {self.max_grad_norm}")
        check(self.noise_multiplier >= 0, "privacy.noise_multiplier", f"must be >= 0, got {self.noise_multiplier}")
        check(self.accountant in ACCOUNTANTS, "privacy.accountant",
              f"must be one of {ACCOUNTANTS}, got {self.accountant!r}")
        if self.enabled:
            check(self.target_epsilon > 0 or self.noise_multiplier > 0, "privacy.noise_multiplier",
                  "must be > 0 when privacy.target_epsilon is 0 (no target): no noise is no privacy")


SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "eval": EvalConfig,
            "register": RegisterConfig, "federated": FederatedConfig,
            "privacy": PrivacyConfig}
