"""Stage 1, prepare: the dataset named by data.name, ready for training and evaluation, in
data/prepared/<data.name>/ (the folder dvc.yaml tracks).

A catalogued dataset (`ganpipe dataset add`) is restored from DVC if needed, checked against its
catalog hash and copied in, with the reference statistics of eval.backbone computed if its version
does not carry them yet. A built-in name (digits, blobs, shapes) is built from its source.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

from flows import catalog
from flows.settings import Settings
from flows.sources import read_builtin
from gan_core.config import PipelineConfig
from gan_core.data import load_manifest, load_prepared, normalise_images, write_prepared
from gan_core.files import replace_dir
from gan_core.metrics.evaluator import build_evaluator


def prepare(settings: Settings, cfg: PipelineConfig) -> dict:
    """Write data/prepared/<name>/ atomically; returns a reference (path, hash, count), not data."""
    d, out = cfg.data, settings.prepared_dir(cfg.data.name)
    if d.dataset in catalog.load(settings.workspace)["datasets"]:
        return _from_catalog(settings, cfg, out)
    source, (raw, labels) = read_builtin(d.dataset)
    images = normalise_images(raw, d.resolution, d.channels)
    meta = {"name": d.dataset, "version": "built-in", "source": source, "resolution": d.resolution,
            "channels": d.channels}
    torch.manual_seed(0)
    evaluator: dict = {}
    manifest = write_prepared(out, images, labels, meta,
                              extras=lambda tmp, m: evaluator.update(
                                  build_evaluator(tmp, images, labels, m, backbones=(cfg.eval.backbone,))))
    return {"path": str(out), "content_sha256": manifest["content_sha256"], "count": manifest["count"],
            "version": "built-in", "backbone": evaluator}


def _from_catalog(settings: Settings, cfg: PipelineConfig, out: Path) -> dict:
    from flows.datasets import restore

    version, folder, entry = restore(settings, cfg.data.dataset, cfg.data.version)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        shutil.copytree(folder, tmp, dirs_exist_ok=True)
        backbone = cfg.eval.backbone
        if not (tmp / "ref_stats" / backbone / "stats.json").is_file():  # lazily, once per prepared copy
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
