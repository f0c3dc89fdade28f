"""Register a freshly initialised (untrained) generator as a new version of a model, the way the
register stage exports one (pt2 program, its metadata and gate tags), in about a second: for the
serving tests and load benchmark, and for trying the API without a training run. `nan` fills the
weights with NaN: a version serving must refuse."""
from __future__ import annotations

import torch

from gan_core.config import PipelineConfig


def register_untrained(settings, name: str, cfg: PipelineConfig, seed: int, nan: bool = False,
                       champion: bool = True, n_classes: int = 4) -> str:
    """The new version's number; its files go where the pipeline's do (settings.mlflow_artifact_root)."""
    import mlflow
    import mlflow.pytorch

    from flows.registry.tracking import CHAMPION, client, experiment_id
    from flows.stages.register import export_args, export_context, exported
    from gan_core.train import build_state

    torch.manual_seed(seed)
    state = build_state(cfg, n_classes=n_classes)
    G = exported(state)
    if nan:
        with torch.no_grad():
            for p in G.parameters():
                p.fill_(float("nan"))
    c = client(settings.mlflow_uri)
    mlflow.set_tracking_uri(settings.mlflow_uri)
    exp = experiment_id(c, "ganpipe-untrained", settings.mlflow_artifact_root)
    with mlflow.start_run(experiment_id=exp, run_name=f"untrained-{seed}"):
        with export_context(cfg):
            info = mlflow.pytorch.log_model(G, name="generator", **export_args(cfg, G))
    tags = {"model.arch": cfg.model.arch, "eval.metric": "fid", "eval.value": "nan" if nan else f"{100.0 + seed}",
            "eval.fingerprint_id": f"untrained-{seed}", "checkpoint.step": "0"}
    version = str(mlflow.register_model(info.model_uri, name, tags=tags).version)
    if champion:
        c.set_registered_model_alias(name, CHAMPION, version)
    return version
