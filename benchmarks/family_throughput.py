"""Training throughput of the families side by side: images/s, FLOPs per image and % of CPU peak, in
each numeric mode: fp32 (the default), fp32 channels-last (`train.channels_last`) and bf16 autocast with
channels-last (`train.bf16`, `train.channels_last`).

One process, every core, the family's default settings (widths, optimiser, losses) at the same data
size and global batch; the loop's own images/s over log windows after a warm-up window. GFLOP/s counts
the fp32 step's FLOPs at every mode's rate, so a bf16 row can pass 100% of the fp32 peak. Growing
families are measured at their final resolution (start_resolution = data.resolution), the stage
that dominates a run; FLOPs per image come from torch's FlopCounterMode over steps of that stage
(averaged over 16 steps, a whole cycle of stylegan's lazy R1).

    .venv/bin/python benchmarks/family_throughput.py [--steps 120] [--batch 64] [--resolution 16] [--channels 1]
                                                     [--archs dcgan,wgan_gp,...] [--modes fp32,cl,bf16cl]
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
from benchmarks.peak import cpu_peak  # noqa: E402
from benchmarks.train_throughput import MODES, Rates, steady  # noqa: E402
from gan_core.config import PipelineConfig  # noqa: E402
from gan_core.batches import ShardedBatches  # noqa: E402
from gan_core.models import ARCHS  # noqa: E402
from gan_core.train import build_state, train  # noqa: E402

# the growing families measured at their final stage; stylegan v1 and v2 both
VARIANTS = {
    "dcgan": ("dcgan", {}),
    "wgan_gp": ("wgan_gp", {}),  # five critic batches a step, each with a double backward
    "biggan": ("biggan", {}),  # class-conditional: random labels of CLASSES classes
    "pix2pix": ("pix2pix", {}),  # paired images (images_b)
    "cyclegan": ("cyclegan", {}),  # unpaired images (images_b)
    "srgan": ("srgan", {"srgan": {"warmup_steps": 0}}),  # its GAN phase (x4: LR 4 px at 16 px)
    "aae": ("aae", {}),
    "stackgan": ("stackgan", {"stackgan": {"stage1_steps": 0}}),  # Stage II, the final one (text -> image)
    "progan": ("progan", {"progan": {"start_resolution": "final"}}),
    "stylegan-v1": ("stylegan", {"stylegan": {"version": "v1"}}),
    "stylegan-v2": ("stylegan", {"stylegan": {"version": "v2"}}),
}


CLASSES = 10


def config(arch: str, family: dict, steps: int, batch: int, resolution: int, log_every: int, channels: int = 1,
           mode: str = "fp32") -> PipelineConfig:
    family = {name: {k: resolution if v == "final" else v for k, v in opts.items()} for name, opts in family.items()}
    return PipelineConfig.from_dict({
        "model": {"arch": arch}, "data": {"resolution": resolution, "channels": channels}, "family": family,
        "train": {"steps": steps, "batch_size": batch, "num_workers": 1, "log_every": log_every,
                  "checkpoint_every": steps, **MODES[mode]}})


def data(n: int, resolution: int, channels: int = 1) -> dict[str, torch.Tensor]:
    """Random uint8 images, labels, second images (the image-to-image families) and captions (stackgan's
    two of 6 word ids per image): throughput does not depend on what the pixels or words are."""
    g = torch.Generator().manual_seed(0)
    shape = (n, channels, resolution, resolution)
    return {"images": torch.randint(0, 256, shape, dtype=torch.uint8, generator=g),
            "images_b": torch.randint(0, 256, shape, dtype=torch.uint8, generator=g),
            "labels": torch.randint(0, CLASSES, (n,), generator=g),
            "captions": torch.randint(2, 20, (n, 2, 6), generator=g), "caption_counts": torch.full((n,), 2)}


def measure(cfg: PipelineConfig, arrays: dict[str, torch.Tensor], log_every: int) -> dict:
    torch.manual_seed(0)
    state = build_state(cfg, n_classes=CLASSES)
    rec = Rates()
    t0 = time.perf_counter()
    train(state, ShardedBatches(arrays, cfg.train.batch_size, 0, 1, 0).from_step(0), cfg, [rec])
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


def flops_per_image(cfg: PipelineConfig, arrays: dict[str, torch.Tensor], steps: int) -> float:
    """Mean FLOPs per image per step over `steps` steps from step 0: a whole cycle of the lazy
    regularisers (stylegan's R1 every 16 steps) when steps is their interval."""
    torch.manual_seed(0)
    state = build_state(cfg, n_classes=CLASSES)
    batch = {k: v[:cfg.train.batch_size] for k, v in arrays.items()}
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
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--archs", default=",".join(VARIANTS))
    ap.add_argument("--modes", default=",".join(MODES), help=f"numeric modes, of {','.join(MODES)}")
    ap.add_argument("--flop-steps", type=int, default=16, help="steps FLOPs are averaged over (R1's interval)")
    ap.add_argument("--quick-peak", action="store_true", help="a tiny peak probe (the tests)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    log_every = max(1, args.steps // 4)
    arrays = data(max(1024, 4 * args.batch), args.resolution, args.channels)
    peak = cpu_peak(args.quick_peak)
    modes = args.modes.split(",")
    rows = {}
    for name in args.archs.split(","):
        arch, family = VARIANTS[name]
        fpi = flops_per_image(config(arch, family, args.steps, args.batch, args.resolution, log_every, args.channels),
                              arrays, args.flop_steps)
        for mode in modes:
            cfg = config(arch, family, args.steps, args.batch, args.resolution, log_every, args.channels, mode)
            row = measure(cfg, arrays, log_every)
            row.update(family=name, mode=mode, flops_per_image=fpi, gflops=fpi * row["images_per_s"] / 1e9,
                       summary=ARCHS[arch].summary)
            row["fraction_of_peak"] = row["gflops"] / peak.gflops
            row["speed_vs_fp32"] = row["images_per_s"] / rows[f"{name}/{modes[0]}"]["images_per_s"] \
                if mode != modes[0] else 1.0
            rows[f"{name}/{mode}"] = row
    base = next((r for r in rows.values() if r["family"] == "dcgan"), next(iter(rows.values())))["images_per_s"]
    for row in rows.values():
        row["speed_vs_dcgan"] = row["images_per_s"] / base
    result = {"steps": args.steps, "global_batch": args.batch, "resolution": args.resolution,
              "channels": args.channels, "modes": {m: MODES[m] for m in modes}, "rows": rows,
              "cpu_peak_gflops": peak.gflops, "cpu_peak": peak.describe(), "peak": peak.as_dict(),
              "torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads()}
    write_report("family_throughput", result, lines(result, modes[0]), args.out)
    return result


def lines(r: dict, base_mode: str) -> list[str]:
    px = f"{r['resolution']} px {'grey' if r['channels'] == 1 else 'RGB'}"
    out = [f"# Family throughput ({r['steps']} steps, global batch {r['global_batch']}, {px}, {r['threads']} threads)",
           "", f"CPU fp32 peak: {r['cpu_peak']}", "",
           "Modes: fp32 (default); cl = `train.channels_last=true`; bf16cl = `train.bf16=true train.channels_last=true`. "
           "GFLOP/s and % of peak count the fp32 step's FLOPs.", ""]
    out += table(["family", "mode", "images/s (steady)", f"vs {base_mode}", "MFLOP/image/step", "GFLOP/s", "% of peak"],
                 [[row["family"], row["mode"], f"{row['images_per_s']:.0f}", f"{row['speed_vs_fp32']:.2f}",
                   f"{row['flops_per_image'] / 1e6:.2f}", f"{row['gflops']:.2f}", f"{100 * row['fraction_of_peak']:.1f}%"]
                  for row in r["rows"].values()])
    return out


if __name__ == "__main__":
    main()
