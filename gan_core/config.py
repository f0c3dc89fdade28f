"""Frozen configs, read once at the edge (params.yaml, CLI overrides, Prefect parameters).

Every section validates itself on construction and raises ConfigError naming the field, so bad
input stops before any work starts. `PipelineConfig.from_dict` rejects unknown keys for the same
reason: a typo such as `train.stepz` must not silently fall back to a default.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field, fields
from typing import Any

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


def _check(cond: bool, field_name: str, reason: str) -> None:
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
        _check(bool(DATASET_RE.match(self.name)), "data.name",
               f"{self.name!r} must be NAME or NAME@vN (NAME: lower-case letters, digits, '-', '_')")
        _check(_is_pow2(self.resolution) and 8 <= self.resolution <= 1024, "data.resolution",
               f"must be a power of two in [8, 1024], got {self.resolution}")
        _check(self.channels in (1, 3), "data.channels", f"must be 1 or 3, got {self.channels}")


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
            _check(getattr(self, name) > 0, f"model.{name}", f"must be > 0, got {getattr(self, name)}")
        _check(self.minibatch in MINIBATCH, "model.minibatch", f"must be one of {MINIBATCH}, got {self.minibatch!r}")


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
        _check(self.steps > 0, "train.steps", f"must be > 0, got {self.steps}")
        _check(self.num_workers >= 1, "train.num_workers", f"must be >= 1, got {self.num_workers}")
        _check(self.batch_size > 0 and self.batch_size % self.num_workers == 0, "train.batch_size",
               f"must be a positive multiple of train.num_workers={self.num_workers}, got {self.batch_size}")
        for name in ("lr_g", "lr_d"):
            _check(getattr(self, name) > 0, f"train.{name}", f"must be > 0, got {getattr(self, name)}")
        for name in ("beta1", "beta2", "ema_decay"):
            v = getattr(self, name)
            _check(0 <= v < 1, f"train.{name}", f"must be in [0, 1), got {v}")
        _check(self.ema_start >= 0, "train.ema_start", f"must be >= 0, got {self.ema_start}")
        _check(self.threads_per_worker >= 0, "train.threads_per_worker", "must be >= 0")
        _check(self.checkpoint_every > 0, "train.checkpoint_every", "must be > 0")
        _check(self.log_every > 0, "train.log_every", "must be > 0")
        _check(self.max_failures >= 0, "train.max_failures", "must be >= 0")
        _check(self.optimizer in OPTIMIZERS, "train.optimizer", f"must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        _check(self.n_critic >= 1, "train.n_critic", f"must be >= 1, got {self.n_critic}")

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
        _check(self.n_fake >= 2, "eval.n_fake", f"must be >= 2, got {self.n_fake}")
        _check(self.every >= 0, "eval.every", f"must be >= 0 (0 turns it off), got {self.every}")
        _check(self.n_cheap >= 10, "eval.n_cheap", f"must be >= 10, got {self.n_cheap}")
        _check(self.batch_size > 0, "eval.batch_size", f"must be > 0, got {self.batch_size}")
        _check(1 <= self.grid <= 32, "eval.grid", f"must be in [1, 32], got {self.grid}")


@dataclass(frozen=True)
class RegisterConfig:
    promotion_margin: float = 0.0  # candidate becomes champion only if fid < champion_fid - margin
    model_prefix: str = "ganpipe"  # registered name: <prefix>-<dataset>-<arch>

    def __post_init__(self):
        _check(self.promotion_margin >= 0, "register.promotion_margin",
               f"must be >= 0, got {self.promotion_margin}")
        _check(bool(NAME_RE.match(self.model_prefix)), "register.model_prefix",
               f"{self.model_prefix!r} must match {NAME_RE.pattern}")


FAMILY = "family"  # params.yaml section holding each family's own settings, by family name
SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "eval": EvalConfig,
            "register": RegisterConfig}


@dataclass(frozen=True)
class PipelineConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    register: RegisterConfig = field(default_factory=RegisterConfig)
    # the selected family's own settings (pix2pix's l1_lambda, ...): its Options dataclass, read from
    # params.yaml's `family:` section (`family: {pix2pix: {l1_lambda: 50}}`); None when it has none
    family: Any = None

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "PipelineConfig":
        """Sections from d; a field d leaves out takes the selected family's default (WGAN's
        RMSprop, WGAN-GP's Adam(0, 0.9), ...) and then the dataclass default. `family:` holds a
        sub-section per family: every one is validated by its family (a typo in one is an error
        whichever family runs), and the selected family's becomes `family`."""
        d = moved_settings(d or {})
        unknown = sorted(set(d) - set(SECTIONS) - {FAMILY})
        if unknown:
            raise ConfigError(unknown[0], f"unknown section (known: {', '.join([*SECTIONS, FAMILY])})")
        model = d.get("model") or {}
        arch = model.get("arch", ModelConfig.arch) if isinstance(model, dict) else None
        defaults = _family_defaults(arch)
        sections = {name: _section_from_dict(name, sec, d.get(name) or {}, defaults.get(name, {}))
                    for name, sec in SECTIONS.items()}
        cfg = cls(**sections, family=_family_options(d.get(FAMILY) or {}, arch))
        _family_check(cfg)
        return cfg

    def to_dict(self) -> dict[str, dict[str, Any]]:
        out = {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}
        if self.family is not None:  # absent otherwise, so the params hash of older configs is unchanged
            out[FAMILY] = {self.model.arch: dataclasses.asdict(self.family)}
        return out

    def params_hash(self) -> str:
        """sha256 of the canonical JSON of every setting: the 'params hash' lineage tag."""
        return hashlib.sha256(canonical_json(self.to_dict()).encode()).hexdigest()


