"""CycleGAN: shapes, the step, the image pool, an exact resume with pools, export, and learning.

The learning test translates unpaired digits A into inverted digits B (255 - x): the true A -> B map
is known, but training never sees a pair (A and B come from disjoint halves of the training rows).
Thresholds come from seeds 0-2 with room; re-measure after changing the family or its defaults:

    .venv/bin/python tests/test_cyclegan.py --seeds 3

Measured (2026-11-23, 1 thread of a shared 2-core CPU; width 16, batch 16, 600 steps, 48-55 ms/step;
before -> after, G_ema on 200 held-out digits; l1_a2b_other: L1 to the next row's ground truth):
    seed  cycle_l1       l1_a2b         l1_a2b_other   l1_identity
    0     0.655 -> 0.095  0.733 -> 0.116  0.732 -> 0.379  1.380
    1     0.653 -> 0.105  0.746 -> 0.273  0.743 -> 0.374  1.380
    2     0.650 -> 0.105  0.714 -> 0.328  0.717 -> 0.380  1.380
Worst seed against each threshold: cycle 0.16 (< 0.5), l1_a2b fell to 0.46 (< 0.6), l1_a2b /
l1_identity 0.24 (< 0.5), l1_a2b / l1_a2b_other 0.86 (< 0.95; 1.0 for a G that ignores its input).
Unpaired translation has more than one answer: in some seeds G draws a plausible inverted digit that
is only partly the input's (seed 2), which is why the content threshold is the loosest.
With the identity loss on (0.5), seed 0 reached only l1_a2b 0.55 (400 steps, 1 block); with 3 blocks
0.35-0.38 over seeds 0-2 (400 steps), with 2 blocks 0.14-0.48.
"""
from __future__ import annotations

import copy
import io
import sys
import time

import pytest
import torch

from gan_core.config import ConfigError, DataConfig, ModelConfig, TrainConfig
from gan_core.losses import LOSSES
from gan_core.models.cyclegan import (Options, Translator, build_discriminator, build_generator, heldout, infer,
                                      pool_draw, score, step)
from gan_core.state import TrainState
from gan_core.train import ema_update


def make_state(res: int = 8, width: int = 8, seed: int = 0, lr: float = 2e-4, **opts) -> TrainState:
    torch.manual_seed(seed)
    o = Options(**opts)
    m, d = ModelConfig(g_channels=width, d_channels=width), DataConfig(resolution=res)
    G, D = build_generator(m, d, 0, o), build_discriminator(m, d, 0, o)
    adam = lambda net: torch.optim.Adam(net.parameters(), lr=lr, betas=(0.5, 0.999))  # noqa: E731
    return TrainState(family=None, G=G, D=D, G_ema=copy.deepcopy(G).eval().requires_grad_(False),
                      opt_g=adam(G), opt_d=adam(D), loss=LOSSES["lsgan"], device=torch.device("cpu"), options=o)


def random_batches(n: int, res: int = 8, batch: int = 4, seed: int = 1) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    u8 = lambda: torch.randint(0, 256, (batch, 1, res, res), generator=g, dtype=torch.uint8)  # noqa: E731
    return [{"images": u8(), "images_b": u8()} for _ in range(n)]


def run(state: TrainState, batches: list[dict]) -> list[dict]:
    """The loop's part that matters here: step, count, EMA (decay 0.5 so G_ema moves every step)."""
    outs = []
    for b in batches:
        outs.append(step(state, [b], TrainConfig()))
        state.step += 1
        ema_update(state.G_ema, state.G, 0.5)
    return outs


def test_options_name_the_bad_field():
    for field, value in (("cycle_lambda", -1.0), ("identity", float("nan")), ("pool_size", -1),
                         ("blocks", 0), ("norm", "layer"), ("pool_size", 2.5)):
        with pytest.raises(ConfigError) as e:
            Options(**{field: value})
        assert e.value.field == f"family.{field}"


