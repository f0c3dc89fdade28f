"""The one table of GAN families: ARCHS maps `model.arch` names to their Family."""
from __future__ import annotations

from gan_core.config import ConfigError, ModelConfig
from gan_core.family import Family
from gan_core.models import dcgan
from gan_core.steps import adversarial_step

ARCHS: dict[str, Family] = {
    "dcgan": Family(
        name="dcgan",
        dataset_kind="unconditional",
        build_g=dcgan.build_generator,
        build_d=dcgan.build_discriminator,
        losses=("nonsat", "hinge"),
        step=adversarial_step,
        metrics=("fid",),
    ),
}


def get_family(arch: str) -> Family:
    if arch not in ARCHS:
        raise ConfigError("model.arch", f"unknown architecture {arch!r} (known: {', '.join(sorted(ARCHS))})")
    return ARCHS[arch]


def family_for(model: ModelConfig) -> Family:
    """The family of a model config, refusing a loss that family does not support."""
    family = get_family(model.arch)
    if model.loss not in family.losses:
        raise ConfigError("model.loss", f"{model.loss!r} is not supported by {family.name} "
                                        f"(supported: {', '.join(family.losses)})")
    return family
