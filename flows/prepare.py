"""Stage 1, prepare: source -> validated, normalised dataset + manifest + FID evaluator files."""
from __future__ import annotations

import torch

from flows.settings import Settings
from flows.sources import read_source
from gan_core.config import PipelineConfig
from gan_core.data import normalise_images, write_prepared
from gan_core.metrics.evaluator import build_evaluator


def prepare(settings: Settings, cfg: PipelineConfig) -> dict:
    """Write data/prepared/<name>/ atomically; returns a reference (path, hash, count), not data."""
    d = cfg.data
    raw, labels = read_source(d.source)
    images = normalise_images(raw, d.resolution, d.channels)
    meta = {"name": d.name, "source": d.source, "resolution": d.resolution, "channels": d.channels}
    torch.manual_seed(0)
    evaluator: dict = {}
    manifest = write_prepared(settings.prepared_dir(d.name), images, labels, meta,
                              extras=lambda tmp, m: evaluator.update(
                                  build_evaluator(tmp, images, labels, m, backbones=(cfg.eval.backbone,))))
    return {"path": str(settings.prepared_dir(d.name)), "content_sha256": manifest["content_sha256"],
            "count": manifest["count"], "backbone": evaluator}
