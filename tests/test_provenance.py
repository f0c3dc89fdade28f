"""Signed provenance on generated PNGs and `ganpipe provenance`: round trip, tampering (a byte of a
chunk, the pixels, the key id), missing key, another key, unsigned files, and the key file rules.
Fast: no services (the CLI runs in-process outside any workspace, so only the environment's key counts)."""
from __future__ import annotations

import io
import os
import stat
import struct
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image, PngImagePlugin
from typer.testing import CliRunner

from flows.cli.app import app
from flows.cli.provenance import EXIT
from flows.ops.signing import ProvenanceKeyError, signing_key, verifying_key
from gan_core.images import PROVENANCE_CHUNK, SIGNATURE_CHUNK, grid_fields, make_grid, read_signed, save_png
from gan_core.provenance import key_id

KEY = b"test-key-0123456789abcdef"
FIELDS = {"model": "models:/gan-blobs/3", "model_name": "gan-blobs", "model_version": "3",
          "mlflow_run_id": "0f1e2d", "dataset_sha256": "ab" * 32, "seed": 7, "n": 4}


@pytest.fixture
def grid():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 16, 16, generator=g) * 2 - 1
    return make_grid(images, 2)


@pytest.fixture
def cli(tmp_path, monkeypatch):
    """`ganpipe provenance` in-process, outside any workspace, with a given key (or none)."""
    monkeypatch.chdir(tmp_path)
    for k in ("GANPIPE_WORKSPACE", "GANPIPE_HOME", "GANPIPE_PROVENANCE_KEY", "GANPIPE_PROVENANCE_KEY_FILE",
              "GANPIPE_ENV_FILE"):
        monkeypatch.delenv(k, raising=False)

    def run(path, key: bytes | None = KEY, *extra):
        env = {"GANPIPE_PROVENANCE_KEY": key.decode()} if key else {}
        return CliRunner().invoke(app, ["provenance", str(path), *extra], env=env)
    return run


