"""The encoder of families that also map images to codes (Family.encode: aae), exported beside the
generator at registration and loaded back for `ganpipe encode`.

Registered like the generator: a torch.export (pt2) program, loaded without unpickling, with a
dynamic batch; it reads (B, C, R, R) images in [-1, 1] at the training resolution (the encoder ends
in a linear map of the 4x4 features, so only that size fits) and returns (B, z_dim) float codes.
The version is tagged `encoder.model_uri` (the logged model), which is how a reader finds it.
"""
from __future__ import annotations

import torch

from gan_core.config import PipelineConfig

TAG = "encoder.model_uri"


def encoder_args(cfg: PipelineConfig, module: torch.nn.Module) -> dict:
    """log_model's arguments for the encoder: pt2, an 8-image example, its signature and metadata."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    d = cfg.data
    x = (torch.rand(8, d.channels, d.resolution, d.resolution, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    with torch.no_grad():
        codes = module.eval()(x)
    signature = ModelSignature(Schema([TensorSpec(np.dtype(np.float32), (-1, d.channels, d.resolution, d.resolution),
                                                  "images")]),
                               Schema([TensorSpec(np.dtype(np.float32), (-1, codes.shape[1]), "codes")]))
    meta = {"arch": cfg.model.arch, "encoder": {"channels": d.channels, "resolution": d.resolution,
                                                 "z_dim": int(codes.shape[1])}}
    return {"input_example": (x.numpy(),), "signature": signature, "serialization_format": "pt2",
            "metadata": meta, "pip_requirements": [f"torch=={torch.__version__.split('+')[0]}"]}


def log_encoder(cfg: PipelineConfig, state) -> dict[str, str]:
    """Inside the registration's MLflow run: log the family's encoder, if it has one; the version's tags."""
    if state.family.encode is None:
        return {}
    import mlflow.pytorch

    module = state.family.encode(state.G_ema.eval())
    info = mlflow.pytorch.log_model(module, name="encoder", **encoder_args(cfg, module))
    return {TAG: info.model_uri}


def registered_encoder(tracking_uri: str, model_uri: str):
    """(pt2 program, metadata) of the encoder registered beside models:/NAME/VERSION or models:/NAME@ALIAS.
    ModelUnavailable if the version is unknown or has none; ModelRefused unless it is a pt2 program."""
    from flows.registry.tracking import client
    from flows.serving.model import ModelUnavailable, load_pt2

    name, _, ref = model_uri.removeprefix("models:/").partition("/")
    name, at, alias = name.partition("@")
    c = client(tracking_uri)
    try:
        version = c.get_model_version_by_alias(name, alias) if at else c.get_model_version(name, ref)
    except Exception as e:  # noqa: BLE001 (MlflowException or a connection error: either way, not found)
        raise ModelUnavailable(f"{model_uri}: {str(e).splitlines()[0]}") from None
    uri = (version.tags or {}).get(TAG)
    if not uri:
        raise ModelUnavailable(f"{model_uri}: version {version.version} has no encoder (tag {TAG}); only "
                               "families that encode images (aae, aae_mix) register one")
    program, meta, _ = load_pt2(tracking_uri, uri)
    return program, meta
