"""A scaling model on paper for 1-64 GPUs (issue 17, item 7): data-parallel DDP, weak scaling (64 images per
GPU per step), per family. Nothing here runs on a GPU; every input is measured here or published:

    compute per step   FLOPs per image per step measured on the CPU (family_throughput.json, FlopCounterMode,
                       16 px grey) x 64 / an assumed achievable GPU rate: H100 SXM dense BF16 peak 989 TFLOP/s
                       (NVIDIA H100 datasheet) x 40% = 396 TFLOP/s, and never below --floor-ms per step (kernel
                       launches: these nets are small enough to be launch-bound on such a GPU)
    all-reduce bytes   fp32 gradients: 4 x (params of G + n_critic x params of D) per step, counted here
    all-reduce time    ring: 2(n-1)/n x bytes / link bandwidth + 2(n-1) x latency, once per all-reduce
                       (1 + n_critic per step); links: NVLink 4 within a node of 8 (900 GB/s bidirectional per
                       H100 = 450 GB/s each way), InfiniBand NDR across nodes (400 Gb/s = 50 GB/s per GPU, one
                       port per GPU as in a DGX H100); latency 5 us per ring step in a node, 10 us across
    efficiency         compute / (compute + all-reduce) with no overlap; compute / max(compute, all-reduce) when
                       DDP overlaps the all-reduce with the backward pass (its bucketing; Li et al., VLDB 2020)

    .venv/bin/python benchmarks/scaling_model.py [--families FILE] [--floor-ms 1.0]
writes benchmarks/results/scaling_model.{json,md}
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.report import table, write_report  # noqa: E402

GPUS = (1, 2, 4, 8, 16, 32, 64)
PER_GPU_BATCH = 64
PEAK_TFLOPS, ACHIEVABLE = 989.0, 0.40  # H100 SXM dense BF16; the assumed achievable share
NODE = 8  # GPUs per node (NVLink domain)
NVLINK_GBPS, IB_GBPS = 450.0, 50.0  # GB/s each way per GPU
LATENCY_S = {"nvlink": 5e-6, "ib": 10e-6}


def param_counts(name: str, resolution: int, channels: int = 1) -> tuple[int, int, int]:
    """(params of G, params of D, n_critic) of a family_throughput variant at its measured resolution."""
    from benchmarks.family_throughput import CLASSES, VARIANTS, config
    from gan_core.train import build_state

    arch, family = VARIANTS[name]
    cfg = config(arch, family, 1, PER_GPU_BATCH, resolution, 1, channels)
    state = build_state(cfg, n_classes=CLASSES)
    count = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)  # noqa: E731
    return count(state.G), count(state.D), cfg.train.n_critic


def allreduce_s(n: int, nbytes: float, calls: int) -> float:
    if n == 1:
        return 0.0
    link = "nvlink" if n <= NODE else "ib"
    bw = (NVLINK_GBPS if link == "nvlink" else IB_GBPS) * 1e9
    per_call = 2 * (n - 1) / n * (nbytes / calls) / bw + 2 * (n - 1) * LATENCY_S[link]
    return calls * per_call


def model(flops_per_image: float, g: int, d: int, n_critic: int, floor_s: float) -> list[dict]:
    compute = max(flops_per_image * PER_GPU_BATCH / (PEAK_TFLOPS * 1e12 * ACHIEVABLE), floor_s)
    nbytes = 4.0 * (g + n_critic * d)
    rows = []
    for n in GPUS:
        comm = allreduce_s(n, nbytes, 1 + n_critic)
        rows.append({"gpus": n, "compute_ms": compute * 1e3, "allreduce_mb": nbytes / 2**20, "allreduce_ms": comm * 1e3,
                     "efficiency_no_overlap": compute / (compute + comm),
                     "efficiency_overlap": compute / max(compute, comm),
                     "images_per_s_no_overlap": n * PER_GPU_BATCH / (compute + comm)})
    return rows


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--families", type=Path, default=ROOT / "benchmarks" / "results" / "family_throughput.json",
                    help="family_throughput.py's result: FLOPs per image per step")
    ap.add_argument("--floor-ms", type=float, default=1.0, help="least time a step takes (kernel launches)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    measured = json.loads(args.families.read_text())
    result = {"assumptions": {"per_gpu_batch": PER_GPU_BATCH, "peak_tflops": PEAK_TFLOPS, "achievable": ACHIEVABLE,
                              "gpus_per_node": NODE, "nvlink_GBps": NVLINK_GBPS, "ib_GBps": IB_GBPS,
                              "latency_s": LATENCY_S, "floor_ms": args.floor_ms,
                              "flops_from": str(args.families.name), "resolution": measured["resolution"]},
              "families": {}}
    lines = [f"# DDP scaling model, 1-{GPUS[-1]} H100s ({PER_GPU_BATCH} images per GPU per step, "
             f"{measured['resolution']} px {'grey' if measured.get('channels', 1) == 1 else 'RGB'} FLOPs as measured; {ACHIEVABLE:.0%} of {PEAK_TFLOPS:.0f} TFLOP/s; "
             f"step floor {args.floor_ms} ms)", ""]
    # one row per family: its FLOPs per image are the fp32 step's in every numeric mode
    for name, row in {r["family"]: r for r in measured["rows"].values()}.items():
        g, d, n_critic = param_counts(name, measured["resolution"], measured.get("channels", 1))
        rows = model(row["flops_per_image"], g, d, n_critic, args.floor_ms / 1e3)
        result["families"][name] = {"params_g": g, "params_d": d, "n_critic": n_critic,
                                    "flops_per_image": row["flops_per_image"], "rows": rows}
        lines += [f"## {name}: G {g / 1e6:.2f} M, D {d / 1e6:.2f} M params, "
                  f"{row['flops_per_image'] / 1e6:.0f} MFLOP per image per step", ""]
        lines += table(["GPUs", "compute ms", "all-reduce MB", "all-reduce ms", "efficiency (no overlap)",
                        "efficiency (overlap)", "images/s"],
                       [[r["gpus"], f"{r['compute_ms']:.2f}", f"{r['allreduce_mb']:.1f}", f"{r['allreduce_ms']:.2f}",
                         f"{r['efficiency_no_overlap']:.0%}", f"{r['efficiency_overlap']:.0%}",
                         f"{r['images_per_s_no_overlap']:.0f}"] for r in rows]) + [""]
    write_report("scaling_model", result, lines, args.out)
    return result


if __name__ == "__main__":
    main()