def test_shapes_and_other_sizes():
    state = make_state(res=8)
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    out = state.G(x, x)
    assert set(out) == {"fake_a", "fake_b", "rec_a", "rec_b", "idt_a", "idt_b"}
    assert all(v.shape == x.shape and v.abs().max() <= 1 for v in out.values())
    assert "idt_a" not in make_state(identity=0.0).G(x, x)  # no identity loss: no identity forwards
    la, lb = state.D(x, x)
    assert la.shape[:2] == (3, 1) and la.shape == lb.shape and la.shape[-1] > 1  # a grid of patch logits
    translator = infer(state.G).eval()
    y = torch.rand(2, 1, 12, 20) * 2 - 1  # fully convolutional: any H, W divisible by 4
    with torch.no_grad():
        t = translator(y, torch.tensor([0, 1]))
        assert t.shape == y.shape
        assert torch.allclose(t[:1], state.G.a2b(y[:1]), atol=1e-6)  # row 0: A -> B
        assert torch.allclose(t[1:], state.G.b2a(y[1:]), atol=1e-6)  # row 1: B -> A
        assert state.D.d_a(y).shape[-2:] != la.shape[-2:]


@pytest.mark.parametrize("opts", [{}, {"pool_size": 0, "norm": "batch"}])
def test_one_step_moves_both_generators_and_both_discriminators(opts):
    state = make_state(**opts)
    before = {k: v.clone() for k, v in {**state.G.state_dict(), **{"D." + k: v for k, v in
                                                                    state.D.state_dict().items()}}.items()}
    (out,) = run(state, random_batches(1))
    assert set(out) == {"loss_d", "loss_g", "cycle", "identity"}
    assert all(v.dim() == 0 and not v.requires_grad and torch.isfinite(v) for v in out.values())
    after = {**state.G.state_dict(), **{"D." + k: v for k, v in state.D.state_dict().items()}}
    for net in ("a2b.", "b2a.", "D.d_a.", "D.d_b."):
        assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith(net)), net
    assert all(p.requires_grad for p in state.D.parameters())  # D unfrozen again after the G update
    if state.options.pool_size:
        assert len(state.extra["pool_a"]) == 4 and state.extra["pool_b"].dtype == torch.float32


def ids(t: torch.Tensor) -> list[int]:
    """Images made of one constant value -> that value, an id to follow them through the pool."""
    return sorted(int(v) for v in t.flatten(1)[:, 0])


def test_pool_fills_then_swaps_only_stored_or_new_images():
    torch.manual_seed(0)
    pool, size, swaps, draws = None, 6, 0, 0
    for k in range(400):
        fakes = torch.arange(3.0 * k, 3.0 * k + 3).view(3, 1, 1, 1).expand(3, 1, 2, 2)
        old = pool
        kept = None if old is None else old.clone()
        shown, pool = pool_draw(old, fakes, size)
        assert len(pool) <= size
        if old is None or len(old) < size:  # filling (two calls of 3): every fake stored and shown as it is
            assert torch.equal(shown, fakes) and ids(pool) == sorted(ids(fakes) + ([] if old is None else ids(old)))
            continue
        assert torch.equal(old, kept) and len(pool) == size  # the caller's pool is left as it was
        assert sorted(ids(old) + ids(fakes)) == sorted(ids(shown) + ids(pool))  # nothing made up, nothing lost
        for i, v in enumerate(shown.flatten(1)[:, 0].tolist()):
            # its own fake, or one stored before it: in the old pool or earlier in this batch
            assert v == fakes[i, 0, 0, 0] or v in ids(old) + ids(fakes[:i])
            draws, swaps = draws + 1, swaps + (v != fakes[i, 0, 0, 0])
    assert 0.45 < swaps / draws < 0.55  # D sees an old fake half the time (binomial sd ~0.015 over ~1200 draws)


def test_pool_is_deterministic_under_a_seed_and_off_at_size_zero():
    fakes = torch.randn(6, 1, 4, 4)
    results = []
    for seed in (3, 3, 4):
        torch.manual_seed(seed)
        pool, shown = None, []
        for _ in range(5):
            s, pool = pool_draw(pool, fakes + len(shown), 4)
            shown.append(s)
        results.append(torch.cat(shown))
    assert torch.equal(results[0], results[1]) and not torch.equal(results[0], results[2])
    fresh = fakes.clone().requires_grad_(True)
    shown, pool = pool_draw(None, fresh * 2, 0)  # off: D sees the fresh fakes, cut from G's graph
    assert torch.equal(shown, fakes * 2) and not shown.requires_grad and pool is None


