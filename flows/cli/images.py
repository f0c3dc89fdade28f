"""`ganpipe translate` and the image side of `ganpipe sample`: models that read images (translation,
super-resolution) rather than noise. What a model takes comes from its export metadata (`input`,
`directions`, `options`), written by registration from the family's declarations."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import typer

from flows.cli.app import fail, cli_settings, app
from flows.cli.loading import load_generator
from gan_core.images import image_files, make_grid, read_image


def family_of(G):
    """The family and options a loaded image model was exported with."""
    from gan_core.models import get_family

    meta = getattr(G, "exported_as", {})
    family = get_family(meta["arch"])
    opts = meta.get("options") or {}
    return family, (family.options(**opts) if family.options is not None else None)


def heldout_samples(s, G, n: int, seed: int) -> tuple[torch.Tensor, int]:
    """input | output | target triplets of the first held-out rows of the prepared dataset named by
    params.yaml's data.name (the data the model is evaluated on)."""
    from flows.ops.params import load_config
    from gan_core.data import load_prepared
    from gan_core.metrics.heldout import heldout_evaluator

    family, options = family_of(G)
    cfg = load_config(s.params_file, write=False)
    folder = s.prepared_dir(cfg.data.name)
    try:
        ev = heldout_evaluator(family, options, load_prepared(folder))
    except (ValueError, FileNotFoundError) as e:
        fail(f"sample: the held-out inputs come from {folder}: {e}")
    return ev.samples(G, 3 * n, seed), ev.columns


def _inputs(path: Path, channels: int) -> list[tuple[str, torch.Tensor]]:
    """(name, (1, C, H, W) image) for a single file or every image of a folder; sizes may differ."""
    if not path.exists():
        fail(f"{path}: no such file or folder")
    files = image_files(path) if path.is_dir() else [path]
    return [(f.stem, read_image(f, channels)) for f in files]


@app.command()
def translate(model: str = typer.Argument(..., help="models:/NAME@champion, models:/NAME/3, or a checkpoint .pt"),
              inp: Path = typer.Argument(..., metavar="IN", help="an image file or a folder of images"),
              out: Path = typer.Argument(..., metavar="OUT", help="output folder (or .png file for one input)"),
              direction: Optional[str] = typer.Option(None, help="for models with several directions: a2b | b2a"),
              watermark: bool = typer.Option(False, "--watermark", help="also hide the key id and a provenance "
                                             "tag in the pixels (outputs of at least 32 px a side)")):
    """Translate or upscale images with an image-conditioned model (pix2pix, cyclegan, srgan, ...)."""
    s = cli_settings()
    from gan_core.metrics.heldout import translate as run

    from flows.cli.provenance import source_fields, write_png

    G = load_generator(s, model)
    meta = getattr(G, "exported_as", {})
    source = {"model": model, **source_fields(s, model)}
    if "input" not in meta:
        fail(f"{model}: generates from noise; use `ganpipe sample` (translate needs a model that reads images)")
    family, _ = family_of(G)
    d = 0
    if family.directions:
        names = family.directions
        if direction is None or direction not in names:
            fail(f"--direction: {model} translates {' or '.join(names)}; choose one (got {direction!r})")
        d = names.index(direction)
    elif direction is not None:
        fail(f"--direction: {model} has one direction only")
    try:
        images = _inputs(inp, int(meta["input"]["channels"]))
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    single = len(images) == 1 and out.suffix.lower() == ".png"
    for name, x in images:
        try:
            y = run(family, G, x, direction=d).clamp(-1, 1)
        except Exception as e:  # an exported program refuses sizes its architecture cannot take
            fail(f"{inp / name if inp.is_dir() else inp}: {tuple(x.shape[-2:])} cannot be translated: {e}")
        target = out if single else out / f"{name}.png"
        write_png(s, target, make_grid(y, 1, pad=0, scale=1),
                  {**source, "input": name, "direction": direction or ""}, watermark)
        typer.echo(str(target.resolve()))
