"""stylegan (gan_core/models/stylegan.py), v1 (AdaIN) and v2 (modulation/demodulation): mapping and
style shapes, truncation, noise vs latent, style mixing, R1 and path length, one train step, w_avg
tracking, torch.export of G and of the Sampler, option and config errors, and v1's progressive growing
(stages, fade continuity, the stage in state_dict, a tiny 4 -> 8 -> 16 px run through the real loop).

Measured at init (z_dim 16, width 8, 16 px, 2 mapping layers, 16-32 latents, RMS distances):
- noise strengths start at 0, so changing only the noise moves the image by exactly 0; with every
  strength set to 0.02 the ratio noise-change / z-change was v1 0.04-0.05, v2 0.04-0.07 (at 0.1:
  v1 0.18-0.22, v2 0.16-0.34): the assertion below uses 0.02 and bound 0.25.
- style mixing at init does NOT split coarse from fine: with the crossover after the 4x4 layers (2 of
  6), only 3-12% (v1) / 38-69% (v2) of mixed images (seeds 0-3) were closer to the row seed's image than to the
  column's; random weights give no layer the semantic role training gives it. The test asserts the
  exact layer assignment instead, and the share of samples closer to the row seed rising from 0 to 1
  as the crossover moves from 0 to num_ws.
"""
import copy
import io
import types

import pytest
import torch

from gan_core.config import ConfigError, DataConfig, ModelConfig, PipelineConfig, TrainConfig
from gan_core.models import stylegan as sg
from gan_core.models.stylegan import (Discriminator, Generator, Options, Sampler, build_discriminator, build_generator,
                                      check, r1_penalty, schedule, step)
from gan_core.style import AdaIN, ModulatedConv, NoiseInput
from gan_core.state import Callback, TrainState
from gan_core.train import build_state, train
from states import grey_batch, train_state

RES, Z = 16, 16
VERSIONS = ("v1", "v2")
STAGES = [(4, 1.0), (8, 0.0), (8, 0.5), (8, 1.0), (16, 0.0), (16, 0.25), (16, 1.0)]


def nets(version="v2", res=RES, width=8, seed=0, **kw) -> tuple[Generator, Discriminator]:
    torch.manual_seed(seed)
    o = Options(version=version, mapping_layers=2, **kw)
    m, d = ModelConfig(arch="stylegan", z_dim=Z, g_channels=width, d_channels=width), DataConfig(resolution=res)
    return build_generator(m, d, 0, o), build_discriminator(m, d, 0, o)


def weights(*models) -> list[torch.Tensor]:
    return [p.detach().clone() for m in models for p in m.parameters()]


def changed(before, after) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, after))


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).pow(2).mean().sqrt())


def set_noise_strength(G: Generator, value: float) -> None:
    with torch.no_grad():
        for m in G.modules():
            if isinstance(m, NoiseInput):
                m.strength.fill_(value)


# ---------------------------------------------------------------- networks
@pytest.mark.parametrize("version", VERSIONS)
def test_widths_are_anchored_at_16_px_so_32_px_costs_about_a_16_px_step(version):
    """model.g/d_channels is the width at 16 px; above it widths halve per doubling (channels_at 0: the
    papers' base-at-the-output rule). Each level then costs the same FLOPs as a 16 px level."""
    def widths(res, **kw):
        G, D = nets(version, res=res, width=32, **kw)
        return ([b[-1].conv.weight.shape[0] for b in G.synthesis.blocks],
                [D.from_rgb[str(res)].weight.shape[0]]
                + [D.blocks[str(r)].conv2.weight.shape[0] for r in reversed(D.res[1:])])  # from R down
    assert widths(16) == ([128, 64, 32], [32, 64, 128])  # unchanged at 16 px
    assert widths(32) == ([128, 64, 32, 16], [16, 32, 64, 128])
    assert widths(32, channels_at=0) == ([256, 128, 64, 32], [32, 64, 128, 256])
    assert widths(8) == ([64, 32], [32, 64])  # below the anchor: base at the output, as before


