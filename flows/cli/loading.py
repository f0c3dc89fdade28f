"""Loading a generator for the CLI from a registered model (pt2 only, never unpickled) or a checkpoint."""
from __future__ import annotations

from pathlib import Path

from flows.cli.app import fail


def load_generator(s, model: str):
    """G_ema from a registered model (models:/...) or a checkpoint file, with its LatentSpec.
    Neither path unpickles: a checkpoint loads weights-only, and a registered model must be a
    torch.export (pt2) program, checked on the downloaded files before MLflow reads any of them."""
    if model.startswith("models:/"):
        import os
        import tempfile

        import mlflow.artifacts
        import mlflow.pytorch
        from mlflow.models import Model

        from gan_core.latent import LatentSpec

        def not_pt2(local: Path, mlmodel: Model) -> str | None:
            # mlflow loads data/model.pth with torch.load (a pickle: its payload runs on load) whenever
            # that file exists, and the MLmodel does not record the format: the files tell
            flavor = mlmodel.flavors.get("pytorch")
            if flavor is None:
                return "it has no pytorch flavor"
            if flavor.get("code"):
                return "it carries a code folder, which loading would put on sys.path"
            data = (local / flavor["model_data"]).resolve()
            files = sorted(p.name for p in data.iterdir()) if data.is_dir() else []
            if not data.is_relative_to(local.resolve()) or files != ["model.pt2"]:
                return (f"its model data is {files or 'missing'}, not a single model.pt2 "
                        "(serialization_format='pickle' writes model.pth, which loading would unpickle)")
            return None

        mlflow.set_tracking_uri(s.mlflow_uri)
        with tempfile.TemporaryDirectory(prefix="ganpipe-model-") as tmp:
            # one download, inspected and then loaded: the checked files are the loaded files
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model, dst_path=tmp))
            mlmodel = Model.load(str(local))  # the MLmodel YAML only
            why = not_pt2(local, mlmodel)
            if why:
                fail(f"{model}: refused: {why}. Only torch.export (pt2) programs are loaded, since a pickled "
                      "model can run code when loaded; re-register it with serialization_format='pt2'")
            # MLflow (3.17) allows pickle by default and then skips its check that a pt2 archive holds
            # no pickled records: turn the check on for this load
            allow = os.environ.get("MLFLOW_ALLOW_PICKLE_DESERIALIZATION")
            os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "false"
            try:
                G = mlflow.pytorch.load_model(str(local))
            finally:
                if allow is None:
                    os.environ.pop("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", None)
                else:
                    os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = allow
        meta = mlmodel.metadata or {}
        if "style" in meta:  # takes (z, z_mix, psi, crossover): callable as G(z) like every generator
            from flows.cli.styles import StyleDefaults

            return StyleDefaults(G, LatentSpec.from_dict(meta["latent"]), meta)
        G.exported_as = meta  # an exported (pt2) program has no attributes: the metadata says what it takes
        if "input" not in meta and not hasattr(G, "latent"):  # noise families: the latent spec
            z_dim = int(mlmodel.signature.inputs.inputs[0].shape[-1])
            G.latent = LatentSpec.from_dict(meta["latent"]) if meta.get("latent") else LatentSpec(z_dim)
        return G
    from gan_core.checkpoint import CheckpointError, load_checkpoint, rebuild

    try:
        cfg, state = rebuild(load_checkpoint(model))
    except CheckpointError as e:
        fail(f"{model}: refused: {e}")
    G = state.family.infer(state.G_ema.eval())  # what registration would export
    if state.family.image_input or hasattr(G, "export_inputs"):
        from flows.stages.register import export_inputs

        meta = export_inputs(cfg, G)[1]
        if "style" in meta:
            from flows.cli.styles import StyleDefaults

            return StyleDefaults(G, G.latent, meta)
        G.exported_as = meta
    return G