class Scaled(torch.nn.Module):
    def __init__(self, k: float):
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.k * x


def test_score_closed_forms():
    x = torch.rand(5, 1, 8, 8) * 2 - 1
    inputs, targets = heldout(x, -x, Options())  # held-out A and its known B (inverted)
    assert inputs is x and targets is not None and torch.equal(targets, -x)
    exact = score(Translator(Scaled(-1.0), Scaled(-1.0)), inputs, targets)  # the true map both ways
    assert exact["cycle_l1"] == 0.0 and exact["l1_a2b"] == 0.0
    assert abs(exact["l1_identity"] - 2 * x.abs().mean().item()) < 1e-6  # |x - (-x)|
    lazy = score(Translator(Scaled(1.0), Scaled(1.0)), inputs, targets)  # translates nothing
    assert lazy["cycle_l1"] == 0.0 and lazy["l1_a2b"] == lazy["l1_identity"]  # why cycle_l1 alone can't gate
    half = score(Translator(Scaled(0.5), Scaled(1.0)), inputs, None)  # unpaired held-out data: no targets
    assert set(half) == {"cycle_l1"} and abs(half["cycle_l1"] - 0.5 * x.abs().mean().item()) < 1e-6
    with pytest.raises(ValueError, match="images_b"):
        heldout(x, x[:3], Options())


def snapshot(state: TrainState) -> dict:
    return {"G": state.G.state_dict(), "D": state.D.state_dict(), "G_ema": state.G_ema.state_dict(),
            "opt_g": state.opt_g.state_dict(), "opt_d": state.opt_d.state_dict(),
            "rng": torch.get_rng_state(), "extra": state.extra, "step": state.step}


