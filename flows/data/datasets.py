"""`ganpipe dataset add|list|show`: sources -> validated, versioned, catalogued datasets.

An add runs in this order, and anything that fails undoes what came before it:
  1. fetch + ingest under the policy (in memory; rejects reported, or the add refused)
  2. identical content to an existing version -> that version, nothing written
  3. write data/datasets/NAME/vN/ (prepared format + FID backbone and reference statistics + report)
  4. `dvc add` it (a vN.dvc file for git) and `dvc push` it to the remote
  5. write the catalog entry (the only step that makes the version visible)
"""
from __future__ import annotations

import datetime as dt
import json
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from flows.data import catalog
from flows.data import versioning
from flows.ops.console import counting, say
from flows.ops.settings import Settings
from flows.data.sources import fetch, workdir
from gan_core.config import NAME_RE, ConfigError
from gan_core.data import CaptionData, caption_data, content_hash, load_manifest, load_prepared, write_prepared
from gan_core.files import write_json_atomic
from gan_core.ingest.ingest import KINDS, IngestResult, ingest, read_local
from gan_core.ingest.policy import IngestPolicy
from gan_core.ingest.readers import array_entries
from gan_core.ingest.report import IngestError
from gan_core.metrics.evaluator import DOMAIN, build_evaluator

def read(source: str, policy: IngestPolicy, kind: str) -> IngestResult:
    with workdir() as tmp:
        got = fetch(source, Path(tmp))
        if got.path is not None:
            return read_local(got.path, policy, kind, watch=lambda entries: counting(entries, len(entries), "checked"))
        if kind in ("paired", "unpaired"):
            raise IngestError(f"{source}: --kind {kind} needs a folder or archive with two domain sub-folders")
        if kind == "captioned":
            raise IngestError(f"{source}: --kind captioned needs a folder or archive of images with "
                              "captions.jsonl or per-image .txt captions")
        images, labels = got.arrays
        if kind in ("unconditional", "superres"):
            labels = None
        result = ingest(counting(array_entries(images, labels, source, got.class_names), len(images), "checked"),
                        policy, source)
        return replace(result, kind="superres") if kind == "superres" else result


HELDOUT_FRACTION = 0.1  # of an image-to-image dataset's rows, never trained on: what its families are scored on


def with_heldout(result: IngestResult, seed: int = 0) -> tuple[IngestResult, int]:
    """Image-to-image and captioned data in a seeded order whose last rows are held out (a tenth, at
    least one). Paired rows, and images with their captions, move together; unpaired domains are
    shuffled independently (nothing aligns them)."""
    if result.kind not in ("paired", "unpaired", "superres", "captioned"):
        return result, 0
    g = np.random.default_rng(seed)
    n = len(result.images)
    perm = g.permutation(n)
    images_b = result.images_b
    if images_b is not None:
        images_b = images_b[perm] if result.kind == "paired" else images_b[g.permutation(len(images_b))]
    heldout = max(1, round(HELDOUT_FRACTION * min(n, len(images_b) if images_b is not None else n)))
    if n - heldout < 1:
        raise IngestError(f"{result.report.source}: {n} image(s) leave nothing to train on after holding out "
                          f"{heldout} for evaluation")
    captions = [result.captions[i] for i in perm] if result.captions is not None else None
    attributes = result.attributes[perm] if result.attributes is not None else None
    return replace(result, images=result.images[perm], images_b=images_b, keys=None, captions=captions,
                   attributes=attributes), heldout


def captions_of(result: IngestResult, heldout: int) -> CaptionData | None:
    """Captioned data's ids and vocabulary (of the training rows): what the version carries."""
    return caption_data(result.captions, heldout, result.attributes) if result.kind == "captioned" else None


def add(settings: Settings, name: str, source: str, policy: IngestPolicy, kind: str = "auto") -> dict:
    if not NAME_RE.match(name):
        raise ConfigError("NAME", f"{name!r} must match {NAME_RE.pattern} (lower-case letters, digits, '-', '_')")
    if kind not in KINDS:
        raise ConfigError("--kind", f"must be one of {KINDS}, got {kind!r}")
    say(f"reading {source} ...")
    result, heldout = with_heldout(read(source, policy, kind))
    captions = captions_of(result, heldout)
    ws = settings.workspace
    with catalog.locked(ws):
        data = catalog.load(ws)
        sha = content_hash(result.images, result.labels, result.images_b, captions)
        existing = catalog.find_content(data, name, sha)
        if existing:
            return {"name": name, "version": existing, "created": False, "content_sha256": sha,
                    "report": result.report.to_dict()}
        version = catalog.next_version(data, name)
        folder = catalog.version_dir(ws, name, version)
        dvc_file = folder.with_name(version + ".dvc")
        gitignore = folder.parent / ".gitignore"
        before = gitignore.read_text() if gitignore.exists() else None
        try:
            say(f"writing {name}@{version} ({len(result.images):,} images) and its reference statistics ...")
            manifest = _write_version(folder, name, version, source, policy, result, heldout, captions)
            say("dvc add and push ...")
            versioning.ensure_repo(settings)
            versioning.dvc(settings, "add", "--quiet", str(folder.relative_to(ws)))
            versioning.dvc(settings, "push", "--quiet", "-r", settings.dvc_remote, str(dvc_file.relative_to(ws)))
            entry = _entry(settings, manifest, source, policy, result, dvc_file)
            catalog.save(ws, catalog.with_version(data, name, version, entry))
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            dvc_file.unlink(missing_ok=True)
            if before is None:
                gitignore.unlink(missing_ok=True)
            else:
                gitignore.write_text(before)
            raise
    return {"name": name, "version": version, "created": True, "content_sha256": sha,
            "report": result.report.to_dict(), "path": str(folder)}


