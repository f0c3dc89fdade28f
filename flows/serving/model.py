"""A registered generator ready to serve: loaded from its pt2 program without unpickling (the
loader `ganpipe sample` uses too), described by its metadata and tags, checked for finite output
on a fixed seed (which also warms it), and run for one validated request."""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

CHECK_SEED = 0  # the fixed seed a version must give finite images for before it serves
CHECK_N = 2


class ModelRefused(Exception):
    """A version that must not be loaded or served; the message says why."""


class ModelUnavailable(Exception):
    """No such registered model, version or alias (or the registry did not answer); the message says which."""


def _not_pt2(local: Path, mlmodel) -> str | None:
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


def load_pt2(tracking_uri: str, model_uri: str):
    """(program, metadata, signature) of a registered model; ModelRefused unless it is a single pt2 program."""
    import mlflow.artifacts
    import mlflow.pytorch
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    mlflow.set_tracking_uri(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="ganpipe-model-") as tmp:
        # one download, inspected and then loaded: the checked files are the loaded files
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp))
        except MlflowException as e:
            raise ModelUnavailable(f"{model_uri}: {e.message.splitlines()[0]}") from None
        mlmodel = Model.load(str(local))  # the MLmodel YAML only
        why = _not_pt2(local, mlmodel)
        if why:
            raise ModelRefused(f"{model_uri}: refused: {why}. Only torch.export (pt2) programs are loaded, since "
                               "a pickled model can run code when loaded; re-register it with "
                               "serialization_format='pt2'")
        # MLflow (3.17) allows pickle by default and then skips its check that a pt2 archive holds
        # no pickled records: turn the check on for this load
        allow = os.environ.get("MLFLOW_ALLOW_PICKLE_DESERIALIZATION")
        os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "false"
        try:
            program = mlflow.pytorch.load_model(str(local))
        finally:
            if allow is None:
                os.environ.pop("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", None)
            else:
                os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = allow
    return program, mlmodel.metadata or {}, mlmodel.signature


def generator_from(program, meta: dict, signature):
    """The program callable as every generator is (G(z) for noise and style families), with
    `exported_as` (its metadata) and, for noise families, `latent`."""
    from gan_core.latent import LatentSpec

    if "style" in meta:  # takes (z, z_mix, psi, crossover): callable as G(z) like every generator
        from flows.cli.styles import StyleDefaults

        return StyleDefaults(program, LatentSpec.from_dict(meta["latent"]), meta)
    program.exported_as = meta  # an exported (pt2) program has no attributes: the metadata says what it takes
    if "input" not in meta and not hasattr(program, "latent"):  # noise families: the latent spec
        z_dim = int(signature.inputs.inputs[0].shape[-1])
        program.latent = LatentSpec.from_dict(meta["latent"]) if meta.get("latent") else LatentSpec(z_dim)
    return program


def load_registered(tracking_uri: str, model_uri: str):
    return generator_from(*load_pt2(tracking_uri, model_uri))


def inputs_of(G) -> dict:
    """What a generate request may carry for this model (also shown by GET /v1/models)."""
    meta = getattr(G, "exported_as", {}) or {}
    if "input" in meta:
        return {"kind": "image", "channels": int(meta["input"]["channels"]),
                "resolution": int(meta["input"]["resolution"]), "directions": list(meta.get("directions") or [])}
    latent = G.latent
    kind = "style" if "style" in meta else "noise"
    out = {"kind": kind, "classes": latent.controls, "controls": "class" if latent.n_classes else
           ("code" if latent.code_cat else "")}
    if kind == "style":
        out["truncation"] = [0.0, 2.0]
    return out


@dataclass(frozen=True)
class Served:
    """One loaded, checked version of a registered model."""
    name: str
    version: str
    G: object = field(repr=False)
    family: str
    metric: str
    value: str
    fingerprint: str
    inputs: dict
    # what every PNG it serves records of where it came from (the version's lineage tags)
    lineage: dict = field(default_factory=dict)

    def describe(self) -> dict:
        return {"name": self.name, "version": self.version, "family": self.family, "metric": self.metric,
                "value": self.value, "fingerprint": self.fingerprint, "inputs": self.inputs}


