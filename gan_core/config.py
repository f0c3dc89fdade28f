"""PipelineConfig: the sections (gan_core.sections) plus the selected family's defaults and own
settings, read once at the edge (params.yaml, CLI overrides, Prefect parameters).

Every section validates itself on construction and raises ConfigError naming the field, so bad
input stops before any work starts. `PipelineConfig.from_dict` rejects unknown keys for the same
reason: a typo such as `train.stepz` must not silently fall back to a default.

The family table (gan_core.models.ARCHS) owns each family's defaults, settings section and checks;
this module reads them, and the families import only gan_core.sections, so there is no cycle.
The section names are re-exported: `gan_core.config` stays the one place to import the config from.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field, fields
from typing import Any

from gan_core.files import canonical_json
from gan_core.models import ARCHS
from gan_core.sections import (DATASET_RE, MINIBATCH, NAME_RE, OPTIMIZERS, SECTIONS, ConfigError, DataConfig,
                               EvalConfig, ModelConfig, RegisterConfig, TrainConfig, check)
from gan_core.sections import FederatedConfig, PrivacyConfig

__all__ = ["DATASET_RE", "FAMILY", "MINIBATCH", "NAME_RE", "OPTIMIZERS", "SECTIONS", "ConfigError", "DataConfig",
           "EvalConfig", "ModelConfig", "PipelineConfig", "RegisterConfig", "TrainConfig", "canonical_json",
           "family_sections", "moved_settings"]

FAMILY = "family"  # params.yaml section holding each family's own settings, by family name
# sections left out of to_dict while at their defaults, so the params hash of older configs is unchanged
OPTIONAL_SECTIONS = ("federated", "privacy")
# fields left out of to_dict while at their defaults, for the same reason (model.ssl: gan_core/ssl.py)
OPTIONAL_FIELDS = {"model": ("ssl", "ssl_weight_d", "ssl_weight_g"), "train": ("deterministic",)}


@dataclass(frozen=True)
class PipelineConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    register: RegisterConfig = field(default_factory=RegisterConfig)
    federated: FederatedConfig = field(default_factory=FederatedConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)  # DP-SGD on D (gan_core/privacy.py)
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
        f = cfg.federated
        check(not f.enabled or f.rounds * f.local_steps == cfg.train.steps, "federated.rounds",
              f"rounds x local_steps = {f.rounds} x {f.local_steps} must equal train.steps={cfg.train.steps} "
              "(the step count every stage reads)")
        private = tuple(name for name, f in ARCHS.items() if f.private)
        check(not cfg.privacy.enabled or ARCHS[cfg.model.arch].private, "privacy.enabled",
              f"DP-SGD supports model.arch in {private}, not {cfg.model.arch!r} (a family declares it: Family.private)")
        ssl = tuple(name for name, f in ARCHS.items() if f.ssl)
        check(cfg.model.ssl == "none" or ARCHS[cfg.model.arch].ssl, "model.ssl",
              f"{cfg.model.ssl} needs a noise family whose D shares its features through gan_core.layers.DHead "
              f"(Family.ssl): model.arch in {ssl}, not {cfg.model.arch!r}")
        check(cfg.model.ssl == "none" or not cfg.privacy.enabled, "model.ssl",
              "must be none with privacy.enabled: the rotation loss is a second forward of D on the private "
              "images, which DP-SGD's per-sample accounting here does not cover")
        return cfg

    def to_dict(self) -> dict[str, dict[str, Any]]:
        out = {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS
               if name not in OPTIONAL_SECTIONS or getattr(self, name) != SECTIONS[name]()}
        for name, keys in OPTIONAL_FIELDS.items():
            default = SECTIONS[name]()
            for key in keys:
                if out[name][key] == getattr(default, key):
                    del out[name][key]
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


def family_sections() -> dict[str, type]:
    """Family name -> its Options dataclass, for the families that have settings of their own."""
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
        check(isinstance(value, bool), name, f"must be true or false, got {value!r}")
    elif type_name == "int":
        check(isinstance(value, int) and not isinstance(value, bool), name, f"must be an integer, got {value!r}")
    elif type_name == "float":
        check(isinstance(value, (int, float)) and not isinstance(value, bool), name,
              f"must be a number, got {value!r}")
        value = float(value)
    elif type_name == "str":
        check(isinstance(value, str), name, f"must be a string, got {value!r}")
    return value
