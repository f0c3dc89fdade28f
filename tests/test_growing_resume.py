"""Growing families resume exactly: a run stopped mid-fade and restored from its checkpoint ends with the
same stage, alpha, batches read and weights, bit for bit, as the run that never stopped."""
import pytest
import torch

from conftest import blobs
from gan_core.checkpoint import load_checkpoint, restore, rng_state, save_checkpoint, to_checkpoint
from gan_core.config import PipelineConfig
from gan_core.batches import ShardedBatches
from gan_core.state import Callback
from gan_core.train import batch_position, build_state, schedule, train

GROWING = {  # 4 -> 16 px at batch 8; at 4 px a step reads 2 batches
    "progan": {"progan": {"fade_images": 32, "stable_images": 8, "phase_batch": "4:2"}},
    "stylegan": {"stylegan": {"version": "v1", "growth": True, "mapping_layers": 2, "fade_images": 32,
                              "stable_images": 8, "phase_batch": "4:2", "r1_every": 2}},
}
STEPS = 12


def config(arch: str) -> PipelineConfig:
    return PipelineConfig.from_dict({
        "data": {"resolution": 16}, "family": GROWING[arch],
        "model": {"arch": arch, "z_dim": 8, "g_channels": 4, "d_channels": 4},
        "train": {"steps": STEPS, "batch_size": 8, "num_workers": 1, "log_every": 1, "checkpoint_every": 100,
                  "ema_start": 0}})


def batches(cfg, step: int):
    images, labels = blobs(96, res=16)
    data = ShardedBatches({"images": torch.from_numpy(images), "labels": torch.from_numpy(labels)}, 8, 0, 1, 0)
    return data.from_step(batch_position(step, cfg))


class Stages(Callback):
    def __init__(self):
        self.seen = []

    def on_step(self, state):
        self.seen.append((state.step, state.extra["growth"]["resolution"], state.extra["growth"]["alpha"]))


class StopAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_step(self, state):
        if state.step == self.step:
            raise KeyboardInterrupt  # the run is killed here, after the step's checkpoint would be due


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sb = b.state_dict()
    return all(torch.equal(v, sb[k]) if torch.is_tensor(v) else v == sb[k] for k, v in a.state_dict().items())


@pytest.mark.parametrize("arch", sorted(GROWING))
def test_a_run_stopped_mid_fade_resumes_bit_for_bit(arch, tmp_path):
    cfg = config(arch)
    plan = schedule(cfg)
    kill = 8  # mid-fade: step 0 is 4 px stable, 1-4 fade in 8 px, 5 is stable, 6-9 fade in 16 px
    assert plan.at(kill - 1).fading and plan.at(kill).fading and plan.at(kill).resolution == 16

    torch.manual_seed(0)
    straight, seen = build_state(cfg), Stages()
    train(straight, batches(cfg, 0), cfg, [seen])

    torch.manual_seed(0)
    first = build_state(cfg)
    with pytest.raises(KeyboardInterrupt):
        train(first, batches(cfg, 0), cfg, [StopAt(kill)])
    assert first.extra["growth"] == {"resolution": 16, "alpha": plan.at(kill - 1).alpha}
    save_checkpoint(tmp_path / "c.pt", to_checkpoint(first, cfg, [rng_state()]))
    ckpt = load_checkpoint(tmp_path / "c.pt")
    assert ckpt["sampler"]["position"] == batch_position(kill, cfg) == sum(plan.batches(s) for s in range(kill))

    torch.manual_seed(12345)  # the checkpoint's RNG must win over whatever the new process holds
    resumed, rest = restore(build_state(cfg), ckpt, rank=0), Stages()
    assert (resumed.G_ema.stage_resolution if hasattr(resumed.G_ema, "stage_resolution")
            else resumed.G_ema.synthesis.stage_resolution) == 16
    train(resumed, batches(cfg, kill), cfg, [rest])
    assert rest.seen == seen.seen[kill:]  # the same stages and alphas, step for step
    assert resumed.images_seen == straight.images_seen and resumed.extra["growth"] == straight.extra["growth"]
    for a, b in [(straight.G, resumed.G), (straight.D, resumed.D), (straight.G_ema, resumed.G_ema)]:
        assert _same(a, b)
    assert torch.equal(straight.opt_g.state_dict()["state"][0]["exp_avg"],
                       resumed.opt_g.state_dict()["state"][0]["exp_avg"])
