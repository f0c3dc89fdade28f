"""What differential privacy costs and buys on the default data (digits 16x16, dcgan): FID of DP-SGD
runs at two budgets beside a non-DP run, and a membership-inference attack's AUC (D's score on the
images it trained on vs held-out ones) on an overfit non-DP model vs a DP one. Reported, not asserted.

    .venv/bin/python drills/privacy_audit.py [--steps 400] [--budgets 10 50] [--mia-steps 600] [--mia-n 128] [--width 64]

Runs gan_core directly (no Ray/MLflow): the same build_state/make_private/train the pipeline's
worker calls, and the pipeline's domain-classifier FID (the prepared dataset's evaluator).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from flows.data.sources import read_builtin
from gan_core.config import PipelineConfig
from gan_core.batches import ShardedBatches
from gan_core.data import normalise_images, to_float, write_prepared
from gan_core.metrics.evaluator import build_evaluator, load_evaluator
from gan_core.privacy import KEY, make_private
from gan_core.train import build_state, train

HELDOUT = 200  # the last rows: never trained on; the attack's non-members


def config(steps: int, batch: int, privacy: dict | None, width: int = 64) -> PipelineConfig:
    d = {"model": {"arch": "dcgan", "g_channels": width, "d_channels": width}, "train": {"steps": steps, "batch_size": batch, "num_workers": 1,
                                                "log_every": max(steps // 4, 1), "checkpoint_every": steps}}
    if privacy:
        d["privacy"] = {"enabled": True, **privacy}
    return PipelineConfig.from_dict(d)


def run(cfg: PipelineConfig, images: np.ndarray) -> tuple[object, float]:
    torch.manual_seed(cfg.train.seed)
    state = build_state(cfg)
    if cfg.privacy.enabled:
        make_private(state, cfg, len(images))
    t0 = time.perf_counter()
    batches = ShardedBatches({"images": torch.from_numpy(images)}, cfg.train.batch_size, 0, 1, cfg.train.seed)
    train(state, batches.from_step(0), cfg)
    return state, time.perf_counter() - t0


@torch.no_grad()
def d_scores(D, images: np.ndarray) -> np.ndarray:
    D.eval()
    out = D(to_float(torch.from_numpy(images)), None)
    D.train()
    return (out[0] if isinstance(out, tuple) else out).reshape(-1).numpy()


def mia_auc(state, members: np.ndarray, others: np.ndarray) -> float:
    """AUC of 'member' from D's logit: 0.5 is chance; 1.0 is D telling its training images apart."""
    s = np.concatenate([d_scores(state.D, members), d_scores(state.D, others)])
    return float(roc_auc_score(np.r_[np.ones(len(members)), np.zeros(len(others))], s))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--budgets", type=float, nargs=2, default=[10.0, 50.0])
    ap.add_argument("--mia-steps", type=int, default=600)
    ap.add_argument("--mia-n", type=int, default=128, help="training images of the overfit models")
    ap.add_argument("--n-fake", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--width", type=int, default=64, help="model.g_channels = d_channels (64: the default)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    _, (raw, labels) = read_builtin("digits")
    images = normalise_images(raw, 16, 1)
    order = np.random.default_rng(0).permutation(len(images))
    images, labels = images[order], labels[order]
    train_x, held = images[:-HELDOUT], images[-HELDOUT:]
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        write_prepared(Path(tmp), images, labels, {"name": "digits", "version": "built-in", "source": "audit"},
                       extras=lambda d, m: build_evaluator(d, images, labels, m))
        from gan_core.data import load_manifest
        evaluator = load_evaluator(Path(tmp), load_manifest(tmp))
        results = {"data": f"digits 16x16, {len(train_x)} train / {HELDOUT} held out", "fid": []}

        def fid(state) -> float:
            scores, _ = evaluator.evaluate(state.G_ema.eval(), args.n_fake, 1234, 500)
            return round(next(v for k, v in scores.items() if k.startswith("fid")), 3)

        for privacy in [None] + [{"target_epsilon": e} for e in args.budgets]:
            state, secs = run(config(args.steps, args.batch, privacy, args.width), train_x)
            rec = state.extra.get(KEY, {})
            row = {"dp": bool(privacy), "epsilon": rec.get("epsilon"), "sigma": rec.get("noise_multiplier"),
                   "steps": state.step, "fid": fid(state), "train_s": round(secs, 1)}
            results["fid"].append(row)
            print(json.dumps(row), flush=True)

        members = train_x[:args.mia_n]
        results["mia"] = []
        for privacy in (None, {"target_epsilon": args.budgets[0]}):
            state, secs = run(config(args.mia_steps, min(args.batch, args.mia_n // 2), privacy, args.width), members)
            rec = state.extra.get(KEY, {})
            row = {"dp": bool(privacy), "epsilon": rec.get("epsilon"), "train_images": args.mia_n,
                   "steps": state.step, "auc": round(mia_auc(state, members, held), 3), "train_s": round(secs, 1)}
            results["mia"].append(row)
            print(json.dumps(row), flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
