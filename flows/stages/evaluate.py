"""Stage 3, evaluate: FID of the candidate's EMA generator against the dataset's reference
statistics, a sample grid, reports/metrics.json (a DVC metric) and the same numbers in MLflow.

A generator whose output is not finite (NaN/Inf images, e.g. diverged weights) is not a failed run:
it gets an evaluation whose `fid` is not finite (null in the JSON records, which have no NaN) and an
`error` with the evaluator's reason, so register can record it and the gate refuse it. Any other
evaluator error still raises."""
from __future__ import annotations

import math
from pathlib import Path

import torch

from flows.ops.console import counted
from flows.stages.records import read_record, write_record
from flows.ops.settings import Settings
from gan_core.checkpoint import CheckpointError, load_checkpoint, rebuild
from gan_core.config import PipelineConfig
from gan_core.data import load_manifest
from flows.ops.signing import signing_key
from gan_core.images import grid_fields, make_grid, save_png
from gan_core.metrics.evaluator import evaluator_for
from gan_core.metrics.heldout import translate
from gan_core.metrics.fid import eval_device, latent_of, metric_name
from gan_core.metrics.frechet import MetricError


def json_safe(obj):
    """Non-finite floats become null: JSON has no NaN (json.dumps would write `NaN`, which DVC and
    strict parsers reject). Readers turn null back into nan (flows.registry.gate.fid_from_record)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


@torch.no_grad()
def raw_output(evaluator, module, n: int, seed: int, batch_size: int) -> torch.Tensor:
    """The outputs the evaluator scores (seeded latents, or held-out inputs), without its
    finiteness check: to tell a generator's non-finite output from an evaluator failure, and to
    still show what such a generator produces."""
    if hasattr(evaluator, "raw"):  # text-conditioned: the held-out captions
        return evaluator.raw(module, n, seed, batch_size)
    if hasattr(evaluator, "inputs"):  # image-conditioned: the held-out inputs
        torch.manual_seed(seed)
        return translate(evaluator.family, module, evaluator.inputs[:n], batch_size=batch_size)
    spec = latent_of(module)
    labels = torch.arange(n) % spec.controls if spec.controls else None
    was_training = module.training
    module.eval()
    g = torch.Generator().manual_seed(seed)
    out = []
    try:
        for i in range(0, n, batch_size):
            part = None if labels is None else labels[i:i + batch_size]
            lat = spec.sample(min(batch_size, n - i), generator=g, labels=part)
            out.append(module(*lat.inputs).float().cpu())
    finally:
        module.train(was_training)
    return torch.cat(out)


def evaluate(settings: Settings, cfg: PipelineConfig) -> dict:
    """Score the candidate's G_ema the way its family declares (FID against reference statistics,
    or PSNR/SSIM/L1 on held-out pairs), gate metric and direction included in the record."""
    training = read_record(settings.candidate_dir / "train.json", "train")
    ckpt = load_checkpoint(settings.candidate_dir / "checkpoint.pt")
    _, state = rebuild(ckpt)
    prepared = settings.prepared_dir(cfg.data.name)
    manifest = load_manifest(prepared)
    trained_on = ckpt["meta"].get("dataset_sha256")
    if trained_on != manifest["content_sha256"]:
        raise CheckpointError(f"{settings.candidate_dir / 'checkpoint.pt'}: trained on dataset {str(trained_on)[:12]}, "
                              f"but {prepared} holds {manifest['content_sha256'][:12]}; re-run train")
    e, family = cfg.eval, state.family
    module = family.infer(state.G_ema.eval())
    evaluator = evaluator_for(family, cfg.family, prepared, manifest, e.backbone)
    n = evaluator.count(e.n_fake)
    name = metric_name(n, family.gate.metric)
    torch.manual_seed(e.seed)
    error = None
    # the training device when there is one (FID at GPU speed), for evaluators that can run there
    device = eval_device(cfg.train.use_gpu and getattr(evaluator, "runs_on_device", False))
    try:
        with counted(module, n):  # a count on the run's console, if any
            scores, fingerprint = evaluator.evaluate(module.to(device), n, e.seed, e.batch_size, device)
    except MetricError as err:
        module.to("cpu")
        if torch.isfinite(raw_output(evaluator, module, n, e.seed, e.batch_size)).all():
            raise  # the generator's images are fine: the evaluator failed, which is a bug, not a score
        error = str(err)
        scores, fingerprint = {name: math.nan}, evaluator.fingerprint(n)
    module.to("cpu")  # the sample grid and the code scores below run on the CPU
    value = scores[name]
    if family.score_codes is not None and error is None:  # families that also encode (aae): recon, prior match
        from gan_core.metrics.codes import code_scores
        scores.update(code_scores(family, state.G_ema, prepared, cfg.family, e.seed))

    reports = settings.reports_dir
    k = e.grid * e.grid
    if error is None:
        grid_images = evaluator.samples(module, k, e.seed + 1, e.batch_size)
    else:  # what the bad generator made, non-finite pixels shown black
        grid_images = torch.nan_to_num(raw_output(evaluator, module, k, e.seed + 1, e.batch_size),
                                       nan=-1.0, posinf=1.0, neginf=-1.0).clamp(-1, 1)
    columns = evaluator.columns or e.grid
    provenance = {"run_name": training["run_name"], "step": training["step"], "generator": "G_ema",
                  "checkpoint_sha256": training["checkpoint_sha256"], "seed": e.seed + 1, name: value,
                  "model": "candidate (not registered yet)",
                  "checkpoint": str(settings.candidate_dir / "checkpoint.pt"),
                  "mlflow_run_id": training.get("mlflow_run_id"), "dataset_sha256": manifest["content_sha256"],
                  **grid_fields(len(grid_images), columns),
                  "cells": "noise models: cell i holds latent i of the seed's stream; image models: row i is "
                           "input | output | target of held-out pair i"}
    if error is not None:
        provenance["error"] = error
    grid = make_grid(grid_images, columns)
    samples = save_png(reports / "samples.png", grid, json_safe(provenance), key=signing_key(settings.home))
    metrics = {**{k: round(v, 6) for k, v in scores.items()}, "step": training["step"]}
    evaluation = {"metric": name, "value": value, "higher_is_better": family.gate.higher_is_better,
                  "metrics": scores, "fingerprint": fingerprint.to_dict(), "step": training["step"],
                  "checkpoint_sha256": training["checkpoint_sha256"], "run_name": training["run_name"],
                  "samples": str(samples)}
    if family.gate.metric == "fid":
        evaluation["fid"] = value  # the name records and tags had before gates other than FID
    if error is not None:
        evaluation["error"] = error
    write_record(reports / "metrics.json", json_safe(metrics))
    write_record(reports / "evaluation.json", json_safe(evaluation))
    if training.get("mlflow_run_id"):
        _log_to_mlflow(settings, training["mlflow_run_id"], evaluation, samples)
    return evaluation


def _log_to_mlflow(settings: Settings, run_id: str, evaluation: dict, samples: Path) -> None:
    from flows.registry.tracking import client, log_metrics

    c = client(settings.mlflow_uri)
    finite = {k: v for k, v in evaluation["metrics"].items() if math.isfinite(v)}
    if finite:
        log_metrics(c, run_id, finite, evaluation["step"])
    c.log_artifact(run_id, str(samples), "samples")
    c.log_dict(run_id, json_safe(evaluation), "evaluation.json")
    c.set_tag(run_id, "eval.fingerprint_id", evaluation["fingerprint"]["id"])
    c.set_tag(run_id, "eval.metric", evaluation["metric"])
    if evaluation.get("error"):
        c.set_tag(run_id, "eval.error", evaluation["error"])
