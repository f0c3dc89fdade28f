"""Training throughput of the families side by side: images/s, FLOPs per image and % of CPU peak.

One process, every core, the family's default settings (widths, optimiser, losses) at the same data
size and global batch; the loop's own images/s over log windows after a warm-up window. Growing
families are measured at their final resolution (start_resolution = data.resolution), the stage
that dominates a run; FLOPs per image come from torch's FlopCounterMode over steps of that stage
(averaged over 16 steps, a whole cycle of stylegan's lazy R1).

    .venv/bin/python benchmarks/family_throughput.py [--steps 120] [--batch 64] [--archs dcgan,progan,stylegan]
writes benchmarks/results/family_throughput.{json,md}
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.report import table, write_report  # noqa: E402
from benchmarks.train_throughput import Rates, cpu_peak_gflops, steady  # noqa: E402
from gan_core.config import PipelineConfig  # noqa: E402
from gan_core.batches import ShardedBatches  # noqa: E402
from gan_core.models import ARCHS  # noqa: E402
from gan_core.train import build_state, train  # noqa: E402

# the growing families measured at their final stage; stylegan v1 and v2 both
VARIANTS = {
    "dcgan": ("dcgan", {}),
    "progan": ("progan", {"progan": {"start_resolution": "final"}}),
    "stylegan-v1": ("stylegan", {"stylegan": {"version": "v1"}}),
    "stylegan-v2": ("stylegan", {"stylegan": {"version": "v2"}}),
}


def config(arch: str, family: dict, steps: int, batch: int, resolution: int, log_every: int) -> PipelineConfig:
    family = {name: {k: resolution if v == "final" else v for k, v in opts.items()} for name, opts in family.items()}
    return PipelineConfig.from_dict({
        "model": {"arch": arch}, "data": {"resolution": resolution, "channels": 1}, "family": family,
        "train": {"steps": steps, "batch_size": batch, "num_workers": 1, "log_every": log_every,
                  "checkpoint_every": steps}})


def data(n: int, resolution: int) -> torch.Tensor:
    """Random uint8 images: throughput does not depend on what the pixels show."""
    return torch.randint(0, 256, (n, 1, resolution, resolution), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(0))


def measure(cfg: PipelineConfig, images: torch.Tensor, log_every: int) -> dict:
    torch.manual_seed(0)
    state = build_state(cfg)
    rec = Rates()
    t0 = time.perf_counter()
    train(state, ShardedBatches({"images": images}, cfg.train.batch_size, 0, 1, 0).from_step(0), cfg, [rec])
    wall = time.perf_counter() - t0
    return {"images_per_s": steady(rec.rates), "wall_s": wall, "windows": len(rec.rates)}


class _Global:
    """FlopCounterMode's module tracker, reduced to its global total: the tracker's backward hooks
    break torch.autograd.grad inside a step (R1's and the gradient penalty's double backward)."""
    parents = {"Global"}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def flops_per_image(cfg: PipelineConfig, images: torch.Tensor, steps: int) -> float:
    """Mean FLOPs per image per step over `steps` steps from step 0: a whole cycle of the lazy
    regularisers (stylegan's R1 every 16 steps) when steps is their interval."""
    torch.manual_seed(0)
    state = build_state(cfg)
    batch = {"images": images[:cfg.train.batch_size]}
    fc = FlopCounterMode(display=False)
    fc.mod_tracker = _Global()
    with fc:
        for _ in range(steps):
            state.family.step(state, [batch] * cfg.train.n_critic, cfg.train)
            state.step += 1
    return fc.get_total_flops() / (cfg.train.batch_size * cfg.train.n_critic * steps)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--resolution", type=int, default=16)
    ap.add_argument("--archs", default=",".join(VARIANTS))
    ap.add_argument("--flop-steps", type=int, default=16, help="steps FLOPs are averaged over (R1's interval)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    log_every = max(1, args.steps // 4)
    images = data(max(1024, 4 * args.batch), args.resolution)
    peak, peak_desc = cpu_peak_gflops()
    rows = {}
    for name in args.archs.split(","):
        arch, family = VARIANTS[name]
        cfg = config(arch, family, args.steps, args.batch, args.resolution, log_every)
        row = measure(cfg, images, log_every)
        fpi = flops_per_image(cfg, images, args.flop_steps)
        row.update(flops_per_image=fpi, gflops=fpi * row["images_per_s"] / 1e9)
        row["fraction_of_peak"] = row["gflops"] / peak
        row["summary"] = ARCHS[arch].summary
        rows[name] = row
    base = rows.get("dcgan", next(iter(rows.values())))["images_per_s"]
    for row in rows.values():
        row["speed_vs_dcgan"] = row["images_per_s"] / base
    result = {"steps": args.steps, "global_batch": args.batch, "resolution": args.resolution, "rows": rows,
              "cpu_peak_gflops": peak, "cpu_peak": peak_desc, "torch": torch.__version__,
              "python": platform.python_version(), "threads": torch.get_num_threads()}
    lines = [f"# Family throughput ({args.steps} steps, global batch {args.batch}, {args.resolution} px grey, "
             f"{result['threads']} threads)", "", f"CPU peak: {peak:.0f} GFLOP/s = {peak_desc}", ""]
    lines += table(["family", "images/s (steady)", "vs dcgan", "MFLOP/image/step", "GFLOP/s", "% of peak"],
                   [[name, f"{r['images_per_s']:.0f}", f"{r['speed_vs_dcgan']:.2f}", f"{r['flops_per_image'] / 1e6:.2f}",
                     f"{r['gflops']:.2f}", f"{100 * r['fraction_of_peak']:.1f}%"] for name, r in rows.items()])
    write_report("family_throughput", result, lines, args.out)
    return result


if __name__ == "__main__":
    main()
