"""Loading a generator for the CLI from a registered model (pt2 only, never unpickled) or a checkpoint."""
from __future__ import annotations

from flows.cli.app import fail


def load_generator(s, model: str):
    """G_ema from a registered model (models:/...) or a checkpoint file, with its LatentSpec.
    Neither path unpickles: a checkpoint loads weights-only, and a registered model must be a
    torch.export (pt2) program, checked on the downloaded files before MLflow reads any of them."""
    if model.startswith("models:/"):
        from flows.serving.model import ModelRefused, ModelUnavailable, load_registered  # shared with `ganpipe deploy`

        try:
            return load_registered(s.mlflow_uri, model)
        except (ModelRefused, ModelUnavailable) as e:
            fail(str(e))
    from gan_core.checkpoint import CheckpointError, load_checkpoint, rebuild

    try:
        cfg, state = rebuild(load_checkpoint(model))
    except CheckpointError as e:
        fail(f"{model}: refused: {e}")
    from flows.stages.register import exported

    G = exported(state)  # what registration would export
    if state.family.image_input or hasattr(G, "export_inputs"):
        from flows.stages.register import export_inputs

        meta = export_inputs(cfg, G)[1]
        if "style" in meta:
            from flows.cli.styles import StyleDefaults

            return StyleDefaults(G, G.latent, meta)
        G.exported_as = meta
    return G
