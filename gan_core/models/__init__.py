"""The one table of GAN families: ARCHS maps `model.arch` names to their Family.

Families share bodies, layers, losses and the one train step; what differs is declared here.
"""
from __future__ import annotations

from gan_core.sections import ConfigError, ModelConfig
from gan_core.family import Family, Gate
from gan_core.models import biggan, cyclegan, dcgan, pix2pix, progan, srgan, stylegan, vanilla
from gan_core.models import aae
from gan_core.models import stackgan
from gan_core.steps import adversarial_step, clipped_step, info_step, ortho_step, penalty_step

# The critics' optimisers as their papers give them (their clip 0.01 and lambda 10 are the defaults of
# their own settings, dcgan.ClipOptions / PenaltyOptions): WGAN RMSprop(5e-5), n_critic 5; WGAN-GP
# Adam(1e-4, betas (0, 0.9)), n_critic 5. BigGAN: hinge, Adam betas (0, 0.999), its own orthogonal
# regularisation 1e-4 (biggan.Options), but equal learning rates of 4e-4: with the paper's slower G
# (1e-4 vs 4e-4) a small BigGAN learned to follow its class in fewer seeds (class_acc 0.38-0.79
# vs 0.75-0.83 over seeds 0-2 after 600 steps on the blobs test set).
WGAN = {"model": {"loss": "wasserstein"},
        "train": {"optimizer": "rmsprop", "lr_g": 5e-5, "lr_d": 5e-5, "n_critic": 5}}
WGAN_GP = {"model": {"loss": "wasserstein"},
           "train": {"lr_g": 1e-4, "lr_d": 1e-4, "beta1": 0.0, "beta2": 0.9, "n_critic": 5}}
# Its widths default to 32 (not DCGAN's 64): at 64 the residual blocks cost ~10x DCGAN's FLOPs per image
# (75 images/s on 2 CPU cores, 45 min for the default 3000 steps).
BIGGAN = {"model": {"loss": "hinge", "g_channels": 32, "d_channels": 32},
          "train": {"lr_g": 4e-4, "lr_d": 4e-4, "beta1": 0.0, "beta2": 0.999}}
# Image-to-image: Adam(2e-4, beta1 0.5) as in pix2pix; width 32 (the paper's 64 is 3x slower on CPU at 16 px
# for a held-out L1 within noise on edges2digits). Gated on held-out PSNR: higher is better.
PIX2PIX = {"model": {"loss": "nonsat", "g_channels": 32, "d_channels": 32},
           "train": {"lr_g": 2e-4, "lr_d": 2e-4, "beta1": 0.5, "beta2": 0.999}}
PSNR_GATE = Gate("psnr", higher_is_better=True)
# CycleGAN: LSGAN, Adam(2e-4, 0.5), width 32 (64 is ~3x slower per step on CPU at 16 px). Gated on the
# A->B error against held-out ground truth (lower is better): its cycle error alone rewards a
# translator that changes nothing (identity scores 0), so a dataset needs aligned held-out rows.
CYCLEGAN = {"model": {"loss": "lsgan", "g_channels": 32, "d_channels": 32},
            "train": {"lr_g": 2e-4, "lr_d": 2e-4, "beta1": 0.5, "beta2": 0.999}}
# SRGAN: the paper's Adam beta1 0.9 and D at 1e-4; G at 1e-3 in the MSE phase (2e-3 learned in the tests at
# width 32), then the paper's 1e-4 from the first GAN step (srgan.Options.gan_lr_g); width 32 for CPU.
SRGAN = {"model": {"loss": "nonsat", "g_channels": 32, "d_channels": 32},
         "train": {"lr_g": 1e-3, "lr_d": 1e-4, "beta1": 0.9, "beta2": 0.999}}