@pytest.mark.parametrize("version", VERSIONS)
def test_mapping_styles_and_image_shapes(version):
    G, D = nets(version)
    z = torch.randn(5, Z)
    w = G.mapping(z)
    assert w.shape == (5, Z) and G.w_dim == Z  # w_dim 0 means model.z_dim
    assert G.num_ws == 2 * 3  # two style inputs per resolution 4, 8, 16
    ws = G.styles(z.clone())
    assert ws.shape == (5, G.num_ws, Z)
    img = G.synthesis(ws, "const")
    assert img.shape == (5, 1, RES, RES) and G(z).shape == (5, 1, RES, RES)
    assert D(img).shape == (5,)
    with pytest.raises(ValueError, match="noise_mode"):
        G.synthesis(ws, "fixed")


def test_w_dim_and_mapping_depth_follow_the_options():
    G, _ = nets(w_dim=24)
    assert G.mapping(torch.randn(3, Z)).shape == (3, 24)
    assert sum(isinstance(m, sg.EqualLinear) for m in G.mapping.modules()) == 2
    assert G.mapping.net[1].lr_mul == 0.01  # mapping learns 100x slower


def test_adain_sets_each_channels_mean_and_spread_from_the_style():
    torch.manual_seed(0)
    layer = AdaIN(6, 8)
    x, w = torch.randn(4, 6, 8, 8) * 5 + 3, torch.randn(4, 8)
    y = layer(x, w)
    s, b = layer.affine(w).chunk(2, dim=1)
    assert y.shape == x.shape
    assert torch.allclose(y.mean(dim=(2, 3)), b, atol=1e-5)  # instance-normalised, then shifted by b
    assert torch.allclose(y.std(dim=(2, 3), unbiased=False), (1 + s).abs(), atol=1e-4)  # and scaled by 1 + s


def test_modulated_conv_demodulates_to_unit_output_norm_per_sample():
    torch.manual_seed(0)
    conv = ModulatedConv(6, 5, 3, 8)
    x, w = torch.randn(4, 6, 8, 8), torch.randn(4, 8)
    y = conv(x, w)
    assert y.shape == (4, 5, 8, 8)
    # each sample's conv equals a plain conv with its own modulated, demodulated weight
    s = conv.affine(w)
    for i in range(4):
        k = conv.weight * conv.scale * s[i][None, :, None, None]
        k = k / k.pow(2).sum(dim=(1, 2, 3), keepdim=True).add(1e-8).sqrt()
        assert torch.allclose(k.pow(2).sum(dim=(1, 2, 3)), torch.ones(5), atol=1e-5)
        assert torch.allclose(y[i], torch.nn.functional.conv2d(x[i:i + 1], k, padding=1)[0], atol=1e-5)


# ---------------------------------------------------------------- truncation, noise, mixing
@pytest.mark.parametrize("version", VERSIONS)
def test_truncation_psi_0_gives_one_image_and_psi_1_changes_nothing(version):
    G, _ = nets(version)
    G.eval()
    with torch.no_grad():
        G.w_avg.copy_(torch.randn(Z))  # a trained-looking centre, so psi = 1 is not trivially w_avg-free
        z = torch.randn(6, Z)
        at0 = G(z, psi=0.0)
        assert torch.allclose(at0, at0[:1].expand_as(at0), atol=1e-5)  # every z -> the average image
        plain = G.synthesis(G.broadcast(G.mapping(z)), "const")
        assert torch.equal(G(z, psi=1.0), plain) and torch.equal(G(z), plain)
        unmixed = Sampler(G)(z, z, torch.ones(6), torch.full((6,), G.num_ws))  # the sampler clamps, as shown
        assert torch.allclose(unmixed, plain.clamp(-1, 1), atol=1e-4)  # psi as a tensor: w_avg + 1 * (w - w_avg)
        assert torch.equal(Sampler(G)(z), plain.clamp(-1, 1))  # z alone: G in eval mode, as evaluation calls it
        assert rms(G(z, psi=0.5), plain) > 1e-3


@pytest.mark.parametrize("version", VERSIONS)
def test_noise_moves_the_image_far_less_than_the_latent(version):
    G, _ = nets(version)
    G.eval()
    z, z2 = torch.randn(16, Z), torch.randn(16, Z)
    with torch.no_grad():
        ws = G.broadcast(G.mapping(z))
        base = G.synthesis(ws, "const")
        by_z = rms(base, G.synthesis(G.broadcast(G.mapping(z2)), "const"))
        assert rms(base, G.synthesis(ws, "random")) == 0.0  # strengths start at 0: noise has no effect yet
        set_noise_strength(G, 0.02)
        base = G.synthesis(ws, "const")
        by_noise = rms(base, G.synthesis(ws, "random"))
        assert 0 < by_noise < 0.25 * by_z  # measured 0.04-0.07 x
        assert torch.equal(base, G.synthesis(ws, "const"))  # const noise: deterministic


