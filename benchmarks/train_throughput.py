"""Training throughput: plain single-process PyTorch vs the product's Ray Train path (1 and 2 workers).

Same DCGAN, same global batch, same data (prepared digits). Throughput is the train loop's own
images/s, measured inside the loop over log windows after a warm-up window, so Ray's start-up is
reported separately (wall time) and not mixed into the steady-state ratio. The Ray numbers come
from flows.stages.train.run_training exactly as the pipeline runs it, read back from MLflow.

Achieved GFLOP/s = FLOPs per image (torch's FlopCounterMode over one train step) x images/s.
Peak = cores x clock x fp32 FLOPs/cycle/core, from /proc/cpuinfo: 2 FMA units x vector lanes x 2
(AVX-512: 64, AVX2: 32). A VM's reported clock is nominal, so treat the fraction as approximate.

    .venv/bin/python benchmarks/train_throughput.py [--steps 800] [--batch 64] [--workers 1,2] [--no-one-thread]
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
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.report import table, write_report  # noqa: E402
from flows.ops.settings import Settings, configure_environment  # noqa: E402
from gan_core.config import PipelineConfig  # noqa: E402
from gan_core.batches import ShardedBatches  # noqa: E402
from gan_core.data import load_prepared  # noqa: E402
from gan_core.state import Callback  # noqa: E402
from gan_core.train import build_state, train  # noqa: E402

def config(steps: int, batch: int, workers: int, threads: int = 0) -> PipelineConfig:
    """Four log windows or more (the first is the warm-up the steady rate drops), at most every 50 steps."""
    return PipelineConfig.from_dict({"train": {"steps": steps, "batch_size": batch, "num_workers": workers,
                                               "threads_per_worker": threads,
                                               "log_every": max(1, min(50, steps // 4)), "checkpoint_every": steps}})


def steady(rates: list[float]) -> float:
    """Median images/s over log windows, the first (warm-up) window dropped."""
    return statistics.median(rates[1:] if len(rates) > 1 else rates)


class Rates(Callback):
    def __init__(self):
        self.rates: list[float] = []

    def on_log(self, state, metrics):
        self.rates.append(metrics["images_per_s"])


def plain(data_dir: Path, steps: int, batch: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    cfg = config(steps, batch, 1, threads)
    torch.manual_seed(0)
    state = build_state(cfg)
    data = load_prepared(data_dir)
    batches = ShardedBatches({"images": torch.from_numpy(data.images)}, batch, 0, 1, 0)
    rec = Rates()
    t0 = time.perf_counter()
    train(state, batches.from_step(0), cfg, [rec])
    return {"images_per_s": steady(rec.rates), "wall_s": time.perf_counter() - t0, "threads": threads}


def through_ray(s: Settings, data_dir: Path, steps: int, batch: int, workers: int, threads: int = 0) -> dict:
    from flows.registry.tracking import client, experiment_id, start_run
    from flows.stages.train import run_training

    cfg = config(steps, batch, workers, threads)
    c = client(s.mlflow_uri)
    run_id = start_run(c, experiment_id(c, "bench", s.mlflow_artifacts.as_uri()), f"ray-{workers}", cfg, {})
    t0 = time.perf_counter()
    run_training(s, cfg, str(data_dir), f"bench-{workers}w-{int(t0)}", run_id, {})
    wall = time.perf_counter() - t0
    rates = [m.value for m in sorted(c.get_metric_history(run_id, "train/images_per_s"), key=lambda m: m.step)]
    return {"images_per_s": steady(rates), "wall_s": wall, "workers": workers,
            "threads_per_worker": threads or max(1, (os.cpu_count() or 1) // workers)}


def flops_per_image(batch: int) -> float:
    cfg = config(1, batch, 1)
    state = build_state(cfg)
    x = torch.randint(0, 255, (batch, 1, 16, 16), dtype=torch.uint8)
    with FlopCounterMode(display=False) as fc:
        state.family.step(state, [{"images": x}], cfg.train)
    return fc.get_total_flops() / batch


def cpu_peak_gflops() -> tuple[float, str]:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = next((ln for ln in info.splitlines() if ln.startswith("flags")), "")
    mhz = [float(ln.split(":")[1]) for ln in info.splitlines() if ln.startswith("cpu MHz")]
    ghz = (max(mhz) / 1000) if mhz else 2.0
    lanes, isa = (16, "AVX-512") if "avx512f" in flags else ((8, "AVX2+FMA") if "fma" in flags else (4, "SSE"))
    per_cycle = lanes * 2 * 2  # lanes x FMA (2 FLOPs) x 2 FMA units
    cores = os.cpu_count() or 1
    model = next((ln.split(":")[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "?")
    return cores * ghz * per_cycle, f"{cores} cores x {ghz:.2f} GHz x {per_cycle} FLOP/cycle ({isa}; {model})"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", default="1,2", help="Ray Train worker counts to compare with the plain loop")
    ap.add_argument("--no-one-thread", action="store_true", help="skip the one-thread pair of rows")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="ganpipe-bench-"))
    s = Settings(workspace=tmp, home=tmp / "home", mlflow_uri=f"sqlite:///{tmp}/home/mlflow.db",
                 ray_address=None, dvc_remote="none", dvc_remote_url=None, ray_storage=str(tmp / "home" / "ray_results"))
    configure_environment(s)
    from flows.stages.prepare import prepare

    data_dir = Path(prepare(s, config(1, args.batch, 1))["path"])
    cores = os.cpu_count() or 1
    # the comparison: every core busy with training, in and out of Ray
    rows = {"plain": plain(data_dir, args.steps, args.batch, cores)}
    for w in (int(w) for w in args.workers.split(",")):
        rows[f"ray_{w}w"] = through_ray(s, data_dir, args.steps, args.batch, w)
    # one training thread each, leaving cores for Ray's daemons: the overhead of the Ray path
    # itself, without CPU contention from Ray's own processes (which dominates on 2 cores)
    if cores > 1 and not args.no_one_thread:
        rows["plain_1thread"] = plain(data_dir, args.steps, args.batch, 1)
        rows["ray_1w_1thread"] = through_ray(s, data_dir, args.steps, args.batch, 1, threads=1)

    fpi = flops_per_image(args.batch)
    peak, peak_desc = cpu_peak_gflops()
    for name, r in rows.items():
        base = rows["plain_1thread" if name.endswith("1thread") else "plain"]["images_per_s"]
        r["ratio_vs_plain"] = r["images_per_s"] / base
        r["gflops"] = fpi * r["images_per_s"] / 1e9
        r["fraction_of_peak"] = r["gflops"] / peak
    result = {"steps": args.steps, "global_batch": args.batch, "model": "dcgan 16x16 (z 64, widths 64)",
              "flops_per_image": fpi, "cpu_peak_gflops": peak, "cpu_peak": peak_desc, "torch": torch.__version__,
              "python": platform.python_version(), "rows": rows, "target_ray_1w_ratio": 0.97,
              "ray_1w_meets_target": rows["ray_1w"]["ratio_vs_plain"] >= 0.97 if "ray_1w" in rows else None,
              "note": "ratio_vs_plain of *_1thread rows is against plain_1thread"}
    lines = [f"# Train throughput ({args.steps} steps, global batch {args.batch}, {result['model']})", "",
             f"CPU peak: {peak:.0f} GFLOP/s = {peak_desc}; {fpi / 1e6:.2f} MFLOP per image per step", "",
             "Rows ending in _1thread compare against plain_1thread (one core left to Ray's daemons).", ""]
    lines += table(["path", "images/s (steady)", "ratio vs plain", "GFLOP/s", "% of peak", "wall s (incl. start-up)"],
                   [[name, f"{r['images_per_s']:.0f}", f"{r['ratio_vs_plain']:.3f}", f"{r['gflops']:.2f}",
                     f"{100 * r['fraction_of_peak']:.1f}%", f"{r['wall_s']:.1f}"] for name, r in rows.items()])
    write_report("train_throughput", result, lines, args.out)
    return result


if __name__ == "__main__":
    main()
