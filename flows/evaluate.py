"""Stage 3, evaluate: FID of the candidate's EMA generator against the dataset's reference
statistics, a sample grid, reports/metrics.json (a DVC metric) and the same numbers in MLflow."""
from __future__ import annotations

from pathlib import Path

import torch

from flows.records import read_record, write_record
from flows.settings import Settings
from gan_core.checkpoint import CheckpointError, load_checkpoint, rebuild
from gan_core.config import PipelineConfig
from gan_core.data import load_manifest
from gan_core.images import make_grid, save_png
from gan_core.metrics.evaluator import load_evaluator
from gan_core.metrics.fid import generate, metric_name


def evaluate(settings: Settings, cfg: PipelineConfig) -> dict:
    training = read_record(settings.candidate_dir / "train.json", "train")
    ckpt = load_checkpoint(settings.candidate_dir / "checkpoint.pt")
    _, state = rebuild(ckpt)
    prepared = settings.prepared_dir(cfg.data.name)
    manifest = load_manifest(prepared)
    trained_on = ckpt["meta"].get("dataset_sha256")
    if trained_on != manifest["content_sha256"]:
        raise CheckpointError(f"{settings.candidate_dir / 'checkpoint.pt'}: trained on dataset {str(trained_on)[:12]}, "
                              f"but {prepared} holds {manifest['content_sha256'][:12]}; re-run train")
    e = cfg.eval
    evaluator = load_evaluator(prepared, manifest, e.backbone)
    torch.manual_seed(e.seed)
    scores, fingerprint = evaluator.evaluate(state.G_ema, e.n_fake, e.seed, e.batch_size)
    name = metric_name(e.n_fake)
    fid = scores[name]

    reports = settings.reports_dir
    grid_images = generate(state.G_ema, e.grid * e.grid, e.seed + 1, e.batch_size)
    provenance = {"run_name": training["run_name"], "step": training["step"], "generator": "G_ema",
                  "checkpoint_sha256": training["checkpoint_sha256"], "seed": e.seed + 1, name: fid}
    samples = save_png(reports / "samples.png", make_grid(grid_images, e.grid), provenance)
    metrics = {**{k: round(v, 6) for k, v in scores.items()}, "step": training["step"]}
    evaluation = {"metric": name, "fid": fid, "metrics": scores, "fingerprint": fingerprint.to_dict(),
                  "step": training["step"],
                  "checkpoint_sha256": training["checkpoint_sha256"], "run_name": training["run_name"],
                  "samples": str(samples)}
    write_record(reports / "metrics.json", metrics)
    write_record(reports / "evaluation.json", evaluation)
    if training.get("mlflow_run_id"):
        _log_to_mlflow(settings, training["mlflow_run_id"], evaluation, samples)
    return evaluation


def _log_to_mlflow(settings: Settings, run_id: str, evaluation: dict, samples: Path) -> None:
    from flows.tracking import client, log_metrics

    c = client(settings.mlflow_uri)
    log_metrics(c, run_id, evaluation["metrics"], evaluation["step"])
    c.log_artifact(run_id, str(samples), "samples")
    c.log_dict(run_id, evaluation, "evaluation.json")
    c.set_tag(run_id, "eval.fingerprint_id", evaluation["fingerprint"]["id"])
    c.set_tag(run_id, "eval.metric", evaluation["metric"])
