"""`ganpipe dataset add|list|show`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from flows.cli.app import fail, cli_settings, dataset_app
from gan_core.config import ConfigError


@dataset_app.command("add")
def dataset_add(
    name: str = typer.Argument(..., help="dataset name (lower-case letters, digits, '-', '_')"),
    source: str = typer.Argument(..., help="folder | .zip | .tar(.gz) | .npz | IDX file | s3://bucket/prefix | "
                                           "sklearn-digits | synthetic-blobs | synthetic-shapes | mnist | "
                                           "fashion-mnist | cifar10"),
    kind: str = typer.Option("auto", help="auto (labelled when there are class folders/labels) | labelled | "
                                          "unconditional | paired (two domain folders, files matched by "
                                          "name) | unpaired (two domain folders) | superres (high-res images) | "
                                          "captioned (images + captions.jsonl or per-image .txt captions)"),
    resolution: int = typer.Option(32, help="square side after resizing (power of two)"),
    channels: int = typer.Option(3, help="1 (grey) or 3 (RGB)"),
    policy: str = typer.Option("fail", help="fail: any rejected file refuses the add | skip: rejects are "
                                            "reported and left out"),
    modes: str = typer.Option("convert", help="convert (RGBA/P/CMYK/16-bit -> L or RGB) | reject"),
    resize: str = typer.Option("crop", help="crop (centre square, then resize) | stretch | reject"),
    duplicates: str = typer.Option("drop", help="drop (report exact duplicates) | keep"),
    report: Optional[Path] = typer.Option(None, help="also write the full ingestion report (JSON) here"),
):
    """Validate SOURCE, version it with DVC (pushed to the remote) and add it to data/catalog.yaml.
    Identical content gives back the existing version; a failed add leaves nothing behind."""
    s = cli_settings()
    from flows.data.datasets import add, report_json
    from flows.ops.console import terminal_console
    from gan_core.files import DiskFullError
    from gan_core.ingest.policy import IngestPolicy
    from gan_core.ingest.report import IngestError

    terminal_console()  # the phases and a count of the images on a TTY

    try:
        pol = IngestPolicy(resolution=resolution, channels=channels, modes=modes, resize=resize,
                           duplicates=duplicates, on_reject=policy)
        out = add(s, name, source, pol, kind)
    except (IngestError, ConfigError, DiskFullError) as e:
        fail(str(e))
    if report is not None:
        report.write_text(report_json(out["report"]))
    r = out["report"]
    typer.echo(f"{r['source']}: {r['accepted']} accepted, {r['rejected_total']} rejected "
               + (f"({', '.join(f'{k}: {v}' for k, v in r['rejected_by_reason'].items())})" if r["rejected_total"] else ""))
    for item in r["rejected"][:20]:
        typer.echo(f"  - {item['path']}: {item['reason']} ({item['detail']})")
    if r["converted"]:
        typer.echo("converted: " + ", ".join(f"{k} x{v}" for k, v in r["converted"].items()))
    if out["created"]:
        typer.echo(f"{name}@{out['version']}: new version, content {out['content_sha256'][:12]}, DVC-tracked and "
                   f"pushed; commit data/catalog.yaml and data/datasets/{name}/ to git")
    else:
        typer.echo(f"{name}@{out['version']}: identical content already catalogued; nothing changed")


@dataset_app.command("list")
def dataset_list():
    """Every catalogued dataset version (latest marked *)."""
    s = cli_settings()
    from flows.data.datasets import listing

    rows = listing(s)
    if not rows:
        typer.echo("no catalogued datasets (built-in: digits, blobs, shapes, captions); add one with "
                   "`ganpipe dataset add`")
    for r in rows:
        what = f"domains={'/'.join(r['domains'])}" if r.get("domains") else \
            f"vocabulary={r['vocabulary']['size']}" if r.get("vocabulary") else \
            f"classes={len(r['classes']) if r.get('classes') else 0}"
        typer.echo(f"{'*' if r['latest'] else ' '} {r['name']}@{r['version']:<4} {r['kind']:<13} {r['count']:>7} images "
                   f"{r['resolution']}x{r['resolution']}x{r['channels']} {what} "
                   f"sha={r['content_sha256'][:12]} {r['created']} {r['source']}")


@dataset_app.command("show")
def dataset_show(spec: str = typer.Argument(..., help="NAME or NAME@VERSION"),
                 grid: Path = typer.Option(Path("dataset.png"), help="where to write a sample grid PNG")):
    """Statistics of one dataset version (restored with dvc pull if needed), a sample grid, and a few
    images' captions for captioned data."""

    s = cli_settings()
    from flows.data.datasets import show
    from gan_core.config import DATASET_RE

    m = DATASET_RE.match(spec)
    if not m:
        fail(f"{spec!r}: expected NAME or NAME@vN")
    try:
        out = show(s, m["name"], None if m["version"] in (None, "latest") else m["version"], grid)
    except ConfigError as e:
        fail(f"{spec}: {e.reason}")
    typer.echo(json.dumps(out, indent=2, sort_keys=True))
