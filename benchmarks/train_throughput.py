"""Training throughput: plain single-process PyTorch vs the product's Ray Train path (1 and 2 workers).

Same DCGAN, same global batch, same data (the digits prepared at 32 x 32 RGB by default: the issue's
size), in fp32 and with the numeric modes of family_throughput.py (channels-last, bf16 autocast). Throughput is the train loop's own
images/s, measured inside the loop over log windows after a warm-up window, so Ray's start-up is
reported separately (wall time) and not mixed into the steady-state ratio. The Ray numbers come
from flows.stages.train.run_training exactly as the pipeline runs it, read back from MLflow.

Achieved GFLOP/s = FLOPs per image (torch's FlopCounterMode over one fp32 train step) x images/s; the
peak is benchmarks/peak.py's (the larger of the nominal and a measured fp32 convolution rate).

    .venv/bin/python benchmarks/train_throughput.py [--steps 800] [--batch 64] [--resolution 32] [--channels 3]
                                                    [--workers 1,2] [--modes fp32,cl,bf16cl] [--no-one-thread]
writes benchmarks/results/train_throughput.{json,md}
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.peak import cpu_peak  # noqa: E402
from benchmarks.report import table, write_report  # noqa: E402
from flows.ops.settings import Settings, configure_environment  # noqa: E402
from gan_core.config import PipelineConfig  # noqa: E402
from gan_core.batches import ShardedBatches  # noqa: E402
from gan_core.data import load_prepared  # noqa: E402
from gan_core.state import Callback  # noqa: E402
from gan_core.train import build_state, train  # noqa: E402

# numeric modes: train settings on top of a family's (family_throughput.py uses them too)
MODES = {"fp32": {}, "cl": {"channels_last": True}, "bf16cl": {"bf16": True, "channels_last": True}}


@dataclass(frozen=True)
class Shape:
    steps: int
    batch: int
    resolution: int = 32
    channels: int = 3


def config(sh: Shape, workers: int, threads: int = 0, mode: str = "fp32") -> PipelineConfig:
    """Four log windows or more (the first is the warm-up the steady rate drops), at most every 50 steps."""
    return PipelineConfig.from_dict({
        "data": {"resolution": sh.resolution, "channels": sh.channels},
        "train": {"steps": sh.steps, "batch_size": sh.batch, "num_workers": workers, "threads_per_worker": threads,
                  "log_every": max(1, min(50, sh.steps // 4)), "checkpoint_every": sh.steps, **MODES[mode]}})


def steady(rates: list[float]) -> float:
    """Median images/s over log windows, the first (warm-up) window dropped."""
    return statistics.median(rates[1:] if len(rates) > 1 else rates)


class Rates(Callback):
    def __init__(self):
        self.rates: list[float] = []

    def on_log(self, state, metrics):
        self.rates.append(metrics["images_per_s"])


def plain(data_dir: Path, sh: Shape, threads: int, mode: str = "fp32") -> dict:
    torch.set_num_threads(threads)
    cfg = config(sh, 1, threads, mode)
    torch.manual_seed(0)
    state = build_state(cfg)
    data = load_prepared(data_dir)
    batches = ShardedBatches({"images": torch.from_numpy(data.images)}, sh.batch, 0, 1, 0)
    rec = Rates()
    t0 = time.perf_counter()
    train(state, batches.from_step(0), cfg, [rec])
    return {"images_per_s": steady(rec.rates), "wall_s": time.perf_counter() - t0, "threads": threads, "mode": mode}


def through_ray(s: Settings, data_dir: Path, sh: Shape, workers: int, threads: int = 0, mode: str = "fp32") -> dict:
    from flows.registry.tracking import client, experiment_id, start_run
    from flows.stages.train import run_training

    cfg = config(sh, workers, threads, mode)
    c = client(s.mlflow_uri)
    run_id = start_run(c, experiment_id(c, "bench", s.mlflow_artifacts.as_uri()), f"ray-{workers}-{mode}", cfg, {})
    t0 = time.perf_counter()
    run_training(s, cfg, str(data_dir), f"bench-{workers}w-{int(t0)}", run_id, {})
    wall = time.perf_counter() - t0
    rates = [m.value for m in sorted(c.get_metric_history(run_id, "train/images_per_s"), key=lambda m: m.step)]
    return {"images_per_s": steady(rates), "wall_s": wall, "workers": workers, "mode": mode,
            "threads_per_worker": threads or max(1, (os.cpu_count() or 1) // workers)}


def flops_per_image(sh: Shape) -> float:
    cfg = config(sh, 1)
    state = build_state(cfg)
    x = torch.randint(0, 255, (sh.batch, sh.channels, sh.resolution, sh.resolution), dtype=torch.uint8)
    with FlopCounterMode(display=False) as fc:
        state.family.step(state, [{"images": x}], cfg.train)
    return fc.get_total_flops() / sh.batch


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--workers", default="1,2", help="Ray Train worker counts to compare with the plain loop")
    ap.add_argument("--modes", default=",".join(MODES),
                    help="numeric modes: each for the plain loop and for Ray Train at the largest worker count")
    ap.add_argument("--no-one-thread", action="store_true", help="skip the one-thread pair of rows")
    ap.add_argument("--quick-peak", action="store_true", help="a tiny peak probe (the tests)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    sh = Shape(args.steps, args.batch, args.resolution, args.channels)

    tmp = Path(tempfile.mkdtemp(prefix="ganpipe-bench-"))
    s = Settings(workspace=tmp, home=tmp / "home", mlflow_uri=f"sqlite:///{tmp}/home/mlflow.db",
                 ray_address=None, dvc_remote="none", dvc_remote_url=None, ray_storage=str(tmp / "home" / "ray_results"))
    configure_environment(s)
    from flows.stages.prepare import prepare

    data_dir = Path(prepare(s, config(sh, 1))["path"])
    cores, modes, workers = os.cpu_count() or 1, args.modes.split(","), [int(w) for w in args.workers.split(",")]
    # the comparison: every core busy with training, in and out of Ray; fp32 at every worker
    # count, the other modes at the largest (the product's default, 2)
    rows = {("plain" if m == "fp32" else f"plain_{m}"): plain(data_dir, sh, cores, m) for m in modes}
    for w in workers:
        for m in (modes if w == max(workers) else ["fp32"]):
            rows[f"ray_{w}w" + ("" if m == "fp32" else f"_{m}")] = through_ray(s, data_dir, sh, w, mode=m)
    # one training thread each, leaving cores for Ray's daemons: the overhead of the Ray path
    # itself, without CPU contention from Ray's own processes (which dominates on 2 cores)
    if cores > 1 and not args.no_one_thread:
        rows["plain_1thread"] = plain(data_dir, sh, 1)
        rows["ray_1w_1thread"] = through_ray(s, data_dir, sh, 1, threads=1)

    fpi = flops_per_image(sh)
    torch.set_num_threads(cores)
    peak = cpu_peak(args.quick_peak)
    for name, r in rows.items():
        base = rows["plain_1thread" if name.endswith("1thread") else ("plain" if r["mode"] == "fp32" else f"plain_{r['mode']}")]
        r["ratio_vs_plain"] = r["images_per_s"] / base["images_per_s"]
        r["gflops"] = fpi * r["images_per_s"] / 1e9
        r["fraction_of_peak"] = r["gflops"] / peak.gflops
    model = f"dcgan {sh.resolution}x{sh.resolution} {'grey' if sh.channels == 1 else 'RGB'}"
    result = {"steps": sh.steps, "global_batch": sh.batch, "model": model, "flops_per_image": fpi,
              "cpu_peak_gflops": peak.gflops, "cpu_peak": peak.describe(), "peak": peak.as_dict(),
              "torch": torch.__version__, "python": platform.python_version(), "rows": rows,
              "target_fraction_of_peak": 0.35,
              "note": "ratio_vs_plain: against the plain loop in the same mode (*_1thread: against plain_1thread)"}
    if "ray_2w" in rows:
        result["ray_2w_meets_target"] = rows["ray_2w"]["fraction_of_peak"] >= 0.35
    lines = [f"# Train throughput ({sh.steps} steps, global batch {sh.batch}, {model})", "",
             f"CPU fp32 peak: {peak.describe()}; {fpi / 1e6:.2f} MFLOP per image per step (fp32 step; bf16 rows "
             "are counted with the same FLOPs)", "",
             "ratio vs plain: against the plain loop in the same mode; rows ending in _1thread against plain_1thread "
             "(one core left to Ray's daemons).", ""]
    lines += table(["path", "images/s (steady)", "ratio vs plain", "GFLOP/s", "% of peak", "wall s (incl. start-up)"],
                   [[name, f"{r['images_per_s']:.0f}", f"{r['ratio_vs_plain']:.3f}", f"{r['gflops']:.2f}",
                     f"{100 * r['fraction_of_peak']:.1f}%", f"{r['wall_s']:.1f}"] for name, r in rows.items()])
    write_report("train_throughput", result, lines, args.out)
    return result


if __name__ == "__main__":
    main()
