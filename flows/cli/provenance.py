"""`ganpipe provenance IMAGE`: the fields a generated image carries and whether its signature holds;
and what the writing commands share: the source fields of a model and a signed (optionally
watermarked) PNG write.

Exit codes (distinct so scripts can branch on them):
  0 verified            fields and pixels as signed, with the key here
  2 error               the file cannot be read (or the key configuration is broken)
  3 altered             fields, pixels or signature changed since signing, or a chunk checksum fails
  4 unsigned            no signed ganpipe metadata and no watermark found
  5 no key              signed, but no key is configured here to verify it
  6 other key           signed with a key other than the one configured here
  7 watermark only      metadata gone, but the invisible watermark was found (key id and tag shown)
"""
from __future__ import annotations

import json
from pathlib import Path

import typer

from flows.cli.app import app, fail
from gan_core.files import file_sha256

KEY_BITS_OFF = 3  # watermark key-id bits that may differ and still name the key here
EXIT = {"verified": 0, "altered": 3, "unsigned": 4, "no-key": 5, "other-key": 6, "watermark": 7}


def _home():
    """GANPIPE_HOME as settings resolve it, or None outside a workspace (then only the env key counts)."""
    from flows.ops.settings import SettingsError, load_settings

    try:
        return load_settings().home
    except SettingsError:
        return None


def _registered_fields(s, model: str) -> dict:
    """Name, version, MLflow run and dataset hash of models:/NAME/VERSION or models:/NAME@ALIAS,
    from the version's lineage tags (flows.stages.register.lineage_tags)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    ref = model[len("models:/"):]
    name, alias = ref.split("@", 1) if "@" in ref else (ref.rsplit("/", 1)[0], None)
    c = MlflowClient(s.mlflow_uri)
    try:
        mv = c.get_model_version_by_alias(name, alias) if alias else c.get_model_version(name, ref.rsplit("/", 1)[1])
    except MlflowException as e:
        fail(f"{model}: cannot read its registry entry for provenance: {e.message.splitlines()[0]}")
    tags = mv.tags or {}
    return {"model_name": name, "model_version": str(mv.version), "mlflow_run_id": tags.get("mlflow.run_id", mv.run_id),
            "dataset_sha256": tags.get("dataset.content_sha256"), "checkpoint_sha256": tags.get("checkpoint.sha256")}


def _checkpoint_fields(model: str) -> dict:
    """An unregistered checkpoint: its path and hash, its dataset hash, and the MLflow run of the
    train record beside it when that record names this very checkpoint."""
    from gan_core.checkpoint import CheckpointError, load_checkpoint

    path = Path(model).resolve()
    try:
        meta = load_checkpoint(path).get("meta") or {}
    except CheckpointError as e:
        fail(f"{model}: refused: {e}")
    digest = file_sha256(path)
    out = {"checkpoint": str(path), "checkpoint_sha256": digest, "dataset_sha256": meta.get("dataset_sha256")}
    record = path.parent / "train.json"
    try:
        train = json.loads(record.read_text())
    except (OSError, ValueError):
        train = {}
    if train.get("checkpoint_sha256") == digest and train.get("mlflow_run_id"):
        out["mlflow_run_id"] = train["mlflow_run_id"]
    return out


def source_fields(s, model: str) -> dict:
    """Where a generator came from, as every image it draws records it."""
    return _registered_fields(s, model) if model.startswith("models:/") else _checkpoint_fields(model)


def write_png(s, out: Path, array, provenance: dict, watermark: bool = False) -> Path:
    """save_png, signed with the configured key (created under GANPIPE_HOME on first use)."""
    from flows.ops.signing import ProvenanceKeyError, signing_key
    from gan_core.images import save_png
    from gan_core.watermark import WatermarkError

    try:
        return save_png(out, array, provenance, key=signing_key(s.home), watermark=watermark)
    except (ProvenanceKeyError, WatermarkError) as e:
        fail(str(e))


def inspect(path: Path, key: bytes | None) -> dict:
    """The report `ganpipe provenance` prints: fields, verdict, and the watermark when metadata is gone."""
    from gan_core.images import png_damage, read_signed
    from gan_core.provenance import ALTERED, UNSIGNED, key_id, pixels_sha256, verify

    damage = png_damage(path.read_bytes())
    if damage:  # bytes of the file were edited or damaged: Pillow would not even open it
        return {"image": str(path), "status": ALTERED, "detail": f"the PNG was edited or damaged: {damage}",
                "fields": None}
    text, signature, pixels = read_signed(path)
    v = verify(text, signature, pixels_sha256(pixels), key)
    try:
        fields = json.loads(text) if text is not None else None
    except ValueError:
        fields = None
    report = {"image": str(path), "status": v.status, "detail": v.detail, "fields": fields}
    if v.status == UNSIGNED and signature is None:
        from gan_core import watermark as wm

        reading = wm.detect(pixels)
        if reading.present:
            report.update(status="watermark", detail="no signed metadata, but a ganpipe watermark was found")
            report["watermark"] = {"score": round(reading.score, 4), "key_id": reading.key_id,
                                   "tag": f"{reading.tag:08x}", "key_matches": None}
            if key is not None:  # a few bits may flip after JPEG or resizing: 3 of 32 is ~1e-7 by chance
                off = wm.bit_errors(int(reading.key_id, 16), int(key_id(key), 16), 32)
                report["watermark"].update(key_matches=off <= KEY_BITS_OFF, key_bits_off=off)
                if off <= KEY_BITS_OFF:
                    report["watermark"]["key_id"] = key_id(key)
    return report


@app.command()
def provenance(image: Path = typer.Argument(..., help="a PNG (or any image) written by ganpipe"),
               as_json: bool = typer.Option(False, "--json", help="print one JSON object")):
    """Print where a generated image came from and verify its signature (exit 0 only when verified;
    3 altered, 4 unsigned, 5 no key here, 6 signed with another key, 7 watermark only)."""
    from flows.ops.signing import ProvenanceKeyError, verifying_key

    if not image.is_file():
        fail(f"{image}: no such file")
    try:
        key = verifying_key(_home())
    except ProvenanceKeyError as e:
        fail(str(e))
    try:
        report = inspect(image, key)
    except OSError as e:  # not an image Pillow can read
        fail(f"{image}: cannot be read as an image ({e})")
    if as_json:
        typer.echo(json.dumps(report, indent=2, sort_keys=True))
    else:
        for k, v in sorted((report["fields"] or {}).items()):
            typer.echo(f"{k:<18} {json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v}")
        if "watermark" in report:
            w = report["watermark"]
            match = {None: "no key here to compare", False: "another key",
                     True: f"matches the key here, {w.get('key_bits_off')} of 32 bits off"}
            typer.echo(f"watermark          key {w['key_id']} ({match[w['key_matches']]}), tag {w['tag']}, "
                       f"score {w['score']}")
        typer.echo(f"verdict            {report['status']}: {report['detail']}")
    raise typer.Exit(EXIT[report["status"]])
