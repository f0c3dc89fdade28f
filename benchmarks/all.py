"""`make bench`: every benchmark in one run and one combined report, side by side: the plain loop vs Ray
Train (1 and 2 workers), GFLOP/s and % of CPU peak per family and numeric mode, the default run's
orchestration breakdown beside the stack's own floor (stack_floor.py), FID feature extraction images/s per
backbone, and the local S3 store.

Sized to take about 15 minutes on 2 cores (families and the train loop are most of it); --quick is the
seconds-long version the tests run. serve_load is left out (`deploy up` twice and a 40 s kill test:
run it alone, benchmarks/serve_load.py).

    .venv/bin/python benchmarks/all.py [--quick | --small] [--skip orchestration,train,...] [--orchestration-from WS]
writes each benchmark's NAME.{json,md} and bench.{json,md} (the combined report) in benchmarks/results/
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import (family_throughput, fid_throughput, orchestration, s3_store, stack_floor,  # noqa: E402
                        train_throughput)
from benchmarks.report import table, write_report  # noqa: E402

# name -> arguments per profile: full (`make bench`), small (a machine shared with other work: fewer steps,
# a 1024-d square root) and quick (the tests: seconds, numbers that mean nothing)
SIZES = {
    "family": {"full": ["--steps", "120", "--batch", "64"],
               "small": ["--steps", "40", "--batch", "64", "--flop-steps", "4"],
               "quick": ["--steps", "4", "--batch", "8", "--resolution", "8", "--archs", "dcgan", "--flop-steps", "1",
                         "--modes", "fp32,bf16cl", "--quick-peak"]},
    "train": {"full": ["--steps", "400", "--batch", "64", "--workers", "1,2", "--no-one-thread"],
              "small": ["--steps", "200", "--batch", "64", "--workers", "1,2", "--no-one-thread", "--modes", "fp32,bf16cl"],
              "quick": ["--steps", "8", "--batch", "8", "--resolution", "8", "--channels", "1", "--workers", "1",
                        "--no-one-thread", "--modes", "fp32", "--quick-peak"]},
    "fid": {"full": ["--n", "2000", "--n-inception", "60"],
            "small": ["--n", "1000", "--n-inception", "20", "--dim", "1024"],
            "quick": ["--n", "64", "--n-inception", "2", "--dim", "64"]},
    "s3": {"full": [1, 1.0], "small": [1, 0.25], "quick": [1, 0.02]},
    "orchestration": {"full": [], "small": [],
                      "quick": ["train.steps=8", "train.log_every=2", "train.checkpoint_every=8", "train.num_workers=1",
                                "eval.n_fake=100", "eval.batch_size=100", "eval.every=0"]},
    "floor": {"full": [], "small": [], "quick": ["--workers", "1"]},
}


FILES = {"family": "family_throughput", "train": "train_throughput", "fid": "fid_throughput", "s3": "s3_store",
         "orchestration": "orchestration", "floor": "stack_floor"}


def run(name: str, args: list, out: Path) -> dict:
    if name == "s3":
        return s3_store.main(*args, out=out)
    module = {"family": family_throughput, "train": train_throughput, "fid": fid_throughput,
              "orchestration": orchestration, "floor": stack_floor}[name]
    return module.main([str(a) for a in args] + ["--out", str(out)])


def training_section(r: dict) -> list[str]:
    return [f"## Training loop: plain PyTorch vs Ray Train ({r['steps']} steps, global batch {r['global_batch']}, "
            f"{r['model']})", ""] + table(
        ["path", "images/s", "vs plain", "GFLOP/s", "% of peak", "wall s (with start-up)"],
        [[k, f"{v['images_per_s']:.0f}", f"{v['ratio_vs_plain']:.2f}", f"{v['gflops']:.1f}",
          f"{100 * v['fraction_of_peak']:.1f}%", f"{v['wall_s']:.1f}"] for k, v in r["rows"].items()])


def family_section(r: dict) -> list[str]:
    return [f"## Families ({r['resolution']} px, {r.get('channels', 1)} channel(s), batch {r['global_batch']}, "
            f"{r['threads']} threads; fp32 peak {r['cpu_peak']})", ""] + table(
        ["family", "mode", "images/s", "vs fp32", "MFLOP/image/step", "GFLOP/s", "% of peak"],
        [[v["family"], v["mode"], f"{v['images_per_s']:.0f}", f"{v['speed_vs_fp32']:.2f}",
          f"{v['flops_per_image'] / 1e6:.1f}", f"{v['gflops']:.1f}", f"{100 * v['fraction_of_peak']:.1f}%"]
         for v in r["rows"].values()])


def orchestration_section(r: dict) -> list[str]:
    run = " ".join(r["overrides"]) or "(params.yaml as is)"
    return [f"## Orchestration of `ganpipe run {run}`: {r['wall_s']:.0f} s wall ({r.get('wall_of', 'process')}), "
            "orchestration "
            f"{r['orchestration_s']:.0f} s = {100 * r['orchestration_fraction']:.0f}% (target <= 10%)", ""] + table(
        ["part", "seconds", "% of wall"],
        [[k, f"{v:.1f}", f"{100 * v / r['wall_s']:.1f}%"] for k, v in r["parts_s"].items()])


def floor_section(r: dict) -> list[str]:
    lines = [f"## The stack's floor: {r['floor_s']:.1f} s of any run ({r['workers']} Ray Train workers, empty loop)", ""]
    lines += table(["part", "seconds"], [[k, f"{v:.1f}"] for k, v in r["parts_s"].items()])
    if "share_of_default_run" in r:
        lines += ["", f"Against the default run above (its training loop, prepare and evaluation), this floor alone "
                      f"is {100 * r['share_of_default_run']:.0f}% of the wall time: the lowest orchestration share "
                      "this stack reaches on this machine."]
    return lines


def floor_share(floor: dict, orch: dict) -> float:
    """floor / (floor + the default run's own work): its loop, prepare and evaluation."""
    work = sum(v for k, v in orch["parts_s"].items() if k.startswith(("training loop", "prepare", "evaluation")))
    return floor["floor_s"] / (floor["floor_s"] + work)


def fid_section(r: dict) -> list[str]:
    return [f"## FID feature extraction ({r['threads']} threads)", ""] + table(
        ["backbone", "images/s"], [[k, f"{v:.1f}"] for k, v in r["feature_images_per_s"].items()])


def s3_section(r: dict) -> list[str]:
    cols = ["start_s", "put_8MiB_MiBps", "get_8MiB_MiBps", "rss_after_mb"]
    return ["## Local S3 store", ""] + table(["store"] + cols, [[k] + [v[c] for c in cols] for k, v in r.items()])


SECTIONS = {"train": training_section, "family": family_section, "orchestration": orchestration_section,
            "floor": floor_section, "fid": fid_section, "s3": s3_section}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks that everything runs, in seconds")
    ap.add_argument("--small", action="store_true", help="fewer steps, for a machine shared with other work")
    ap.add_argument("--reuse", default="", help="comma-separated: take these from NAME.json in --out, run nothing")
    ap.add_argument("--orchestration-from", type=Path, metavar="WS",
                    help="the breakdown of the newest run of workspace WS instead of a new `ganpipe run`")
    ap.add_argument("--orchestration-wall", type=float, help="with --orchestration-from: that run's wall seconds")
    ap.add_argument("--skip", default="", help=f"comma-separated, of {','.join(SIZES)}")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    skip = {s for s in args.skip.split(",") if s}
    if unknown := skip - set(SIZES):
        ap.error(f"--skip: unknown benchmark(s) {sorted(unknown)}; known: {sorted(SIZES)}")
    results, seconds = {}, {}
    profile = "quick" if args.quick else "small" if args.small else "full"
    for name, sizes in SIZES.items():
        if name in skip:
            continue
        t0 = time.perf_counter()
        given = name == "orchestration" and args.orchestration_from
        if name in args.reuse.split(","):
            results[name] = json.loads((args.out / f"{FILES[name]}.json").read_text())
            continue
        wall = ["--wall", args.orchestration_wall] if args.orchestration_wall else []
        results[name] = run(name, ["--workspace", args.orchestration_from, *wall] if given else sizes[profile], args.out)
        seconds[name] = time.perf_counter() - t0
    if "floor" in results and "orchestration" in results:
        results["floor"]["share_of_default_run"] = floor_share(results["floor"], results["orchestration"])
    lines = [f"# ganpipe benchmarks ({profile} sizes{': too small to mean anything' if args.quick else ''})", "",
             f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; each "
             "benchmark's own file in this folder has the details.", ""]
    for name in SECTIONS:
        if name in results:
            lines += SECTIONS[name](results[name]) + [""]
    lines += ["Seconds per benchmark: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items())
              + (f"; taken from an earlier run's files: {args.reuse}" if args.reuse else "")
              + (f"; orchestration read from the run in {args.orchestration_from}" if args.orchestration_from else "")]
    print("\n" + "=" * 100)
    write_report("bench", {"results": results, "seconds": seconds, "profile": profile}, lines, args.out)
    return {"results": results, "seconds": seconds}


if __name__ == "__main__":
    main()
