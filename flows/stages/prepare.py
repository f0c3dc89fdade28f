"""Stage 1, prepare: the dataset named by data.name, ready for training and evaluation, in
data/prepared/<data.name>/ (the folder dvc.yaml tracks).

A catalogued dataset (`ganpipe dataset add`) is restored from DVC if needed, checked against its
catalog hash and copied in, with the reference statistics of eval.backbone computed if its version
does not carry them yet. A built-in name (digits, blobs, shapes; edges2digits, edges2photos, digits-inverted, photo-patches
for the image-conditioned families) is built from its source.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

from flows.data import catalog
from flows.ops.settings import Settings
from flows.data.sources import CAPTION_BUILTINS, IMAGE_BUILTINS, caption_builtin, read_builtin
from gan_core.config import PipelineConfig
from gan_core.data import load_manifest, load_prepared, normalise_images, write_prepared
from gan_core.files import replace_dir
from gan_core.metrics.evaluator import build_evaluator
from gan_core.models import family_for


def prepare(settings: Settings, cfg: PipelineConfig) -> dict:
    """Write data/prepared/<name>/ atomically; returns a reference (path, hash, count), not data."""
    d, out = cfg.data, settings.prepared_dir(cfg.data.name)
    if d.dataset in catalog.load(settings.workspace)["datasets"]:
        return _from_catalog(settings, cfg, out)
    meta = {"name": d.dataset, "version": "built-in", "resolution": d.resolution, "channels": d.channels}
    images_b = captions = None
    if d.dataset in CAPTION_BUILTINS:  # captioned shapes, drawn at data.resolution
        images, captions, more = caption_builtin(d.dataset, d.resolution, d.channels)
        labels = None
        meta.update(more)
    elif d.dataset in IMAGE_BUILTINS:
        from gan_core.pairs import PAIRED_BUILTINS

        pairs = PAIRED_BUILTINS[d.dataset]()
        images, labels = normalise_images(pairs.images, d.resolution, d.channels), None
        if pairs.images_b is not None:
            images_b = normalise_images(pairs.images_b, d.resolution, d.channels)
        meta.update(source=pairs.source, kind=pairs.kind, heldout=pairs.heldout,
                    heldout_aligned=pairs.heldout_aligned, **({"domains": list(pairs.domains)} if pairs.domains else {}))
    else:
        source, (raw, labels) = read_builtin(d.dataset)
        images = normalise_images(raw, d.resolution, d.channels)
        meta["source"] = source
    torch.manual_seed(0)
    evaluator: dict = {}
    # image-conditioned families score held-out pairs (no feature backbone); the others need one
    wants_backbone = not family_for(cfg.model).image_input
    manifest = write_prepared(out, images, labels, meta, images_b=images_b, captions=captions,
                              extras=lambda tmp, m: wants_backbone and evaluator.update(
                                  build_evaluator(tmp, images, labels, m, backbones=(cfg.eval.backbone,))))
    return {"path": str(out), "content_sha256": manifest["content_sha256"], "count": manifest["count"],
            "version": "built-in", "backbone": evaluator}


def _from_catalog(settings: Settings, cfg: PipelineConfig, out: Path) -> dict:
    from flows.data.datasets import restore

    version, folder, entry = restore(settings, cfg.data.dataset, cfg.data.version)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        shutil.copytree(folder, tmp, dirs_exist_ok=True)
        backbone = cfg.eval.backbone
        wants_backbone = not family_for(cfg.model).image_input  # those score held-out pairs instead
        if wants_backbone and not (tmp / "ref_stats" / backbone / "stats.json").is_file():  # lazily, once per copy
            ds = load_prepared(tmp)
            torch.manual_seed(0)
            build_evaluator(tmp, ds.images, ds.labels, ds.manifest, backbones=(backbone,))
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    manifest = load_manifest(out)
    return {"path": str(out), "content_sha256": manifest["content_sha256"], "count": manifest["count"],
            "version": version}
