"""train.deterministic (issue 17, item 6): the flag sets PyTorch's determinism switches in the training
process, leaves the params hash of configs without it unchanged, and the lineage states when
bit-exact resume is not promised. On the CPU the flag changes neither the weights nor (measurably) the
speed: `python tests/test_determinism.py [steps]` prints the step time on and off."""
import os
import sys
import time

import torch

from conftest import tiny_config
from gan_core import determinism
from gan_core.config import PipelineConfig
from gan_core.batches import ShardedBatches
from gan_core.train import build_state, train


def _flags() -> tuple:
    return (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
            torch.backends.cudnn.benchmark, os.environ.get("CUBLAS_WORKSPACE_CONFIG"))


def test_the_flag_sets_the_switches_and_off_puts_them_back(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = _flags()
    try:
        determinism.apply(True)
        assert _flags() == (True, True, False, ":4096:8")
        determinism.apply(False)
        assert _flags()[:2] == (False, False)
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[1], before[2]


def test_default_configs_keep_their_params_hash_and_the_flag_changes_it():
    cfg = PipelineConfig()
    assert "deterministic" not in cfg.to_dict()["train"] and cfg.train.deterministic is False
    on = PipelineConfig.from_dict({"train": {"deterministic": True}})
    assert on.to_dict()["train"]["deterministic"] is True and on.params_hash() != cfg.params_hash()
    assert PipelineConfig.from_dict(on.to_dict()) == on


def test_the_lineage_says_when_bit_exact_resume_is_not_promised():
    assert determinism.statement(False, use_gpu=True).startswith("not guaranteed")
    assert "train.deterministic=false" in determinism.statement(False, use_gpu=True)
    assert determinism.statement(True, use_gpu=True).startswith("bit-exact")
    assert determinism.statement(False, use_gpu=False).startswith("bit-exact")  # CPU kernels


def run(deterministic: bool, steps: int, arch: str = "dcgan", **sections) -> tuple[dict, float]:
    """Weights after `steps` steps and seconds per step, with the flag applied as the worker does."""
    before = torch.are_deterministic_algorithms_enabled()
    cfg = tiny_config(model={"arch": arch}, train={"steps": steps, "log_every": steps, "checkpoint_every": steps,
                                                   "deterministic": deterministic}, **sections)
    try:
        determinism.apply(cfg.train.deterministic)
        torch.manual_seed(0)
        state = build_state(cfg)
        images = torch.randint(0, 256, (64, 1, cfg.data.resolution, cfg.data.resolution), dtype=torch.uint8,
                               generator=torch.Generator().manual_seed(0))
        t0 = time.perf_counter()
        train(state, ShardedBatches({"images": images}, cfg.train.batch_size, 0, 1, 0).from_step(0), cfg, [])
        per_step = (time.perf_counter() - t0) / steps
    finally:
        torch.use_deterministic_algorithms(before)
        torch.backends.cudnn.deterministic = False
    return {k: v.clone() for k, v in state.G.state_dict().items()}, per_step


def test_on_the_cpu_the_flag_changes_no_weight():
    on, _ = run(True, 4)
    off, _ = run(False, 4)
    assert on.keys() == off.keys() and all(torch.equal(on[k], off[k]) for k in on)


if __name__ == "__main__":  # the cost on this CPU: dcgan at 16 px, batch 64, default widths, medians of 3
    import statistics

    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    times = {True: [], False: []}
    for flag in (False, True) * 3:  # interleaved: both see the same background load
        before = torch.are_deterministic_algorithms_enabled()
        c = PipelineConfig.from_dict({"data": {"resolution": 16, "channels": 1}, "model": {"arch": "dcgan"},
                                      "train": {"steps": steps, "batch_size": 64, "num_workers": 1, "log_every": steps,
                                                "checkpoint_every": steps, "deterministic": flag}})
        determinism.apply(flag)
        torch.manual_seed(0)
        state = build_state(c)
        images = torch.randint(0, 256, (256, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        t0 = time.perf_counter()
        train(state, ShardedBatches({"images": images}, 64, 0, 1, 0).from_step(0), c, [])
        times[flag].append((time.perf_counter() - t0) / steps)
        torch.use_deterministic_algorithms(before)
    for flag, ts in times.items():
        print(f"deterministic={flag}: {1000 * statistics.median(ts):.2f} ms/step (median of {len(ts)}: "
              f"{', '.join(f'{1000 * t:.2f}' for t in ts)})")