# Settings that were flat fields every family carried and now live in the section of the family that
# uses them. Configs written before (checkpoints, params.yaml files, registered runs) still load:
# a moved value goes to the selected family's section when that family owns the field, and is dropped
# when it had no effect on the selected family (left at its old default, or only read by another
# family); anything else is refused with the field's new place.
MOVED = {("model", "embed_dim"): None, ("model", "code_cat"): None, ("model", "code_cont"): None,
         ("model", "attention"): None, ("train", "info_lambda"): None,
         ("train", "clip"): 0.0, ("train", "gp_lambda"): 0.0, ("train", "ortho_reg"): 0.0}  # value with no effect


def moved_settings(d: dict[str, Any]) -> dict[str, Any]:
    """d with the settings of MOVED moved to `family.<arch>` (a new dict; d is not changed)."""
    if not isinstance(d, dict) or not any(isinstance(d.get(s), dict) and f in d[s] for s, f in MOVED):
        return d
    d = {k: dict(v) if isinstance(v, dict) else v for k, v in d.items()}
    model = d.get("model") or {}
    arch = model.get("arch", ModelConfig.arch) if isinstance(model, dict) else None
    owner = family_sections().get(arch) if isinstance(arch, str) else None
    owned = {f.name for f in fields(owner)} if owner is not None else set()
    for (section, name), inert in MOVED.items():
        sec = d.get(section)
        if not isinstance(sec, dict) or name not in sec:
            continue
        value = sec.pop(name)
        if name in owned:
            family = d[FAMILY] = d.get(FAMILY) or {}
            current = family.get(arch) or {}
            if isinstance(family, dict) and isinstance(current, dict):  # else validation reports the shape
                family[arch] = {name: value, **current}  # an explicit family value wins
        elif inert is not None and value != inert:
            users = sorted(n for n, cls in family_sections().items() if name in {f.name for f in fields(cls)})
            raise ConfigError(f"{section}.{name}", f"moved to family.<arch>.{name} and used by "
                                                   f"{', '.join(users)} only; {arch} does not take it")
    return d


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def family_sections() -> dict[str, type]:
    """Family name -> its Options dataclass, for the families that have settings of their own."""
    from gan_core.models import ARCHS  # the family table imports this module

    return {name: f.options for name, f in ARCHS.items() if f.options is not None}


def _family_options(values: Any, arch: Any):
    """Validate every sub-section of `family:`; return the selected family's Options (or None)."""
    if not isinstance(values, dict):
        raise ConfigError(FAMILY, f"must be a mapping of family name -> settings, got {type(values).__name__}")
    options = family_sections()
    for name in values:
        if name not in options:
            raise ConfigError(f"{FAMILY}.{name}", f"not a family with settings of its own "
                                                  f"(those with some: {', '.join(sorted(options)) or 'none'})")
    chosen = {name: _options(name, options[name], values[name] or {}) for name in values}
    if arch in options:
        return chosen.get(arch) or _options(arch, options[arch], {})
    return None


def _family_check(cfg: "PipelineConfig") -> None:
    from gan_core.models import ARCHS

    family = ARCHS.get(cfg.model.arch)
    if family is None:
        return
    if not family.multi_critic and cfg.train.n_critic != 1:
        raise ConfigError("train.n_critic",
                          f"{family.name} updates D once per G update: set 1, got {cfg.train.n_critic}")
    if family.check is not None:
        family.check(cfg)


def _options(name: str, cls: type, values: dict):
    """One family's Options; its own checks name the field as `family.<name>.<field>` too."""
    prefix = f"{FAMILY}.{name}."
    try:
        return _section_from_dict(prefix[:-1], cls, values, {})
    except ConfigError as e:
        if e.field.startswith(prefix):
            raise
        raise ConfigError(prefix + e.field.rsplit(".", 1)[-1], e.reason) from None


def _family_defaults(arch: Any) -> dict[str, dict[str, Any]]:
    """The family's own defaults ({} for an unknown name: model.arch validation reports that)."""
    from gan_core.models import ARCHS  # the family table imports this module

    family = ARCHS.get(arch) if isinstance(arch, str) else None
    return family.defaults if family is not None else {}


def _section_from_dict(section: str, cls: type, values: dict[str, Any], defaults: dict[str, Any]):
    if not isinstance(values, dict):
        raise ConfigError(section, f"must be a mapping, got {type(values).__name__}")
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in {**defaults, **values}.items():
        if key not in known:
            raise ConfigError(f"{section}.{key}", f"unknown field (known: {', '.join(known)})")
        kwargs[key] = _coerce(f"{section}.{key}", known[key].type, value)
    return cls(**kwargs)


def _coerce(name: str, type_name: str, value: Any) -> Any:
    """Strict scalar coercion: ints may become floats, nothing else changes type silently."""
    type_name = getattr(type_name, "__name__", type_name)  # a class, when a module lacks postponed annotations
    if type_name == "bool":
        _check(isinstance(value, bool), name, f"must be true or false, got {value!r}")
    elif type_name == "int":
        _check(isinstance(value, int) and not isinstance(value, bool), name, f"must be an integer, got {value!r}")
    elif type_name == "float":
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), name,
               f"must be a number, got {value!r}")
        value = float(value)
    elif type_name == "str":
        _check(isinstance(value, str), name, f"must be a string, got {value!r}")
    return value
