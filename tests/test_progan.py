"""progan (gan_core/models/progan.py): shapes at every growth stage (always full resolution out, full
resolution in), pixel norm, equalised weights, the stddev map, fade-in continuity, the stage inside
state_dict / deepcopy, torch.export at the final stage, one train step, option and config errors, and
a tiny 4 -> 8 -> 16 px growth run through the real loop."""
import copy
import io

import pytest
import torch

from gan_core.config import ConfigError, DataConfig, ModelConfig, PipelineConfig, TrainConfig
from gan_core.equalized import EqualConv2d, EqualLinear, PixelNorm, StddevMap
from gan_core.models.progan import (Discriminator, Generator, Options, build_discriminator, build_generator, check,
                                    step)
from gan_core.models.progan import schedule
from gan_core.growth import growth_of, stage_reals
from gan_core.state import Callback, TrainState
from gan_core.train import build_state, train
from states import grey_batch, train_state

RES, Z = 16, 16
STAGES = [(4, 1.0), (8, 0.0), (8, 0.5), (8, 1.0), (16, 0.0), (16, 0.25), (16, 1.0)]


def nets(res=RES, channels=1, width=4, options=Options(), seed=0) -> tuple[Generator, Discriminator]:
    torch.manual_seed(seed)
    m, d = ModelConfig(z_dim=Z, g_channels=width, d_channels=width), DataConfig(resolution=res, channels=channels)
    return build_generator(m, d, 0, options), build_discriminator(m, d, 0, options)


def at(stage, *models):
    for m in models:
        m.set_stage(*stage)
    return models


def weights(*models) -> list[torch.Tensor]:
    return [p.detach().clone() for m in models for p in m.parameters()]