def _chunks(data: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """(type, body, stored CRC) of each PNG chunk."""
    out, i = [], 8
    while i < len(data):
        n, = struct.unpack(">I", data[i:i + 4])
        out.append((data[i + 4:i + 8], data[i + 8:i + 8 + n], data[i + 8 + n:i + 12 + n]))
        i += 12 + n
    return out


def _edit_text(path: Path, keyword: bytes, fix_crc: bool) -> None:
    """Change one byte of the tEXt chunk `keyword`: an attacker recomputes its CRC, damage does not."""
    out = [b"\x89PNG\r\n\x1a\n"]
    for kind, body, crc in _chunks(path.read_bytes()):
        if kind == b"tEXt" and body.startswith(keyword + b"\0"):
            i = body.rindex(b"7") if keyword == b"ganpipe" else len(body) - 3  # the seed, or a hex digit of the mac
            body = body[:i] + (b"8" if body[i:i + 1] != b"8" else b"9") + body[i + 1:]
            if fix_crc:
                crc = struct.pack(">I", zlib.crc32(kind + body))
        out.append(struct.pack(">I", len(body)) + kind + body + crc)
    path.write_bytes(b"".join(out))


def test_round_trip_verifies_and_prints_every_field(tmp_path, grid, cli):
    path = save_png(tmp_path / "s.png", grid, {**FIELDS, **grid_fields(4, 2)}, key=KEY)
    r = cli(path)
    assert r.exit_code == EXIT["verified"] == 0, r.output
    for k in ("model_name", "model_version", "mlflow_run_id", "dataset_sha256", "seed", "grid"):
        assert k in r.output
    assert f"verified: signed with key {key_id(KEY)}" in r.output
    # re-compressing the same pixels and chunks keeps the signature: it covers decoded pixels, not zlib bytes
    text, sig, pixels = read_signed(path)
    info = PngImagePlugin.PngInfo()
    info.add_text(PROVENANCE_CHUNK, text)
    info.add_text(SIGNATURE_CHUNK, sig)
    Image.fromarray(pixels).save(tmp_path / "re.png", pnginfo=info, compress_level=1)
    assert (tmp_path / "re.png").read_bytes() != path.read_bytes()
    assert cli(tmp_path / "re.png").exit_code == 0


@pytest.mark.parametrize("keyword", [b"ganpipe", b"ganpipe-signature"])
@pytest.mark.parametrize("fix_crc", [True, False])
def test_one_byte_of_a_chunk_changed_is_altered(tmp_path, grid, cli, keyword, fix_crc):
    path = save_png(tmp_path / "s.png", grid, FIELDS, key=KEY)
    _edit_text(path, keyword, fix_crc)
    r = cli(path, KEY, "--json")
    assert r.exit_code == EXIT["altered"] == 3, r.output
    assert '"status": "altered"' in r.output


def test_changed_pixels_are_altered(tmp_path, grid, cli):
    path = save_png(tmp_path / "s.png", grid, FIELDS, key=KEY)
    text, sig, pixels = read_signed(path)
    pixels = pixels.copy()
    pixels[5, 5, 0] ^= 1  # one bit of one pixel
    info = PngImagePlugin.PngInfo()
    info.add_text(PROVENANCE_CHUNK, text)
    info.add_text(SIGNATURE_CHUNK, sig)
    Image.fromarray(pixels).save(path, pnginfo=info)
    r = cli(path)
    assert r.exit_code == 3 and "pixels changed" in r.output, r.output


def test_edited_key_id_is_altered_not_another_key(tmp_path, grid, cli):
    path = save_png(tmp_path / "s.png", grid, FIELDS, key=KEY)
    text, sig, pixels = read_signed(path)
    info = PngImagePlugin.PngInfo()
    info.add_text(PROVENANCE_CHUNK, text)
    info.add_text(SIGNATURE_CHUNK, sig.replace(key_id(KEY), "00000000"))
    Image.fromarray(pixels).save(path, pnginfo=info)
    r = cli(path)
    assert r.exit_code == 3 and "key id was changed" in r.output, r.output


def test_missing_key_and_other_key(tmp_path, grid, cli):
    path = save_png(tmp_path / "s.png", grid, FIELDS, key=KEY)
    r = cli(path, None)
    assert r.exit_code == EXIT["no-key"] == 5 and "no key is available" in r.output, r.output
    r = cli(path, b"another-key-0123456789")
    assert r.exit_code == EXIT["other-key"] == 6 and f"signed with key {key_id(KEY)}" in r.output, r.output


def test_unsigned_and_stripped_files(tmp_path, grid, cli):
    unsigned = save_png(tmp_path / "u.png", grid, FIELDS)  # no key: fields, no signature
    r = cli(unsigned)
    assert r.exit_code == EXIT["unsigned"] == 4 and "no signature" in r.output, r.output
    Image.fromarray(grid).save(tmp_path / "plain.png")  # no ganpipe chunks at all
    r = cli(tmp_path / "plain.png")
    assert r.exit_code == 4 and "no ganpipe provenance metadata" in r.output, r.output
    signed = save_png(tmp_path / "s.png", grid, FIELDS, key=KEY)  # signature kept, fields removed
    _, sig, pixels = read_signed(signed)
    info = PngImagePlugin.PngInfo()
    info.add_text(SIGNATURE_CHUNK, sig)
    Image.fromarray(pixels).save(signed, pnginfo=info)
    assert cli(signed).exit_code == 3
    (tmp_path / "junk.png").write_bytes(b"not an image")
    r = cli(tmp_path / "junk.png")
    assert r.exit_code == 2 and "cannot be read as an image" in r.output, r.output


def test_watermark_found_when_metadata_is_gone(tmp_path, cli):
    g = torch.Generator().manual_seed(1)
    path = save_png(tmp_path / "w.png", make_grid(torch.rand(4, 3, 16, 16, generator=g) * 2 - 1, 2), FIELDS,
                    key=KEY, watermark=True)
    assert cli(path).exit_code == 0  # the watermark is part of the signed pixels
    buf = io.BytesIO()
    Image.open(path).convert("RGB").save(buf, format="JPEG", quality=90)  # metadata gone, pixels re-encoded
    (tmp_path / "w.jpg").write_bytes(buf.getvalue())
    r = cli(tmp_path / "w.jpg")
    assert r.exit_code == EXIT["watermark"] == 7, r.output
    assert f"key {key_id(KEY)} (matches the key here" in r.output
    assert "another key" in cli(tmp_path / "w.jpg", b"another-key-0123456789").output
    with pytest.raises(ValueError, match="signing key"):
        save_png(tmp_path / "x.png", make_grid(torch.zeros(1, 3, 16, 16), 1), FIELDS, watermark=True)


def test_key_file_created_0600_once_and_checked(tmp_path):
    home = tmp_path / "home"
    assert verifying_key(home, env={}) is None  # verifying never creates one
    key = signing_key(home, env={})
    f = home / "provenance.key"
    assert stat.S_IMODE(f.stat().st_mode) == 0o600 and len(key) == 64
    assert signing_key(home, env={}) == key == verifying_key(home, env={})
    os.chmod(f, 0o644)
    with pytest.raises(ProvenanceKeyError, match="chmod 600"):
        signing_key(home, env={})
    with pytest.raises(ProvenanceKeyError, match="GANPIPE_PROVENANCE_KEY: .* at least 16"):
        signing_key(home, env={"GANPIPE_PROVENANCE_KEY": "short"})
    with pytest.raises(ProvenanceKeyError, match="no such file"):
        signing_key(home, env={"GANPIPE_PROVENANCE_KEY_FILE": str(tmp_path / "missing.key")})
    assert signing_key(home, env={"GANPIPE_PROVENANCE_KEY": KEY.decode()}) == KEY  # the environment wins


@pytest.mark.slow
def test_stage_grid_and_sampled_png_carry_verified_lineage(tmp_path, prepared_blobs):
    """The real evaluate and register stages on SQLite MLflow, then `ganpipe sample --watermark` of the
    registered version: every PNG is signed with the key created under GANPIPE_HOME and names its
    MLflow run and dataset hash (and, once registered, the model name and version)."""
    import shutil

    from conftest import tiny_config
    from flows.cli.provenance import inspect, source_fields
    from flows.ops.settings import Settings
    from flows.registry.tracking import model_name
    from flows.stages.evaluate import evaluate
    from flows.stages.register import register
    from gan_core.data import load_manifest
    from test_faults_registry import make_candidate
    from workspace import ganpipe

    ws = tmp_path / "ws"
    home = ws / ".ganpipe"  # where tests/workspace.py's env puts GANPIPE_HOME
    shutil.copytree(prepared_blobs, ws / "data" / "prepared" / "blobs")
    home.mkdir(parents=True)
    settings = Settings(workspace=ws, home=home, mlflow_uri=f"sqlite:///{home / 'mlflow.db'}", ray_address=None,
                        dvc_remote="ganpipe-local", dvc_remote_url=None, ray_storage=str(home / "ray_results"))
    cfg = tiny_config(data={"name": "blobs"})
    cand = make_candidate(settings, cfg, seed=1)
    dataset = load_manifest(settings.prepared_dir("blobs"))["content_sha256"]
    evaluate(settings, cfg)
    key = verifying_key(home, env={})
    assert key is not None and stat.S_IMODE((home / "provenance.key").stat().st_mode) == 0o600
    grid = inspect(settings.reports_dir / "samples.png", key)
    assert grid["status"] == "verified", grid
    f = grid["fields"]
    assert (f["mlflow_run_id"], f["dataset_sha256"], f["checkpoint_sha256"]) == (cand["mlflow_run_id"], dataset,
                                                                              cand["checkpoint_sha256"])
    assert f["grid"]["cells"] == cfg.eval.grid ** 2 and f["grid"]["columns"] == cfg.eval.grid

    ckpt = source_fields(settings, str(settings.candidate_dir / "checkpoint.pt"))  # an unregistered checkpoint
    assert (ckpt["checkpoint_sha256"], ckpt["mlflow_run_id"], ckpt["dataset_sha256"]) == (
        cand["checkpoint_sha256"], cand["mlflow_run_id"], dataset)

    version = register(settings, cfg, {})["version"]
    out = tmp_path / "s.png"
    r = ganpipe(ws, "sample", f"models:/{model_name(cfg)}@champion", "--n", "4", "--watermark", "--out", str(out),
                timeout=300, GANPIPE_WORKSPACE=str(ws), MLFLOW_TRACKING_URI=settings.mlflow_uri)
    assert r.returncode == 0, r.stderr
    report = inspect(out, key)
    assert report["status"] == "verified", report
    f = report["fields"]
    assert (f["model_name"], f["model_version"], f["mlflow_run_id"], f["dataset_sha256"], f["seed"]) == (
        model_name(cfg), version, cand["mlflow_run_id"], dataset, 0)
    assert f["grid"] == {**grid_fields(4, 2)["grid"]} and f["watermark"]["bits"] == 64