def test_resume_with_pools_is_exact():
    batches = random_batches(4, batch=4)
    straight = make_state(pool_size=6)  # full after 2 steps: steps 3 and 4 swap through the RNG
    run(straight, batches)

    first = make_state(pool_size=6)
    run(first, batches[:2])
    buf = io.BytesIO()
    torch.save(snapshot(first), buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    resumed = make_state(pool_size=6, seed=99)  # other weights, RNG and an empty pool until loaded
    for name in ("G", "D", "G_ema", "opt_g", "opt_d"):
        getattr(resumed, name).load_state_dict(ckpt[name])
    torch.set_rng_state(ckpt["rng"])
    resumed.extra, resumed.step = ckpt["extra"], ckpt["step"]
    run(resumed, batches[2:])

    for name in ("G", "D", "G_ema"):
        a, b = getattr(straight, name).state_dict(), getattr(resumed, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    for key in ("pool_a", "pool_b"):
        assert len(straight.extra[key]) == 6 and torch.equal(straight.extra[key], resumed.extra[key])


def test_translator_exports_with_dynamic_batch_and_size():
    translator = infer(make_state(blocks=1).G).eval()
    x, direction = torch.rand(3, 1, 8, 8) * 2 - 1, torch.tensor([0, 1, 1])
    batch, h, w = torch.export.Dim("batch", max=1024), torch.export.Dim("h", min=2, max=64), \
        torch.export.Dim("w", min=2, max=64)
    program = torch.export.export(translator, (x, direction), dynamic_shapes={
        "images": {0: batch, 2: 4 * h, 3: 4 * w}, "direction": {0: batch}})
    for n, hh, ww in ((3, 8, 8), (5, 12, 16)):
        x, direction = torch.rand(n, 1, hh, ww) * 2 - 1, torch.arange(n) % 2
        with torch.no_grad():
            assert torch.allclose(program.module()(x, direction), translator(x, direction), atol=1e-6)


# ---- learning --------------------------------------------------------------------------------------
HELDOUT = 200
# identity off: the identity loss asks a2b(b) = b, which the true map here (inversion) contradicts;
# one residual block: at 16 px the stem and resampling already see the whole image, and with 1 block
# G found the pixelwise inversion in more seeds than with 2 or 3 (see the measured numbers above)
LEARN_OPTIONS = {"identity": 0.0, "blocks": 1}


def inverted_digits(res: int = 16):
    """(train A, train B, held-out A, held-out B) uint8 (N, 1, res, res): B = 255 - A. The training
    halves are disjoint rows, so no training A has its B counterpart in the B set."""
    from sklearn.datasets import load_digits

    x = torch.from_numpy(load_digits().images).float().mul(255.0 / 16.0)[:, None]  # (1797, 1, 8, 8) 0..255
    x = torch.nn.functional.interpolate(x, size=(res, res), mode="bilinear", align_corners=False)
    x = x.round().clamp(0, 255).to(torch.uint8)
    train, held = x[:-HELDOUT], x[-HELDOUT:]
    half = len(train) // 2
    return train[:half], 255 - train[half:2 * half], held, 255 - held


def learn(seed: int, steps: int = 600, batch: int = 16, **opts) -> tuple[dict, dict, float]:
    """Held-out scores of G_ema before and after `steps` steps, and seconds per step. Also
    l1_a2b_other: the translations' L1 to *other* rows' ground truth (the next row's), which a G
    that draws plausible B images ignoring its input scores as well as l1_a2b."""
    from gan_core.data import to_float

    a, b, held_a, held_b = inverted_digits()
    state = make_state(res=16, width=16, seed=seed, **{**LEARN_OPTIONS, **opts})
    inputs, targets = heldout(to_float(held_a.clone()), to_float(held_b.clone()), state.options)

    from gan_core.metrics.frechet import feature_stats, fid_from_stats
    from gan_core.metrics.heldout import target_features

    domain_b = feature_stats(target_features(to_float(b.clone())))  # the evaluator's FID reference: training B

    def fid(images) -> float:
        return fid_from_stats(feature_stats(target_features(images)), domain_b)

    def scores() -> dict:
        translator = infer(state.G_ema).eval()
        out = score(translator, inputs, targets, state.options)
        with torch.no_grad():
            fake_b = translator(inputs, torch.zeros(len(inputs), dtype=torch.long))
        return {**out, "l1_a2b_other": (fake_b - targets.roll(1, 0)).abs().mean().item(),
                "fid": fid(fake_b), "fid_input": fid(inputs)}

    before = scores()
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for _ in range(steps):  # A and B drawn independently: unpaired
        ia, ib = torch.randint(len(a), (batch,), generator=g), torch.randint(len(b), (batch,), generator=g)
        step(state, [{"images": a[ia], "images_b": b[ib]}], TrainConfig())
        state.step += 1
        ema_update(state.G_ema, state.G, 0.99 if state.step > 50 else 0.0)
    per_step = (time.perf_counter() - t0) / steps
    return before, scores(), per_step


@pytest.mark.slow
def test_learns_to_translate_unpaired_digits():
    torch.set_num_threads(1)
    before, after, _ = learn(seed=0)
    assert after["cycle_l1"] < 0.5 * before["cycle_l1"]  # A -> B -> A returns A
    assert after["l1_a2b"] < 0.6 * before["l1_a2b"]  # nearer the ground truth than at initialisation,
    assert after["l1_a2b"] < 0.5 * after["l1_identity"]  # far nearer than not translating,
    assert after["l1_a2b"] < 0.95 * after["l1_a2b_other"]  # and each translation is of *its* input (1.0 at init)
    assert after["fid"] < LEARN_FID * after["fid_input"]  # and, as a set, look like domain B


# FID (random-conv features, against training B) of the held-out A->B translations over that of the
# untranslated inputs, measured with `python tests/test_cyclegan.py --seeds 3` after 600 steps:
# 0.097, 0.302, 0.295 against 13.31 (ratios 0.007-0.023; 49-57 at initialisation). 0.1 leaves 4x room.
LEARN_FID = 0.1


if __name__ == "__main__":
    torch.set_num_threads(1)
    n = int(sys.argv[sys.argv.index("--seeds") + 1]) if "--seeds" in sys.argv else 3
    for s in range(n):
        b, a, t = learn(s)
        print(f"seed {s}: before {b}\n        after  {a}\n        {t * 1000:.0f} ms/step", flush=True)