# ---------------------------------------------------------------- networks
@pytest.mark.parametrize("channels", [1, 3])
def test_every_stage_reads_and_writes_full_resolution(channels):
    G, D = nets(channels=channels)
    z = torch.randn(6, Z)
    for stage in STAGES:
        at(stage, G, D)
        x = G(z)
        assert x.shape == (6, channels, RES, RES), stage
        assert D(x).shape == (6,), stage
        r = stage[0]  # below full resolution the image is the stage image upsampled (k x k constant blocks)
        assert torch.equal(x, x[..., ::RES // r, ::RES // r].repeat_interleave(RES // r, -1)
                           .repeat_interleave(RES // r, -2)), stage
    assert (G.stage_resolution, G.alpha) == (16, 1.0)  # left at the last stage set
    # linear output while training; evaluation and export see it clamped to the data range
    with torch.no_grad():
        G.to_rgb["16"].weight.mul_(10)  # overshoot the data range
    raw = G(z)
    assert raw.abs().max() > 1 and torch.equal(G.eval()(z), raw.clamp(-1, 1))


def test_built_at_full_resolution_with_layers_only_from_the_start_resolution():
    G, D = nets(options=Options(start_resolution=8))
    assert (G.stage_resolution, G.alpha, D.stage_resolution, D.alpha) == (16, 1.0, 16, 1.0)
    assert sorted(G.to_rgb, key=int) == ["8", "16"] and sorted(D.from_rgb, key=int) == ["8", "16"]
    assert sorted(G.blocks, key=int) == ["4", "8", "16"]  # the 4x4 block always exists
    with pytest.raises(ValueError, match="alpha"):
        G.set_stage(8, 0.5)  # nothing to fade from at the start resolution
    with pytest.raises(ValueError, match="stage resolution 4"):
        D.set_stage(4, 1.0)


def test_widths_double_toward_4x4_and_stop_at_fmap_max():
    G, D = nets(width=4, options=Options(fmap_max=12))
    assert G.to_rgb["16"].weight.shape[1] == 4 and G.to_rgb["8"].weight.shape[1] == 8
    assert G.blocks["4"].ch == 12  # 16 capped to 12
    assert D.from_rgb["16"].conv.weight.shape[0] == 4 and D.last.conv.weight.shape[1] == 12 + 1  # + stddev map


def test_widths_are_anchored_at_16_px_above_it_and_follow_the_paper_with_channels_at_0():
    G, D = nets(res=32, width=32)  # 32 px: 16, 32, 64, 128 from 32 to 4 px; each level a 16 px level's FLOPs
    assert [G.to_rgb[str(r)].weight.shape[1] for r in (4, 8, 16, 32)] == [128, 64, 32, 16]
    assert D.from_rgb["32"].conv.weight.shape[0] == 16 and D.last.conv.weight.shape[1] == 128 + 1
    G, D = nets(res=32, width=32, options=Options(channels_at=0))
    assert [G.to_rgb[str(r)].weight.shape[1] for r in (4, 8, 16, 32)] == [256, 128, 64, 32]
    G, _ = nets(res=16, width=32)  # at and below 16 px nothing changes
    assert [G.to_rgb[str(r)].weight.shape[1] for r in (4, 8, 16)] == [128, 64, 32]
    with pytest.raises(ConfigError, match="family.progan.channels_at"):
        Options(channels_at=24)


def test_pixel_norm_gives_unit_rms_features():
    x = torch.randn(5, 7, 3, 3) * torch.rand(5, 1, 3, 3) * 10
    rms = PixelNorm()(x).pow(2).mean(1).sqrt()
    assert torch.allclose(rms, torch.ones_like(rms), atol=1e-5)
    G, _ = nets()
    seen = []
    for block in G.blocks.values():
        block.register_forward_hook(lambda m, i, out: seen.append(out.pow(2).mean(1).sqrt()))
    G(torch.randn(3, Z) * 5)  # the latent's scale does not matter either: z is normalised first
    assert len(seen) == 3 and all(torch.allclose(r, torch.ones_like(r), atol=1e-4) for r in seen)


def test_equalized_weights_are_stored_standard_normal_and_scaled_at_run_time():
    G, D = nets(width=16)
    layers = [m for m in [*G.modules(), *D.modules()] if isinstance(m, (EqualConv2d, EqualLinear))]
    stored = torch.cat([m.weight.detach().flatten() for m in layers])
    assert stored.numel() > 50_000 and abs(stored.mean()) < 0.02 and abs(stored.std() - 1) < 0.02
    for m in layers:
        fan_in = m.weight[0].numel()
        gain = m.scale * fan_in ** 0.5
        assert gain == pytest.approx(2 ** 0.5) or gain == pytest.approx(1.0) or gain == pytest.approx(2 ** 0.5 / 4)
    assert G.blocks["4"].dense.scale == pytest.approx(2 ** 0.5 / 4 / Z ** 0.5)  # the official dense gain
    assert all(rgb.scale == pytest.approx(1 / rgb.weight[0].numel() ** 0.5) for rgb in G.to_rgb.values())  # gain 1
    assert D.last.out.scale == pytest.approx(1 / D.last.out.weight.shape[1] ** 0.5)  # linear logit, gain 1


def test_stddev_map_is_one_channel_of_the_groups_feature_std():
    x = torch.randn(8, 3, 4, 4)
    y = StddevMap(group=4)(x)
    assert y.shape == (8, 4, 4, 4) and torch.equal(y[:, :3], x)
    # sample i is in group i % 2 (the view is (group, B / group, ...)): groups {0, 2, 4, 6} and {1, 3, 5, 7}
    for g in range(2):
        want = x[g::2].std(0, unbiased=False).mean()
        assert torch.allclose(y[g::2, 3], want.expand(4, 4, 4), atol=1e-6)
    same = StddevMap(group=4)(x[:1].repeat(8, 1, 1, 1))
    assert same[:, 3].max() < 1e-3  # identical samples: no spread (sqrt of the 1e-8 guard)
    _, D = nets()
    assert isinstance(D.last.stddev, StddevMap)


# ---------------------------------------------------------------- fade-in
def test_fade_starts_exactly_at_the_previous_stage():
    G, D = nets()
    z, x = torch.randn(8, Z), torch.rand(8, 1, RES, RES) * 2 - 1
    with torch.no_grad():
        for r in (8, 16):
            prev_g, prev_d = at((r // 2, 1.0), G, D)[0](z), D(x)
            at((r, 0.0), G, D)
            assert torch.equal(G(z), prev_g) and torch.equal(D(x), prev_d), r
            # the reals are faded the same way: at alpha 0 they are the previous stage's reals
            assert torch.equal(stage_reals(x, r, 0.0), stage_reals(x, r // 2, 1.0))


def test_fade_ends_within_one_fade_steps_worth_of_change():
    """Every fade step moves the output by (new - old) / n, so the last fade step (alpha (n-1)/n) and
    the first stable step differ by at most max|new - old| / n. Measured at init (width 4, seed 0,
    default fade of 375 steps at batch 64): max |new - old| 2.4-4.6 (G) and 0.24-0.51 (D) over seeds 0-2
    and widths 4 and 32, so at most 0.0124 per step; asserted < 0.02."""
    G, D = nets()
    n = growth_of(Options(), RES, 64).segments()[1].steps
    assert n == 375
    z, x = torch.randn(64, Z), torch.rand(64, 1, RES, RES) * 2 - 1
    with torch.no_grad():
        for r in (8, 16):
            g_end, d_end = at((r, (n - 1) / n), G, D)[0](z), D(x)
            g_one, d_one = at((r, 1.0), G, D)[0](z), D(x)
            g_zero = at((r, 0.0), G, D)[0](z)
            # linear in alpha: the last step is 1/n of the whole change
            assert torch.allclose(g_one - g_end, (g_one - g_zero) / n, atol=1e-6)
            assert (g_one - g_end).abs().max() < 0.02 and (d_one - d_end).abs().max() < 0.02, r
            assert (g_one - g_zero).abs().max() > 0.1  # the bound is not vacuous: the two paths differ


# ---------------------------------------------------------------- stage persistence, export
def test_stage_travels_in_state_dict_deepcopy_and_a_weights_only_load():
    G, D = nets()
    at((8, 0.25), G, D)
    z = torch.randn(4, Z)
    sd = G.state_dict()
    assert sd["_extra_state"] == {"resolution": 8, "alpha": 0.25}
    buf = io.BytesIO()
    torch.save({"G": sd, "D": D.state_dict()}, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    G2, D2 = nets(seed=1)
    assert G2.stage_resolution == 16  # fresh: full resolution
    G2.load_state_dict(loaded["G"])
    D2.load_state_dict(loaded["D"])
    assert (G2.stage_resolution, G2.alpha, D2.stage_resolution, D2.alpha) == (8, 0.25, 8, 0.25)
    assert torch.equal(G2(z), G(z)) and torch.equal(D2(G(z)), D(G(z)))
    ema = copy.deepcopy(G)
    assert (ema.stage_resolution, ema.alpha) == (8, 0.25) and torch.equal(ema(z), G(z))


def test_export_at_the_final_stage_matches_eager_with_any_batch():
    G, _ = nets()
    G.eval()
    z = torch.randn(4, Z)
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(G, (z,), dynamic_shapes={"z": {0: batch}})
    for n in (4, 7):
        z = torch.randn(n, Z)
        assert torch.allclose(program.module()(z), G(z), atol=1e-6)


# ---------------------------------------------------------------- training
def make_state(options: Options, width=4, res=RES, seed=0) -> TrainState:
    G, D = nets(res=res, width=width, options=options, seed=seed)
    return train_state(G, D, options, 1e-3, "wasserstein")


def batch(n=8, res=RES, seed=0) -> dict:
    return grey_batch(n, res, seed)


def test_one_step_sets_the_stage_merges_its_batches_and_trains_both_nets():
    o = Options(fade_images=64, stable_images=64, phase_batch="4:2")
    state = make_state(o)
    before_g, before_d = weights(state.G), weights(state.D)
    out = step(state, [batch(seed=0), batch(seed=1)], TrainConfig(batch_size=8))
    assert {"loss_d", "loss_g", "gp", "drift", "wasserstein", "resolution", "alpha"} <= set(out)
    # losses are 0-d tensors; the stage may be plain floats (the host knows it: no tensor made from it)
    assert all(torch.as_tensor(v).dim() == 0 and torch.isfinite(torch.as_tensor(v)) for v in out.values())
    assert float(out["resolution"]) == 4 and state.extra["growth"] == {"resolution": 4, "alpha": 1.0}
    assert state.G_ema.stage_resolution == 4 and state.D.stage_resolution == 4
    g_moved = [not torch.equal(a, b) for a, b in zip(before_g, weights(state.G))]
    d_moved = [not torch.equal(a, b) for a, b in zip(before_d, weights(state.D))]
    names_g, names_d = [n for n, _ in state.G.named_parameters()], [n for n, _ in state.D.named_parameters()]
    # at 4 px exactly the 4x4 layers learn: G's first block and toRGB_4, D's fromRGB_4 and last block
    assert {n for n, m in zip(names_g, g_moved) if m} == {n for n in names_g if n.startswith(("blocks.4.", "to_rgb.4."))}
    assert {n for n, m in zip(names_d, d_moved) if m} == {n for n in names_d if n.startswith(("from_rgb.4.", "last."))}
    with pytest.raises(RuntimeError, match="2 batches per step, got 1"):
        step(state, [batch()], TrainConfig(batch_size=8))


def test_stage_reals_match_what_the_stage_can_draw():
    x = torch.rand(2, 1, RES, RES) * 2 - 1
    assert torch.equal(stage_reals(x, RES, 1.0), x)
    x4 = stage_reals(x, 4, 1.0)
    assert torch.allclose(x4[..., ::4, ::4], torch.nn.functional.avg_pool2d(x, 4), atol=1e-6)
    mid = stage_reals(x, 16, 0.5)
    assert torch.allclose(mid, 0.5 * x + 0.5 * stage_reals(x, 8, 1.0), atol=1e-6)


# ---------------------------------------------------------------- options and config
@pytest.mark.parametrize("kwargs, field", [
    ({"start_resolution": 6}, "start_resolution"), ({"start_resolution": 2}, "start_resolution"),
    ({"fade_images": -1}, "fade_images"), ({"stable_images": 1.5}, "stable_images"),
    ({"phase_batch": "4x2"}, "phase_batch"), ({"phase_batch": "6:2"}, "phase_batch"),
    ({"phase_batch": "8:0"}, "phase_batch"), ({"phase_batch": "8:2,8:4"}, "phase_batch"),
    ({"phase_batch": "4:2", "start_resolution": 8}, "phase_batch"),
    ({"drift": -1.0}, "drift"), ({"gp_lambda": float("nan")}, "gp_lambda"), ({"fmap_max": 0}, "fmap_max"),
])
def test_bad_options_name_their_field(kwargs, field):
    with pytest.raises(ConfigError) as e:
        Options(**kwargs)
    assert e.value.field == f"family.progan.{field}"


def config(steps=3000, res=16, batch_size=64, **kwargs) -> PipelineConfig:
    minibatch = kwargs.pop("minibatch", "none")
    return PipelineConfig(data=DataConfig(resolution=res), model=ModelConfig(arch="progan", loss="wasserstein",
                                                                            minibatch=minibatch),
                          train=TrainConfig(steps=steps, batch_size=batch_size), family=Options(**kwargs))


def test_check_growth_ends_inside_the_run_and_names_the_field():
    check(config())  # defaults: 4 -> 16 px stable at step 1500 of 3000
    assert growth_of(Options(), 16, 64).growth_steps == 1500
    with pytest.raises(ConfigError, match="takes 1500 steps") as e:
        check(config(steps=1500))
    assert e.value.field == "family.progan.fade_images"
    check(config(steps=1500, phase_batch="4:2,8:2"))  # bigger batches at 4 and 8 px: 375 + 375 / 2 * 3 steps
    with pytest.raises(ConfigError) as e:
        check(config(res=8, phase_batch="16:2"))
    assert e.value.field == "family.progan.phase_batch"
    with pytest.raises(ConfigError) as e:
        check(config(res=8, start_resolution=16))
    assert e.value.field == "family.progan.start_resolution"
    with pytest.raises(ConfigError) as e:
        check(config(minibatch="mbd"))
    assert e.value.field == "model.minibatch"


# ---------------------------------------------------------------- a growth run through the real loop
class Stages(Callback):
    def __init__(self):
        self.seen = []

    def on_step(self, state):
        self.seen.append((state.extra["growth"]["resolution"], state.extra["growth"]["alpha"]))


def test_a_tiny_growth_run_reads_the_scheduled_batches_and_ends_at_full_resolution():
    cfg = PipelineConfig(data=DataConfig(resolution=RES), model=ModelConfig(arch="progan", loss="wasserstein",
                                                                           z_dim=Z, g_channels=4, d_channels=4),
                         train=TrainConfig(steps=10, batch_size=8, lr_g=1e-3, lr_d=1e-3, beta1=0.0, beta2=0.99,
                                           ema_start=0, num_workers=1),
                         family=Options(fade_images=16, stable_images=16, phase_batch="4:2"))
    check(cfg)
    torch.manual_seed(0)
    state, stages, read = build_state(cfg), Stages(), []

    def batches():
        for i in range(100):
            read.append(i)
            yield batch(seed=i)

    train(state, batches(), cfg, [stages])
    # stable 4 px at 2 x 8 images (one step), then 2-step fades and stables of 8 images per step
    assert stages.seen == [(4, 1.0), (8, 0.0), (8, 0.5), (8, 1.0), (8, 1.0), (16, 0.0), (16, 0.5),
                           (16, 1.0), (16, 1.0), (16, 1.0)]
    assert state.images_seen == 2 * 8 + 9 * 8 and len(read) - 1 == schedule(cfg).position(10) == 11
    for net in (state.G, state.D, state.G_ema):
        assert (net.stage_resolution, net.alpha) == (RES, 1.0)
    out = state.G_ema(torch.randn(3, Z))
    assert out.shape == (3, 1, RES, RES) and torch.isfinite(out).all()