@pytest.mark.parametrize("version", VERSIONS)
def test_eval_is_deterministic_and_training_draws_noise_and_mixes(version):
    G, _ = nets(version)
    set_noise_strength(G, 0.1)
    z = torch.randn(4, Z)
    G.eval()
    assert torch.equal(G(z), G(z))
    G.train()
    assert not torch.equal(G(z), G(z))


@pytest.mark.parametrize("version", VERSIONS)
def test_mixing_assigns_layers_below_the_crossover_to_the_row_seed(version):
    G, _ = nets(version)
    G.eval()
    n = 32
    z, z2, one = torch.randn(n, Z), torch.randn(n, Z), torch.ones(n)
    S = Sampler(G)
    with torch.no_grad():
        w, w2 = G.broadcast(G.mapping(z)), G.broadcast(G.mapping(z2))
        row, col = G.synthesis(w, "const").clamp(-1, 1), G.synthesis(w2, "const").clamp(-1, 1)
        closer = []
        for c in range(G.num_ws + 1):
            mixed = S(z, z2, one, torch.full((n,), c))
            by_hand = G.synthesis(torch.cat([w[:, :c], w2[:, c:]], dim=1), "const").clamp(-1, 1)
            assert torch.allclose(mixed, by_hand, atol=1e-6)
            d_row = (mixed - row).flatten(1).norm(dim=1)
            d_col = (mixed - col).flatten(1).norm(dim=1)
            closer.append(float((d_row < d_col).float().mean()))
        # per-sample crossovers in one batch
        cross = torch.arange(n) % (G.num_ws + 1)
        mixed = S(z, z2, one, cross)
        assert torch.allclose(mixed[3], S(z[3:4], z2[3:4], one[:1], cross[3:4])[0], atol=1e-5)
    assert closer[0] == 0.0 and closer[-1] == 1.0
    assert closer[G.num_ws // 2] < closer[-1] and closer[1] < closer[G.num_ws - 1]


def test_training_mixing_crossovers_come_from_the_global_rng():
    G, _ = nets("v2")
    set_noise_strength(G, 0.0)
    z = torch.randn(8, Z)
    torch.manual_seed(5)
    a = G.styles(z)
    torch.manual_seed(5)
    b = G.styles(z)
    assert torch.equal(a, b)
    G.mixing_prob = 1.0
    ws = G.styles(z)
    assert not torch.equal(ws[:, 0], ws[:, -1])  # every sample mixed: first and last layers differ


# ---------------------------------------------------------------- regularisers and training
def make_state(version="v2", width=8, seed=0, **kw) -> TrainState:
    G, D = nets(version, width=width, seed=seed, **kw)
    o = Options(version=version, mapping_layers=2, **kw)
    return train_state(G, D, o, 2.5e-3, "nonsat")


def batch(n=8, res=RES, seed=0) -> dict:
    return grey_batch(n, res, seed)


@pytest.mark.parametrize("version", VERSIONS)
def test_r1_is_positive_and_has_gradients_for_d(version):
    _, D = nets(version)
    real = torch.rand(4, 1, RES, RES) * 2 - 1
    r1 = r1_penalty(D, real)
    assert r1.item() > 0
    r1.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in D.parameters())


@pytest.mark.parametrize("version", VERSIONS)
def test_one_step_trains_both_nets_with_lazy_r1_and_path_length(version):
    state = make_state(version, pl_weight=2.0, r1_every=2, pl_every=2)
    before_g, before_d, w_avg = weights(state.G), weights(state.D), state.G.w_avg.clone()
    out = step(state, [batch()], TrainConfig(batch_size=8))
    assert {"loss_d", "loss_g", "r1", "pl"} <= set(out)  # step 0: both lazy terms are due
    assert all(v.dim() == 0 and torch.isfinite(v) for v in out.values())
    assert out["r1"] > 0 and state.G.pl_mean > 0
    assert changed(before_g, weights(state.G)) and changed(before_d, weights(state.D))
    assert not torch.equal(state.G.w_avg, w_avg)  # tracked in G's training forward
    state.step = 1
    out = step(state, [batch(seed=1)], TrainConfig(batch_size=8))
    assert "r1" not in out and "pl" not in out  # not due on odd steps


