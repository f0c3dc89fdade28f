"""FID cost on this CPU: feature extraction images/s per backbone, and the matrix square root of
2048-d statistics (this project's symmetric eigendecomposition vs scipy.linalg.sqrtm).

Inception runs with randomly initialised weights: speed depends on the architecture, not the values.
    .venv/bin/python benchmarks/fid_throughput.py [--n 2000] [--n-inception 100] [--dim 2048]
writes benchmarks/results/fid_throughput.{json,md}
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import scipy.linalg
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.report import table, write_report  # noqa: E402
from gan_core.metrics import backbone as domain  # noqa: E402
from gan_core.metrics.frechet import frechet_distance  # noqa: E402
from gan_core.metrics.inception import FIDInceptionV3  # noqa: E402


def images_per_s(extract, images: torch.Tensor, batch: int, repeats: int = 3) -> float:
    extract(images[:batch], batch)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        extract(images, batch)
        times.append(time.perf_counter() - t0)
    return len(images) / statistics.median(times)


def sqrt_times(d: int = 2048, repeats: int = 3) -> dict:
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((d, 2 * d)), rng.standard_normal((d, 2 * d))
    s1, s2 = a @ a.T / (2 * d), b @ b.T / (2 * d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    out = {}
    for name, fn in (("eigh (ganpipe)", lambda: frechet_distance(mu1, s1, mu2, s2)),
                     ("scipy sqrtm", lambda: scipy.linalg.sqrtm(s1 @ s2))):
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        out[name] = statistics.median(ts)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000, help="images through the domain classifier")
    ap.add_argument("--n-inception", type=int, default=100, help="images through Inception (299 px)")
    ap.add_argument("--dim", type=int, default=2048, help="feature dimension of the matrix square root")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    small = torch.rand(args.n, 1, 16, 16) * 2 - 1
    clf = domain.DomainClassifier(1, 10).eval()
    inc = FIDInceptionV3().eval()
    rows = {
        "domain-classifier (16x16)": images_per_s(lambda x, b: domain.extract(clf, x, b), small, min(500, args.n)),
        "inception-v3-fid (resize to 299)": images_per_s(inc.extract, small[:args.n_inception],
                                                         min(50, args.n_inception), repeats=2),
    }
    sq = sqrt_times(args.dim)
    result = {"feature_images_per_s": rows, "sqrt_2048_seconds": sq, "threads": torch.get_num_threads(),
              "torch": torch.__version__}
    lines = [f"# FID cost ({torch.get_num_threads()} threads)", ""]
    lines += table(["feature extraction", "images/s"], [[k, f"{v:.1f}"] for k, v in rows.items()])
    lines += [""] + table([f"{args.dim}-d Fréchet distance", "seconds"], [[k, f"{v:.3f}"] for k, v in sq.items()])
    write_report("fid_throughput", result, lines, args.out)
    return result


if __name__ == "__main__":
    main()