def load_version(client, tracking_uri: str, name: str, version: str) -> Served:
    """Load, then check: ModelRefused if it cannot be loaded or draws non-finite images."""
    mv = client.get_model_version(name, version)
    tags = mv.tags or {}
    try:
        G = load_registered(tracking_uri, f"models:/{name}/{version}")
    except ModelRefused:
        raise
    except Exception as e:  # a missing artifact, a corrupt archive, a program torch cannot load
        raise ModelRefused(f"cannot be loaded: {type(e).__name__}: {e}") from e
    meta = getattr(G, "exported_as", {}) or {}
    served = Served(name, str(version), G, str(meta.get("arch") or tags.get("model.arch", "")),
                    tags.get("eval.metric", ""), tags.get("eval.value", tags.get("eval.fid", "")),
                    tags.get("eval.fingerprint_id", ""), inputs_of(G),
                    {"mlflow_run_id": mv.run_id, "dataset_sha256": tags.get("dataset.content_sha256"),
                     "checkpoint_sha256": tags.get("checkpoint.sha256")})
    check(served)
    return served


def check_input(inputs: dict) -> torch.Tensor:
    """The fixed input an image model is checked on: seeded noise at its training resolution."""
    g = torch.Generator().manual_seed(CHECK_SEED)
    side = inputs["resolution"]
    return torch.rand(CHECK_N, inputs["channels"], side, side, generator=g) * 2 - 1


def check(served: Served) -> None:
    """Finite images on a fixed seed, or ModelRefused (the first call also warms the program)."""
    from flows.serving.api import GenerateRequest

    from gan_core.metrics.frechet import MetricError

    try:
        if served.inputs["kind"] == "image":
            images = _translate(served, check_input(served.inputs), 0)
        else:
            images = generate(served, GenerateRequest(n=CHECK_N, seed=CHECK_SEED))
    except MetricError as e:  # draw() refuses NaN/Inf itself
        raise ModelRefused(f"non-finite output on seed {CHECK_SEED}: {e}") from None
    except Exception as e:  # a program that cannot run on its own declared inputs
        raise ModelRefused(f"cannot generate: {type(e).__name__}: {e}") from e
    if not torch.isfinite(images).all():
        bad = int((~torch.isfinite(images)).sum())
        raise ModelRefused(f"non-finite output: {bad} of {images.numel()} values on seed {CHECK_SEED}")


def _translate(served: Served, x: torch.Tensor, direction: int) -> torch.Tensor:
    from flows.cli.images import family_of
    from gan_core.metrics.heldout import translate

    family, _ = family_of(served.G)
    return translate(family, served.G, x, direction=direction)


@torch.no_grad()
def generate(served: Served, req) -> torch.Tensor:
    """(n, C, H, W) in [-1, 1] for a validated request; the same request gives the same tensor."""
    if served.inputs["kind"] == "image":
        directions = served.inputs["directions"]
        d = directions.index(req.direction) if req.direction else 0
        return _translate(served, req.image, d).clamp(-1, 1)
    if served.inputs["kind"] == "style":
        from flows.cli.styles import truncated

        return truncated(served.G, req.n, req.seed, 1.0 if req.truncation is None else req.truncation)
    from gan_core.metrics.fid import generate as draw

    labels = None if req.label is None else torch.full((req.n,), req.label, dtype=torch.long)
    return draw(served.G, req.n, req.seed, batch_size=256, labels=labels)


@torch.no_grad()
def generate_many(served: Served, reqs: list, device: str = "cpu") -> list[torch.Tensor]:
    """Several requests in one forward pass (serve.batch on GPU replicas): each request's latents
    are drawn as `generate` draws them (its own seeded generator), concatenated, run once and split.
    Noise families only; the others run one by one. On a GPU the batched kernels may differ from
    the single ones in the last bits; on CPU the images match `generate` to float tolerance."""
    if served.inputs["kind"] != "noise":
        return [generate(served, r) for r in reqs]
    spec = served.G.latent
    lats = []
    for r in reqs:
        labels = None if r.label is None else torch.full((r.n,), r.label, dtype=torch.long)
        if labels is None and spec.controls:
            labels = torch.arange(r.n) % spec.controls
        lats.append(spec.sample(r.n, generator=torch.Generator().manual_seed(r.seed), labels=labels))
    inputs = [torch.cat(parts).to(device) for parts in zip(*(lat.inputs for lat in lats))]
    if device != "cpu":  # loaded and checked on the CPU; a GPU replica runs it where its batches are
        served.G.to(device)
    out = served.G(*inputs).float().cpu()
    return list(out.split([r.n for r in reqs]))
