"""Stage 4, register: log G_ema to MLflow as a torch.export (pt2) model, register a version with
lineage tags, and move the `champion` alias only when the gate says so."""
from __future__ import annotations

import json
import math

import numpy as np
import torch

from flows import versioning
from flows.records import read_record, write_record
from flows.gate import Scored, decide
from flows.settings import Settings
from flows.tracking import CHAMPION, champion_version, client, model_name
from gan_core.checkpoint import load_checkpoint, rebuild
from gan_core.config import PipelineConfig
from gan_core.latent import LatentSpec


def _scored(version) -> Scored | None:
    if version is None:
        return None
    try:
        fid = float(version.tags.get("eval.fid", "nan"))
    except ValueError:
        fid = math.nan
    return Scored(fid, version.tags.get("eval.fingerprint_id", "missing"), str(version.version))


def lineage_tags(settings: Settings, cfg: PipelineConfig, training: dict, evaluation: dict, lineage: dict) -> dict:
    meta = training["meta"]
    tags = {
        "dataset.name": cfg.data.dataset,
        "dataset.version": str(meta.get("dataset_version", "unversioned")),
        "dataset.content_sha256": meta["dataset_sha256"],
        "dataset.dvc_md5": str(versioning.locked_out_md5(settings, "prepare", settings.prepared_dir(cfg.data.name))),
        "params.sha256": meta["params_sha256"],
        "git.commit": meta["git_commit"],
        "checkpoint.sha256": training["checkpoint_sha256"],
        "checkpoint.dvc_md5": str(versioning.locked_out_md5(settings, "train", settings.candidate_dir)),
        "checkpoint.step": str(training["step"]),
        "ray.run_name": training["run_name"],
        "prefect.flow_run_id": lineage.get("prefect.flow_run_id", "none"),
        "mlflow.run_id": str(training.get("mlflow_run_id")),
        "model.arch": cfg.model.arch,
        "model.loss": cfg.model.loss,
        "eval.metric": evaluation["metric"],
        "eval.fid": repr(float(evaluation["fid"])),
        "eval.fingerprint_id": evaluation["fingerprint"]["id"],
        "eval.fingerprint": json.dumps(evaluation["fingerprint"], sort_keys=True),
    }
    return tags


def generator_signature(spec: LatentSpec, out: np.ndarray):
    """Tensor signature of G: z (B, input_dim) float32, then y (B,) int64 for a conditional G."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    inputs = [TensorSpec(np.dtype(np.float32), (-1, spec.input_dim), "z")]
    if spec.conditional:
        inputs.append(TensorSpec(np.dtype(np.int64), (-1,), "y"))
    return ModelSignature(Schema(inputs), Schema([TensorSpec(np.dtype(np.float32), (-1, *out.shape[1:]), "images")]))


def export_args(G) -> dict:
    """How a generator is saved to MLflow: a torch.export (pt2) program, which loads without
    unpickling code, with a dynamic batch dimension (needs an example batch > 1) and the latent
    spec as metadata, since an exported program has no attributes to read it from."""
    spec = G.latent
    example = spec.sample(8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = G(*example.inputs).numpy()
    return {"input_example": tuple(t.numpy() for t in example.inputs), "signature": generator_signature(spec, out),
            "serialization_format": "pt2", "metadata": {"latent": spec.to_dict()},
            "pip_requirements": [f"torch=={torch.__version__.split('+')[0]}"]}


def register(settings: Settings, cfg: PipelineConfig, lineage: dict) -> dict:
    import mlflow

    training = read_record(settings.candidate_dir / "train.json", "train")
    evaluation = read_record(settings.reports_dir / "evaluation.json", "evaluate")
    if evaluation["checkpoint_sha256"] != training["checkpoint_sha256"]:
        raise ValueError(f"{settings.reports_dir / 'evaluation.json'}: evaluates checkpoint "
                         f"{evaluation['checkpoint_sha256'][:12]}, not the candidate "
                         f"{training['checkpoint_sha256'][:12]}; re-run evaluate")
    run_id = training.get("mlflow_run_id")
    name = model_name(cfg)
    c = client(settings.mlflow_uri)
    mlflow.set_tracking_uri(settings.mlflow_uri)

    _, state = rebuild(load_checkpoint(settings.candidate_dir / "checkpoint.pt"))
    G = state.G_ema.eval()
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(G, name="generator", **export_args(G))
        mlflow.log_artifact(str(settings.candidate_dir / "checkpoint.pt"), "checkpoint")
    tags = lineage_tags(settings, cfg, training, evaluation, lineage)
    version = mlflow.register_model(info.model_uri, name, tags=tags)

    candidate = Scored(float(evaluation["fid"]), evaluation["fingerprint"]["id"], str(version.version))
    champion = champion_version(c, name)
    promote, reason = decide(candidate, _scored(champion), cfg.register.promotion_margin)
    if promote:
        c.set_registered_model_alias(name, CHAMPION, version.version)
    c.set_model_version_tag(name, version.version, "promotion.decision", "promoted" if promote else "not promoted")
    c.set_model_version_tag(name, version.version, "promotion.reason", reason)
    result = {"model_name": name, "version": str(version.version), "champion": promote, "reason": reason,
              "model_uri": f"models:/{name}/{version.version}", "metric": evaluation["metric"],
              "fid": evaluation["fid"], "mlflow_run_id": run_id}
    write_record(settings.reports_dir / "registration.json", result)
    return result