ARCHS: dict[str, Family] = {
    "vanilla": Family(
        "vanilla", "MLP generator and discriminator (Goodfellow 2014), non-saturating loss",
        "unconditional", vanilla.build_generator, vanilla.build_discriminator, ("nonsat", "hinge"), adversarial_step,
        private=True, ssl=True),
    "dcgan": Family(
        "dcgan", "strided conv / transposed conv, batch norm, LeakyReLU (Radford 2016)",
        "unconditional", dcgan.build_generator, dcgan.build_discriminator, ("nonsat", "hinge"), adversarial_step,
        private=True, ssl=True),
    "cgan": Family(
        "cgan", "class embedding concatenated to z in G, projection discriminator (Mirza 2014, Miyato 2018)",
        "labelled", dcgan.build_generator, dcgan.build_conditional_discriminator, ("nonsat", "hinge"),
        adversarial_step, metrics=("fid", "class_acc"), options=dcgan.ConditionalOptions, private=True, ssl=True),
    "wgan": Family(
        "wgan", "critic without sigmoid, Wasserstein loss, weight clipping, n_critic, RMSprop (Arjovsky 2017)",
        "unconditional", dcgan.build_generator, dcgan.build_discriminator, ("wasserstein",), clipped_step,
        defaults=WGAN, options=dcgan.ClipOptions, private=True, ssl=True),
    "wgan_gp": Family(
        "wgan_gp", "Wasserstein loss + gradient penalty on interpolates, layer-norm critic (Gulrajani 2017)",
        "unconditional", dcgan.build_generator, dcgan.build_critic, ("wasserstein",), penalty_step,
        defaults=WGAN_GP, options=dcgan.PenaltyOptions, ssl=True),
    "infogan": Family(
        "infogan", "categorical + continuous codes, Q head sharing D's body, mutual-information loss (Chen 2016)",
        "unconditional", dcgan.build_info_generator, dcgan.build_info_discriminator, ("nonsat", "hinge"),
        info_step, metrics=("fid", "code_acc", "code_nmi"), options=dcgan.InfoOptions, private=True, ssl=True),
    "biggan": Family(
        "biggan", "conditional BN with shared embedding, hierarchical z, self-attention, spectral norm, hinge "
                  "(Brock 2019)",
        "labelled", biggan.build_generator, biggan.build_discriminator, ("hinge", "nonsat"), ortho_step,
        metrics=("fid", "class_acc"), defaults=BIGGAN, options=biggan.Options, ssl=True),
    "progan": Family(
        "progan", "progressive growing 4 px -> data.resolution with fade-in, pixel norm, equalised learning rate, "
                  "mini-batch stddev map, WGAN-GP + drift (Karras 2018)",
        "unconditional", progan.build_generator, progan.build_discriminator, ("wasserstein",), progan.step,
        defaults=progan.DEFAULTS, options=progan.Options, check=progan.check, schedule=progan.schedule,
        multi_critic=False, dynamic_graph=True),
    "stylegan": Family(
        "stylegan", "mapping network, learned constant, per-layer styles (v1 AdaIN / v2 modulated convs), noise "
                    "inputs, style mixing, truncation, lazy R1 (Karras 2019, 2020)",
        "unconditional", stylegan.build_generator, stylegan.build_discriminator, ("nonsat",), stylegan.step,
        defaults=stylegan.DEFAULTS, options=stylegan.Options, check=stylegan.check, schedule=stylegan.schedule,
        infer=stylegan.sampler, multi_critic=False, dynamic_graph=stylegan.grows),
    "pix2pix": Family(
        "pix2pix", "U-Net G with skips and dropout, PatchGAN D on (input, output) pairs, cGAN + 100 L1 (Isola 2017)",
        "paired", pix2pix.build_generator, pix2pix.build_discriminator, ("nonsat",), pix2pix.step, multi_critic=False,
        metrics=("l1", "psnr", "ssim", "l1_identity", "l1_mean"), defaults=PIX2PIX, options=pix2pix.Options,
        gate=PSNR_GATE, infer=pix2pix.infer, heldout=pix2pix.heldout, score=pix2pix.score),
    "cyclegan": Family(
        "cyclegan", "two ResNet G and two PatchGAN D, LSGAN, cycle + identity L1, pools of past fakes (Zhu 2017)",
        "unpaired", cyclegan.build_generator, cyclegan.build_discriminator, ("lsgan",), cyclegan.step,
        multi_critic=False,
        metrics=("cycle_l1", "l1_a2b", "l1_identity"), defaults=CYCLEGAN, options=cyclegan.Options,
        gate=Gate("l1_a2b", higher_is_better=False), infer=cyclegan.infer, heldout=cyclegan.heldout,
        score=cyclegan.score, directions=("a2b", "b2a")),
    "srgan": Family(
        "srgan", "SRResNet G (residual blocks, sub-pixel x2/x4), strided D; MSE warm-up, then pixel + feature "
                 "content loss + 1e-3 adversarial (Ledig 2017)",
        "superres", srgan.build_generator, srgan.build_discriminator, ("nonsat",), srgan.step, multi_critic=False,
        metrics=("psnr", "ssim", "psnr_bicubic", "ssim_bicubic"), defaults=SRGAN, options=srgan.Options,
        gate=PSNR_GATE, infer=srgan.infer, heldout=srgan.heldout, score=srgan.score,
        lineage=("features", "features_sha256"), check=srgan.check),
    "aae": Family(
        "aae", "encoder + decoder, a discriminator on the code pushing it to a N(0, I) prior; prior samples "
               "decode to images (Makhzani 2016)",
        "unconditional", aae.build_generator, aae.build_discriminator, ("nonsat",), aae.step, multi_critic=False,
        metrics=("fid", "recon_mse", "mmd", "mmd_p"), defaults=aae.DEFAULTS, options=aae.Options, infer=aae.infer,
        encode=aae.encoder, score_codes=aae.score_codes),
    "aae_mix": Family(
        "aae_mix", "aae with a mixture-of-Gaussians prior, one component per class, D reading the label "
                   "(Makhzani 2016, 2.3)",
        "labelled", aae.build_generator, aae.build_discriminator, ("nonsat",), aae.step, multi_critic=False,
        metrics=("fid", "class_acc", "recon_mse", "mmd", "mmd_p"), defaults=aae.DEFAULTS, options=aae.Options,
        infer=aae.infer, encode=aae.encoder, score_codes=aae.score_codes),
    "stackgan": Family(
        "stackgan", "text encoder + conditioning augmentation, Stage-I G at R/2 then Stage-II G refining to R from "
                    "the Stage-I image and the text, matching-aware D's (Zhang 2017)",
        "captioned", stackgan.build_generator, stackgan.build_discriminator, ("nonsat", "hinge"), stackgan.step,
        multi_critic=False, metrics=("fid", "alignment"), defaults=stackgan.DEFAULTS, options=stackgan.Options,
        check=stackgan.check, dynamic_graph=True, conditioning="text"),
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