def test_w_avg_moves_toward_the_mean_w_with_beta():
    G, _ = nets("v1", w_avg_beta=0.9)
    G.train()
    z = torch.randn(8, Z)
    G(z)
    assert torch.allclose(G.w_avg, 0.1 * G.mapping(z).mean(0), atol=1e-6)  # from 0: lerp by 1 - beta
    G.eval()
    before = G.w_avg.clone()
    G(z)
    assert torch.equal(G.w_avg, before)  # evaluation does not move it


# ---------------------------------------------------------------- export
@pytest.mark.parametrize("version", VERSIONS)
def test_export_of_g_and_of_the_sampler_match_eager(version):
    G, _ = nets(version)
    set_noise_strength(G, 0.1)
    G.eval()
    with torch.no_grad():
        G.w_avg.copy_(torch.randn(Z))
    z = torch.randn(4, Z)
    program = torch.export.export(G, (z,))
    assert torch.allclose(program.module()(z), G(z), atol=1e-5)
    args = (z, torch.randn(4, Z), torch.tensor([1.0, 0.7, 0.5, 0.0]), torch.tensor([0, 2, 3, G.num_ws]))
    S = sg.sampler(G)
    program = torch.export.export(S, args)
    buf = io.BytesIO()
    torch.export.save(program, buf)
    buf.seek(0)
    loaded = torch.export.load(buf).module()
    assert torch.allclose(loaded(*args), S(*args), atol=1e-5)


# ---------------------------------------------------------------- options and config
@pytest.mark.parametrize("kwargs, field", [
    ({"version": "v3"}, "family.version"),
    ({"growth": True, "version": "v2"}, "family.growth"),
    ({"mixing_prob": 1.5}, "family.mixing_prob"),
    ({"mapping_layers": 0}, "family.mapping_layers"),
    ({"mapping_lr_mul": 0.0}, "family.mapping_lr_mul"),
    ({"r1_gamma": -1.0}, "family.r1_gamma"),
    ({"r1_every": 0}, "family.r1_every"),
    ({"pl_decay": 0.0}, "family.pl_decay"),
    ({"start_resolution": 6}, "family.start_resolution"),
    ({"phase_batch": "4:x"}, "family.phase_batch"),
    ({"version": "v1", "growth": True, "start_resolution": 8, "phase_batch": "4:2"}, "family.phase_batch"),
    ({"channels_at": 12}, "family.channels_at"),
    ({"channels_at": 2}, "family.channels_at"),
])
def test_bad_options_name_their_field(kwargs, field):
    with pytest.raises(ConfigError) as e:
        Options(**kwargs)
    assert e.value.field == field


def cfg_of(options: Options, steps=3000, batch_size=64, res=RES) -> types.SimpleNamespace:
    return types.SimpleNamespace(family=options, data=DataConfig(resolution=res), model=ModelConfig(),
                                 train=TrainConfig(steps=steps, batch_size=batch_size))


def test_check_growth_ends_inside_the_run_and_refuses_unused_settings():
    grow = Options(version="v1", growth=True)
    check(cfg_of(grow))  # defaults: 4 -> 16 px in 1500 of 3000 steps at batch 64
    assert schedule(cfg_of(grow)).growth_steps == 1500
    with pytest.raises(ConfigError, match="family.stylegan.fade_images"):
        check(cfg_of(grow, steps=1500))
    with pytest.raises(ConfigError, match="family.stylegan.start_resolution"):
        check(cfg_of(Options(version="v1", growth=True, start_resolution=32)))
    with pytest.raises(ConfigError, match="family.stylegan.phase_batch"):
        check(cfg_of(Options(version="v1", growth=True, phase_batch="32:2")))
    bad = cfg_of(Options())
    bad.model = ModelConfig(minibatch="stddev")
    with pytest.raises(ConfigError, match="model.minibatch"):
        check(bad)
    assert schedule(cfg_of(Options())).batches(7) == 1  # no growth: one batch per step


