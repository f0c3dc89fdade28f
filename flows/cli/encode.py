"""`ganpipe encode`: images -> latent codes with the encoder of a family that has one (aae, aae_mix),
from a registered model (its pt2 encoder, never unpickled) or a checkpoint. The codes are saved as
.npy (float32, one row per image, in input order) with a JSON sidecar saying where they came from."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import typer

from flows.cli.app import app, cli_settings, fail


def load_encoder(s, model: str) -> tuple[torch.nn.Module, dict]:
    """(encoder, {arch, channels, resolution, z_dim}) of a registered model or a checkpoint file."""
    if model.startswith("models:/"):
        from flows.serving.model import ModelRefused, ModelUnavailable
        from flows.stages.encoding import registered_encoder

        try:
            program, meta = registered_encoder(s.mlflow_uri, model)
        except (ModelRefused, ModelUnavailable) as e:
            fail(str(e))
        return program, {"arch": meta.get("arch"), **meta["encoder"]}
    from gan_core.checkpoint import CheckpointError, load_checkpoint, rebuild

    try:
        cfg, state = rebuild(load_checkpoint(model))
    except CheckpointError as e:
        fail(f"{model}: refused: {e}")
    if state.family.encode is None:
        fail(f"{model}: a {state.family.name} model has no encoder (families that encode images: "
             f"{', '.join(encoding_families())})")
    return state.family.encode(state.G_ema.eval()), {"arch": state.family.name, "channels": cfg.data.channels,
                                                     "resolution": cfg.data.resolution, "z_dim": cfg.model.z_dim}


def encoding_families() -> list[str]:
    from gan_core.models import ARCHS

    return sorted(name for name, f in ARCHS.items() if f.encode is not None)


def read_inputs(path: Path, channels: int, resolution: int) -> tuple[list[str], torch.Tensor]:
    """(names, (N, C, R, R) float in [-1, 1]) from an image file, a folder of images, or a .npy of
    uint8 images (N, C, R, R) (a prepared dataset's images.npy); sizes must be the model's."""
    from gan_core.data import to_float
    from gan_core.images import image_files, read_image

    if not path.exists():
        fail(f"{path}: no such file or folder")
    if path.suffix.lower() == ".npy":
        arr = np.load(path, allow_pickle=False)
        if arr.dtype != np.uint8 or arr.ndim != 4:
            fail(f"{path}: expected uint8 images (N, C, H, W), got {arr.dtype} {arr.shape}")
        names, x = [f"{path.name}[{i}]" for i in range(len(arr))], to_float(torch.from_numpy(arr))
    else:
        try:
            files = image_files(path) if path.is_dir() else [path]
            names, x = [f.name for f in files], [read_image(f, channels) for f in files]
        except (ValueError, FileNotFoundError) as e:
            fail(str(e))
        bad = [n for n, im in zip(names, x) if tuple(im.shape[-2:]) != (resolution, resolution)]
        if bad:
            fail(f"{bad[0]}: is not {resolution}x{resolution}, the size the encoder was trained on "
                 f"({len(bad)} of {len(names)} inputs differ)")
        x = torch.cat(x)
    if tuple(x.shape[1:]) != (channels, resolution, resolution):
        fail(f"{path}: images are {tuple(x.shape[1:])}, the encoder reads {(channels, resolution, resolution)}")
    return names, x


@app.command()
def encode(model: str = typer.Argument(..., help="models:/NAME@champion, models:/NAME/3, or a checkpoint .pt"),
           inp: Path = typer.Argument(..., metavar="IN", help="an image file, a folder of images, or a .npy "
                                      "of uint8 images (N, C, H, W)"),
           out: Path = typer.Option(Path("codes.npy"), help="codes (N, z_dim) float32; provenance in OUT.json"),
           show: int = typer.Option(5, min=0, help="codes printed (0: none)")):
    """Encode images to latent codes with an autoencoding model (aae, aae_mix)."""
    s = cli_settings()
    from flows.cli.provenance import source_fields
    from gan_core.files import file_sha256
    from gan_core.inference import run_batched

    enc, info = load_encoder(s, model)
    names, x = read_inputs(inp, int(info["channels"]), int(info["resolution"]))
    codes = run_batched(enc, x).numpy().astype(np.float32)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, codes, allow_pickle=False)
    provenance = {"model": model, **source_fields(s, model), **info, "input": str(inp.resolve()),
                  "input_sha256": file_sha256(inp) if inp.is_file() else None,
                  "rows": f"row i: image i of {inp.name}" if inp.suffix.lower() == ".npy" else names,
                  "codes": str(out.resolve()), "codes_sha256": file_sha256(out)}
    sidecar = out.with_name(out.name + ".json")
    sidecar.write_text(json.dumps(provenance, indent=1) + "\n")
    for name, row in list(zip(names, codes))[:show]:
        typer.echo(f"{name}\t" + " ".join(f"{v:+.3f}" for v in row))
    typer.echo(f"{len(codes)} codes of {codes.shape[1]} dims (mean {codes.mean():+.3f}, std {codes.std():.3f}) "
               f"-> {out.resolve()}")
