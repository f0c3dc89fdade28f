"""The numeric modes of the train step, for every family: channels-last (`train.channels_last`, on in
params.yaml: faster for every conv family measured, benchmarks/family_throughput.py) computes the same
steps as the default layout, to float rounding; bf16 autocast (`train.bf16`) trains and stays finite."""
from __future__ import annotations

import pytest
import torch

from gan_core.models import ARCHS
from gan_core.train import build_state, schedule
from states import device_batches, family_config

STEPS = 3


def steps(arch: str, **mode):
    """The state after STEPS steps and each step's reported losses."""
    # pix2pix's dropout draws its mask in memory order: another layout, another (as good) mask
    cfg = family_config(arch, STEPS, STEPS, STEPS, {"dropout": 0.0} if arch == "pix2pix" else None, **mode)
    torch.manual_seed(0)
    state, plan = build_state(cfg, n_classes=3), schedule(cfg)
    batches, losses = device_batches(ARCHS[arch].dataset_kind, res=cfg.data.resolution), []
    for _ in range(STEPS):
        out = state.family.step(state, [next(batches) for _ in range(plan.batches(state.step))], cfg.train)
        state.step += 1
        losses.append({k: float(v) for k, v in out.items()})
    return state, losses


def weights(state) -> dict[str, torch.Tensor]:
    return {f"{net}.{k}": v.detach() for net in ("G", "D") for k, v in getattr(state, net).state_dict().items()
            if torch.is_tensor(v) and v.is_floating_point() and v.numel()}


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_channels_last_computes_the_same_steps_as_the_default_layout(arch):
    (plain, plain_losses), (nhwc, nhwc_losses) = steps(arch), steps(arch, channels_last=True)
    # another convolution kernel sums in another order: the first step's losses agree to rounding
    a, b = plain_losses[0], nhwc_losses[0]
    assert a.keys() == b.keys()
    for k in a:
        assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-5), f"{arch} {k}: {b[k]} vs {a[k]}"
    # then the weights stay within what rounding can move them: Adam's step is about lr times a sign, so a
    # near-zero gradient that rounds to the other sign moves a weight by up to 2 lr a step (and the next
    # steps' losses drift by what those weights change: not compared)
    bound = 2 * max(plain.opt_g.param_groups[0]["lr"], plain.opt_d.param_groups[0]["lr"]) * STEPS * 1.01
    a, b = weights(plain), weights(nhwc)
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] - b[k]).abs().max() <= bound, f"{arch} {k}"


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_channels_last_keeps_the_conv_weights_in_nhwc(arch):
    state, _ = steps(arch, channels_last=True)
    convs = [p for net in (state.G, state.D) for p in net.parameters() if p.dim() == 4]
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in convs), arch


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_bf16_autocast_trains_and_keeps_fp32_weights(arch):
    (plain, _), (bf16, losses) = steps(arch), steps(arch, bf16=True, channels_last=True)
    assert all(v == v and abs(v) != float("inf") for step in losses for v in step.values()), f"{arch}: {losses}"
    a, b = weights(plain), weights(bf16)
    for k, v in b.items():
        assert v.dtype == a[k].dtype and torch.isfinite(v).all(), f"{arch} {k}"
    assert any(not torch.equal(v, a[k]) for k, v in b.items()), f"{arch}: bf16 autocast changed nothing"
