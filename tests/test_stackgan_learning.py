"""stackgan learns (gan_core/models/stackgan.py): on held-out captions of the built-in captioned shapes,
G's images show the stated attributes clearly more often than chance and than a Stage-I-only model trained
as long from the same Stage-I state (scored by gan_core/metrics/alignment.py).

Measure the learning margins: `.venv/bin/python tests/test_stackgan_learning.py 0 1 2 3` (seeds).
"""
import copy
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # test_stackgan's helpers, run as a script too
from gan_core.captions import parse  # noqa: E402
from gan_core.config import TrainConfig  # noqa: E402
from gan_core.metrics import alignment as align  # noqa: E402
from gan_core.models.stackgan import Options, step  # noqa: E402
from test_stackgan import batch_of, make_state, shapes_data  # noqa: E402


def heldout_captions(data: dict) -> tuple[torch.Tensor, np.ndarray]:
    """Each held-out image's captions in turn (template i % K): ids and the attributes they state."""
    rows = range(data["train"], len(data["images"]))
    k = data["captions"].shape[1]
    texts = [data["texts"][r][i % k] for i, r in enumerate(rows)]
    return torch.from_numpy(np.stack([data["vocab"].encode(t) for t in texts])), np.stack([parse(t) for t in texts])


def generate(G, tokens: torch.Tensor, seed: int) -> torch.Tensor:
    z = torch.randn(len(tokens), G.latent.z_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return G.eval()(tokens, z).clamp(-1, 1)


def learn(seed: int, steps1: int, steps2: int, res=16, batch=32, width=32) -> dict:
    """One seed on the captioned shapes at `res` (Stage I at res / 2), trained as the loop does (G_ema
    at the default decay): Stage I for steps1, then a fork (state, RNG and batch stream copied): StackGAN
    goes on with Stage II for steps2, the Stage-I-only model with Stage I for as many steps. Alignment
    of G_ema on held-out captions at the fork (shared) and at the end of each."""
    from gan_core.train import ema_update

    data = shapes_data(res=res)
    clf, acc = align.train_attributes(data["images"][:data["train"]].numpy(), data["attributes"][:data["train"]])
    tokens, wanted = heldout_captions(data)
    result, t0, t = {"chance": align.chance(wanted), "classifier_acc": acc}, time.perf_counter(), TrainConfig()
    torch.manual_seed(seed)
    state = make_state(res=res, width=width, seed=seed, options=Options(stage1_steps=steps1))
    g = torch.Generator().manual_seed(seed)

    def run(state, g, steps):
        for _ in range(steps):
            step(state, [batch_of(data, torch.randint(0, data["train"], (batch,), generator=g))], t)
            state.step += 1
            ema_update(state.G_ema, state.G, t.ema_decay if state.step > t.ema_start else 0.0)
        return align.alignment(clf, generate(state.G_ema, tokens, seed), wanted)

    result["at_fork"] = run(state, g, steps1)
    fork, rng, g_fork = copy.deepcopy(state), torch.get_rng_state(), torch.Generator().set_state(g.get_state())
    result["stackgan"] = run(state, g, steps2)
    fork.options = Options(stage1_steps=steps1 + steps2)
    torch.set_rng_state(rng)
    result["stage1_only"] = run(fork, g_fork, steps2)
    assert state.G.current == 2 and fork.G.current == 1
    result["s_per_step"] = (time.perf_counter() - t0) / (steps1 + 2 * steps2)
    return result


@pytest.mark.slow
def test_alignment_on_heldout_captions_beats_chance_and_stage_one_only():
    torch.set_num_threads(1)
    r = learn(0, LEARN_STEPS1, LEARN_STEPS2)
    assert r["stackgan"] > r["chance"] + CHANCE_MARGIN, r
    assert r["stackgan"] > r["stage1_only"] + STAGE1_MARGIN, r


# Measured with `python tests/test_stackgan_learning.py 0 1 2 3` (16 px, Stage I at 8 px; 1 thread, 135-145 ms/step
# under heavy load): chance 0.312; at the fork (Stage I, 1000 steps) 0.694, 0.718, 0.679, 0.679; after 500
# more, StackGAN 0.764, 0.794, 0.777, 0.780 and the Stage-I-only model 0.738, 0.760, 0.752, 0.695 (margins
# +0.026, +0.034, +0.025, +0.085). With a 600-step Stage I instead StackGAN fell behind for seed 1 (0.725 vs
# 0.780: Stage I was still learning when frozen). The attribute classifier reads 87% of real 16 px images'
# attributes, the ceiling of the score here.
LEARN_STEPS1 = 1000
LEARN_STEPS2 = 500
CHANCE_MARGIN = 0.3
STAGE1_MARGIN = 0.01


if __name__ == "__main__":
    torch.set_num_threads(1)
    steps = __import__("os").environ.get("STACKGAN_STEPS", f"{LEARN_STEPS1},{LEARN_STEPS2}")  # e.g. 600,600
    s1, s2 = (int(v) for v in steps.split(","))
    for s in [int(a) for a in sys.argv[1:]] or [0]:
        r = learn(s, s1, s2)
        print(f"seed {s}: {r['s_per_step'] * 1e3:.0f} ms/step | attribute classifier acc {r['classifier_acc']:.3f} | "
              f"alignment: chance {r['chance']:.3f}, Stage I at step {s1} {r['at_fork']:.3f}, after "
              f"{s1 + s2}: stackgan {r['stackgan']:.3f}, stage-I-only {r['stage1_only']:.3f}", flush=True)