# ---------------------------------------------------------------- v1 progressive growing
def test_every_stage_writes_and_reads_full_resolution():
    G, D = nets("v1", growth=True)
    G.eval()
    z = torch.randn(3, Z)
    for stage in STAGES:
        G.set_stage(*stage)
        D.set_stage(*stage)
        img = G(z)
        assert img.shape == (3, 1, RES, RES) and D(img).shape == (3,)
        r = stage[0]
        if r < RES:  # the stage image, upsampled nearest: constant over (RES / r)^2 blocks
            blocks = img.unfold(2, RES // r, RES // r).unfold(3, RES // r, RES // r)
            assert torch.allclose(blocks, blocks[..., :1, :1].expand_as(blocks))
    fresh, _ = nets("v1", growth=True)
    assert (fresh.synthesis.stage_resolution, fresh.synthesis.alpha) == (RES, 1.0)


def test_fade_starts_exactly_at_the_previous_stage_and_ends_within_one_step():
    G, D = nets("v1", growth=True)
    G.eval()
    z, x = torch.randn(4, Z), torch.rand(4, 1, RES, RES) * 2 - 1
    with torch.no_grad():
        for r in (8, 16):
            G.set_stage(r // 2, 1.0)
            D.set_stage(r // 2, 1.0)
            prev_g, prev_d = G(z), D(x)
            G.set_stage(r, 0.0)
            D.set_stage(r, 0.0)
            assert torch.equal(G(z), prev_g)
            assert torch.allclose(D(x), prev_d, atol=1e-5)  # pooling twice by 2 vs once by 4: rounding only
            full = G.set_stage(r, 1.0) or G(z)
            n = 375  # fade steps of the default schedule at batch 64
            G.set_stage(r, 1 - 1 / n)
            # G is linear in alpha: the last fade step is 1/n of the whole fade's change from the end
            assert (G(z) - full).abs().max() <= (full - prev_g).abs().max() / n + 1e-6


def test_stage_travels_in_state_dict_and_deepcopy():
    G, D = nets("v1", growth=True)
    G.set_stage(8, 0.25)
    D.set_stage(8, 0.25)
    G2, D2 = nets("v1", growth=True, seed=1)
    G2.load_state_dict(G.state_dict())
    D2.load_state_dict(D.state_dict())
    assert (G2.synthesis.stage_resolution, G2.synthesis.alpha) == (8, 0.25)
    assert (D2.stage_resolution, D2.alpha) == (8, 0.25)
    ema = copy.deepcopy(G).eval()
    G.eval()
    z = torch.randn(2, Z)
    assert torch.equal(ema(z), G(z))


class Stages(Callback):
    def __init__(self):
        self.seen = []

    def on_step(self, state):
        self.seen.append((state.extra["growth"]["resolution"], state.extra["growth"]["alpha"]))


def test_a_tiny_v1_growth_run_through_the_loop_ends_at_full_resolution():
    cfg = PipelineConfig(data=DataConfig(resolution=RES), model=ModelConfig(arch="stylegan", z_dim=Z, g_channels=4,
                                                                           d_channels=4),
                         train=TrainConfig(steps=10, batch_size=8, lr_g=2.5e-3, lr_d=2.5e-3, beta1=0.0, beta2=0.99,
                                           ema_start=0, num_workers=1),
                         family=Options(version="v1", growth=True, mapping_layers=2, fade_images=16,
                                        stable_images=16, phase_batch="4:2", r1_every=4))
    check(cfg)
    torch.manual_seed(0)
    state, stages = build_state(cfg), Stages()
    train(state, (batch(seed=i) for i in range(100)), cfg, [stages])
    assert stages.seen == [(4, 1.0), (8, 0.0), (8, 0.5), (8, 1.0), (8, 1.0), (16, 0.0), (16, 0.5),
                           (16, 1.0), (16, 1.0), (16, 1.0)]
    assert state.images_seen == 2 * 8 + 9 * 8
    for net in (state.G.synthesis, state.D, state.G_ema.synthesis):
        assert (net.stage_resolution, net.alpha) == (RES, 1.0)
    out = state.G_ema(torch.randn(3, Z))
    assert out.shape == (3, 1, RES, RES) and torch.isfinite(out).all()