def _write_version(folder: Path, name: str, version: str, source: str, policy: IngestPolicy,
                   result: IngestResult, heldout: int = 0, captions: CaptionData | None = None) -> dict:
    meta = {"name": name, "version": version, "kind": result.kind, "source": source,
            **({"heldout": heldout} if heldout else {}),
            "resolution": policy.resolution, "channels": policy.channels,
            ("domains" if result.images_b is not None else "classes"): result.classes}
    labels = result.labels

    def extras(tmp: Path, manifest: dict) -> None:
        write_json_atomic(tmp / "report.json", result.report.to_dict())
        if labels is not None:
            torch.manual_seed(0)
            # the domain classifier and its reference statistics travel with the version; Inception
            # statistics (slow on CPU, weights rarely present offline) are computed by prepare on demand
            build_evaluator(tmp, result.images, labels, manifest, backbones=(DOMAIN,))

    return write_prepared(folder, result.images, labels, meta, extras=extras, images_b=result.images_b,
                          captions=captions)


def _entry(settings: Settings, manifest: dict, source: str, policy: IngestPolicy, result: IngestResult,
           dvc_file: Path) -> dict:
    import yaml

    out = yaml.safe_load(dvc_file.read_text())["outs"][0]
    return {
        "content_sha256": manifest["content_sha256"], "dvc_md5": out["md5"],
        "dvc_file": dvc_file.relative_to(settings.workspace).as_posix(),
        "kind": manifest["kind"], "count": manifest["count"],
        "resolution": policy.resolution, "channels": policy.channels,
        **({"domains": result.classes, "count_b": manifest["count_b"]} if result.images_b is not None else
           {"classes": result.classes, "class_counts": (manifest["labels"] or {}).get("counts")}),
        **({"vocabulary": manifest["vocabulary"], "heldout": manifest["heldout"]} if "vocabulary" in manifest else {}),
        "source": source, "policy": {k: v for k, v in asdict(policy).items() if k != "formats"},
        "rejected": result.report.counts,
        "created": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
    }


def restore(settings: Settings, name: str, version: str | None) -> tuple[str, Path, dict]:
    """A catalogued version on disk, bit for bit: `dvc pull` it if missing, then check its hash."""
    ws = settings.workspace
    version, entry = catalog.resolve(catalog.load(ws), name, version)
    folder = catalog.version_dir(ws, name, version)
    if not (folder / "manifest.json").is_file():
        versioning.ensure_repo(settings)
        versioning.dvc(settings, "pull", "--quiet", "-r", settings.dvc_remote, entry["dvc_file"])
    manifest = load_manifest(folder)
    if manifest["content_sha256"] != entry["content_sha256"]:
        raise IngestError(f"{folder}: content {manifest['content_sha256'][:12]} differs from the catalog's "
                          f"{entry['content_sha256'][:12]} for {name}@{version}")
    return version, folder, entry


def show(settings: Settings, name: str, version: str | None, grid_png: Path | None) -> dict:
    version, folder, entry = restore(settings, name, version)
    ds = load_prepared(folder)
    stats = {"name": name, "version": version, **entry,
             "pixel_mean": round(float(ds.images.mean()), 3), "pixel_std": round(float(ds.images.std()), 3),
             "path": str(folder)}
    if grid_png is not None:
        from gan_core.data import to_float
        from gan_core.images import make_grid, save_png

        order = np.argsort(ds.labels, kind="stable") if ds.labels is not None else np.arange(len(ds.images))
        pick = order[np.linspace(0, len(order) - 1, min(64, len(order))).astype(int)]
        save_png(grid_png, make_grid(to_float(torch.from_numpy(ds.images[pick])), 8),
                 {"dataset": name, "version": version, "content_sha256": entry["content_sha256"]})
        stats["grid"] = str(grid_png)
    if ds.caption_texts is not None:  # a few images' captions, spread over the rows
        rows = np.linspace(0, len(ds.caption_texts) - 1, min(SHOWN_CAPTIONS, len(ds.caption_texts))).astype(int)
        stats["captions"] = {f"row {int(i)}": ds.caption_texts[i] for i in rows}
    return stats


SHOWN_CAPTIONS = 5


def listing(settings: Settings) -> list[dict]:
    data = catalog.load(settings.workspace)
    rows = []
    for name, ds in sorted(data["datasets"].items()):
        for v, e in sorted(ds["versions"].items(), key=lambda kv: int(kv[0][1:])):
            rows.append({"name": name, "version": v, "latest": v == ds["latest"], **e})
    return rows


def report_json(result: dict) -> str:
    return json.dumps(result, indent=2, sort_keys=True)
