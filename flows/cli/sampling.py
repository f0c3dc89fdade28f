"""`ganpipe sample` and `ganpipe evaluate`: images and metrics from a registered model or a checkpoint."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from flows.cli.app import fail, cli_settings, app
from flows.cli.loading import load_generator


@app.command()
def sample(model: str = typer.Argument(..., help="models:/NAME@champion, models:/NAME/3, or a checkpoint .pt"),
           n: int = typer.Option(64, min=1, max=1024), seed: int = typer.Option(0),
           label: Optional[int] = typer.Option(None, "--class", help="class (cgan, biggan) or categorical code "
                                                                      "(infogan) of every image; default: cycle"),
           out: Path = typer.Option(Path("samples.png")),
           truncation: float = typer.Option(1.0, min=0.0, max=2.0, help="style models: pull w toward the "
                                            "average by psi (0.7: typical, cleaner; 1: off)"),
           mix: bool = typer.Option(False, "--mix", help="style models: a style-mixing grid (row seeds give the "
                                    "first --layers styles, column seeds the rest)"),
           layers: Optional[int] = typer.Option(None, help="with --mix: styles taken from the row seed "
                                                "(default: those of 8 px and below)"),
           interpolate: Optional[int] = typer.Option(None, help="style models: a strip from --seed to this seed"),
           steps: int = typer.Option(8, min=2, max=64, help="images in an --interpolate strip"),
           watermark: bool = typer.Option(False, "--watermark", help="also hide the key id and a provenance tag "
                                          "in the pixels (survives lost metadata, JPEG 90, resizing)"),
           text: Optional[str] = typer.Option(None, "--text", help="text-to-image models (stackgan): the caption "
                                              "every image is drawn for, tokenised with the model's own vocabulary")):
    """Generate an n-image grid from a registered model or a checkpoint file."""
    s = cli_settings()
    import math

    import torch

    from flows.cli.provenance import source_fields, write_png
    from gan_core.images import grid_fields, make_grid
    from gan_core.metrics.fid import generate, latent_of

    G = load_generator(s, model)
    source = {"model": model, **source_fields(s, model)}
    meta = getattr(G, "exported_as", None) or {}
    if text is not None or meta.get("conditioning") == "text":  # text-to-image: n images of one caption
        from gan_core.text import draw_text

        try:
            images, unknown = draw_text(G, meta, text, n, seed)
        except ValueError as e:
            fail(str(e))
        columns = int(math.ceil(math.sqrt(n)))
        provenance = {**source, "seed": seed, "n": n, "text": text, "unknown_words": unknown,
                      **grid_fields(n, columns), "latent_index": "cell i holds latent i of the seed's stream"}
        typer.echo(str(write_png(s, out, make_grid(images, columns), provenance, watermark).resolve()))
        return
    if "input" in getattr(G, "exported_as", {}):  # image-conditioned: held-out input | output | target
        from flows.cli.images import heldout_samples

        images, columns = heldout_samples(s, G, n, seed)
        provenance = {**source, "seed": seed, "n": n, **grid_fields(len(images), columns),
                      "cells": "row i: input | output | target of held-out pair i"}
        path = write_png(s, out, make_grid(images, columns), provenance, watermark)
        typer.echo(str(path.resolve()))
        return
    from flows.cli.styles import is_styled, styled_sample

    if is_styled(G):
        try:
            images, columns, extra = styled_sample(G, n, seed, truncation, mix, layers, interpolate, steps)
        except ValueError as e:
            fail(str(e))
        provenance = {**source, "seed": seed, "n": len(images), "truncation": truncation,
                      **grid_fields(len(images), columns), **extra}
        typer.echo(str(write_png(s, out, make_grid(images, columns), provenance, watermark).resolve()))
        return
    if mix or interpolate is not None or truncation != 1.0 or layers is not None:
        fail("--truncation, --mix, --layers and --interpolate need a style-based model (model.arch=stylegan)")
    labels = None
    if label is not None:
        controls = latent_of(G).controls
        if controls == 0 or not 0 <= label < controls:
            fail(f"--class: {label} is not a class or code of this model "
                  f"({'it has none' if controls == 0 else f'valid: 0..{controls - 1}'})")
        labels = torch.full((n,), label, dtype=torch.long)
    images = generate(G, n, seed, batch_size=256, labels=labels)
    columns = int(math.ceil(math.sqrt(n)))
    path = write_png(s, out, make_grid(images, columns),
                     {**source, "seed": seed, "n": n, "class": label, **grid_fields(n, columns),
                      "latent_index": "cell i holds latent i of the seed's stream (0 .. n-1)"}, watermark)
    typer.echo(str(path.resolve()))


@app.command()
def evaluate(
    model: Optional[str] = typer.Argument(None, help="models:/NAME@champion, models:/NAME/3, or a checkpoint .pt"),
    n: Optional[int] = typer.Option(None, "--n", min=10, help="generated samples (default eval.n_fake)"),
    backbone: Optional[str] = typer.Option(None, help="domain-classifier | inception (default eval.backbone)"),
    real: Optional[Path] = typer.Option(None, help="folder of real images (with --fake: folder vs folder)"),
    fake: Optional[Path] = typer.Option(None, help="folder of generated images"),
    data: Optional[Path] = typer.Option(None, help="prepared dataset folder (default data/prepared/<data.name>)"),
    seed: Optional[int] = typer.Option(None, help="latent seed (default eval.seed)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
):
    """FID, KID, IS and precision/recall of a model against a dataset's reference statistics, or of
    one image folder against another, with the evaluator fingerprint the numbers hold under."""

    s = cli_settings()
    from flows.ops.console import counted, terminal_console
    from flows.ops.params import load_config
    from gan_core.data import load_manifest
    from gan_core.images import read_folder
    from gan_core.metrics.evaluator import DOMAIN, folder_evaluator, load_backbone, load_evaluator
    from gan_core.metrics.frechet import MetricError

    cfg = load_config(s.params_file, write=False)
    name = backbone or cfg.eval.backbone
    data_dir = data or s.prepared_dir(cfg.data.name)
    seed = cfg.eval.seed if seed is None else seed
    try:
        if (real is None) != (fake is None):
            fail("evaluate: --real and --fake go together (folder vs folder)")
        if real is not None:
            if model is not None:
                fail("evaluate: give a model or --real/--fake folders, not both")
            bb = load_backbone(name, data_dir if name == DOMAIN else None)
            channels = int(load_manifest(data_dir)["shape"][0]) if name == DOMAIN else 3
            ev = folder_evaluator(read_folder(real, channels), bb)
            metrics, fp = ev.score_images(read_folder(fake, channels), cfg.eval.batch_size, seed)
        elif model is not None:
            ev = load_evaluator(data_dir, load_manifest(data_dir), name)
            G, count = load_generator(s, model), n or cfg.eval.n_fake
            terminal_console()  # a count of the samples on a TTY
            with counted(G, count):
                metrics, fp = ev.evaluate(G, count, seed, cfg.eval.batch_size)
        else:
            fail("evaluate: give a model (models:/... or a checkpoint) or --real DIR --fake DIR")
    except (MetricError, ValueError, FileNotFoundError) as e:
        fail(str(e))
    if as_json:
        typer.echo(json.dumps({"metrics": metrics, "fingerprint": fp.to_dict()}, indent=2, sort_keys=True))
        return
    for k, v in metrics.items():
        typer.echo(f"{k:<16} {v:.6f}")
    typer.echo(f"fingerprint      {fp.id}  ({fp.backbone}, resize={fp.resize}, n_real={fp.n_real}, n_fake={fp.n_fake})")
