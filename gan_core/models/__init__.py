"""The one table of GAN families: ARCHS maps `model.arch` names to their Family.

Families share bodies, layers, losses and the one train step; what differs is declared here.
"""
from __future__ import annotations

from gan_core.config import ConfigError, ModelConfig
from gan_core.family import Family
from gan_core.models import biggan, dcgan, vanilla
from gan_core.steps import adversarial_step

# The critics' optimisers as their papers give them: WGAN RMSprop(5e-5), n_critic 5, clip 0.01;
# WGAN-GP Adam(1e-4, betas (0, 0.9)), n_critic 5, lambda 10. BigGAN: hinge, Adam betas (0, 0.999),
# orthogonal regularisation 1e-4, but equal learning rates of 4e-4: with the paper's slower G
# (1e-4 vs 4e-4) a small BigGAN learned to follow its class in fewer seeds (class_acc 0.38-0.79
# vs 0.75-0.83 over seeds 0-2 after 600 steps on the blobs test set).
WGAN = {"model": {"loss": "wasserstein"},
        "train": {"optimizer": "rmsprop", "lr_g": 5e-5, "lr_d": 5e-5, "n_critic": 5, "clip": 0.01}}
WGAN_GP = {"model": {"loss": "wasserstein"},
           "train": {"lr_g": 1e-4, "lr_d": 1e-4, "beta1": 0.0, "beta2": 0.9, "n_critic": 5, "gp_lambda": 10.0}}
# Its widths default to 32 (not DCGAN's 64): at 64 the residual blocks cost ~10x DCGAN's FLOPs per image
# (75 images/s on 2 CPU cores, 45 min for the default 3000 steps).
BIGGAN = {"model": {"loss": "hinge", "g_channels": 32, "d_channels": 32},
          "train": {"lr_g": 4e-4, "lr_d": 4e-4, "beta1": 0.0, "beta2": 0.999, "ortho_reg": 1e-4}}

ARCHS: dict[str, Family] = {
    "vanilla": Family(
        "vanilla", "MLP generator and discriminator (Goodfellow 2014), non-saturating loss",
        "unconditional", vanilla.build_generator, vanilla.build_discriminator, ("nonsat", "hinge"), adversarial_step),
    "dcgan": Family(
        "dcgan", "strided conv / transposed conv, batch norm, LeakyReLU (Radford 2016)",
        "unconditional", dcgan.build_generator, dcgan.build_discriminator, ("nonsat", "hinge"), adversarial_step),
    "cgan": Family(
        "cgan", "class embedding concatenated to z in G, projection discriminator (Mirza 2014, Miyato 2018)",
        "labelled", dcgan.build_generator, dcgan.build_conditional_discriminator, ("nonsat", "hinge"),
        adversarial_step, metrics=("fid", "class_acc")),
    "wgan": Family(
        "wgan", "critic without sigmoid, Wasserstein loss, weight clipping, n_critic, RMSprop (Arjovsky 2017)",
        "unconditional", dcgan.build_generator, dcgan.build_discriminator, ("wasserstein",), adversarial_step,
        defaults=WGAN),
    "wgan_gp": Family(
        "wgan_gp", "Wasserstein loss + gradient penalty on interpolates, layer-norm critic (Gulrajani 2017)",
        "unconditional", dcgan.build_generator, dcgan.build_critic, ("wasserstein",), adversarial_step,
        defaults=WGAN_GP),
    "infogan": Family(
        "infogan", "categorical + continuous codes, Q head sharing D's body, mutual-information loss (Chen 2016)",
        "unconditional", dcgan.build_info_generator, dcgan.build_info_discriminator, ("nonsat", "hinge"),
        adversarial_step, metrics=("fid", "code_acc", "code_nmi")),
    "biggan": Family(
        "biggan", "conditional BN with shared embedding, hierarchical z, self-attention, spectral norm, hinge "
                  "(Brock 2019)",
        "labelled", biggan.build_generator, biggan.build_discriminator, ("hinge", "nonsat"), adversarial_step,
        metrics=("fid", "class_acc"), defaults=BIGGAN),
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
