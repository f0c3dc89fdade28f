"""Sample grids and PNG files that say where they came from."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, PngImagePlugin

from gan_core.data import to_uint8
from gan_core.files import write_bytes_atomic
from gan_core.ingest.decode import load_pixels, open_checked, to_target_mode
from gan_core.ingest.policy import IngestPolicy
from gan_core.ingest.report import Rejected


def make_grid(images: torch.Tensor, nrow: int, pad: int = 1, scale: int = 4) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (rows*(H+pad)+pad, ...)*scale uint8 grid, HWC (C=3) or HW (C=1).
    Upscaled with nearest neighbour so small images stay inspectable."""
    x = to_uint8(images.detach().cpu())
    n, c, h, w = x.shape
    rows = (n + nrow - 1) // nrow
    grid = torch.zeros(c, rows * (h + pad) + pad, nrow * (w + pad) + pad, dtype=torch.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, top:top + h, left:left + w] = x[i]
    grid = grid.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    arr = grid.permute(1, 2, 0).numpy()
    return arr[..., 0] if c == 1 else arr


PROVENANCE_CHUNK = "ganpipe"  # tEXt: the provenance fields, canonical JSON (gan_core.provenance.canonical)
SIGNATURE_CHUNK = "ganpipe-signature"  # tEXt: the signature record over that text and the pixels


def save_png(path: str | Path, array: np.ndarray, provenance: dict, key: bytes | None = None,
             watermark: bool = False) -> Path:
    """Write a PNG whose text chunk `ganpipe` holds provenance (model, step, seed, ...) as JSON,
    signed with `key` when given (and watermarked when asked: see png_bytes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, png_bytes(array, provenance, key, watermark))
    return path


def png_bytes(array: np.ndarray, provenance: dict, key: bytes | None = None, watermark: bool = False) -> bytes:
    """The PNG save_png writes (also served over HTTP): same array, provenance and key, same bytes.
    With `watermark`, the pixels carry the key id and a keyed tag of the provenance text (gan_core.
    watermark) before they are hashed and signed; that needs a key."""
    from gan_core.provenance import canonical, key_id, pixels_sha256, sign, tag

    if watermark:
        from gan_core import watermark as wm

        if key is None:
            raise ValueError("watermark: a signing key is needed (the watermark carries its id)")
        provenance = {**provenance, "watermark": {"scheme": wm.SCHEME, "bits": wm.BITS}}
        array = wm.embed(array, (int(key_id(key), 16) << 32) | tag(canonical(provenance), key))
    text = canonical(provenance)
    info = PngImagePlugin.PngInfo()
    info.add_text(PROVENANCE_CHUNK, text)
    if key is not None:
        info.add_text(SIGNATURE_CHUNK, canonical(sign(text, pixels_sha256(array), key)))
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def grid_fields(n: int, columns: int) -> dict:
    """How a grid's cells map to images: row-major, cell i at (i // columns, i % columns)."""
    return {"grid": {"cells": n, "columns": columns, "rows": (n + columns - 1) // columns,
                     "order": "row-major: cell i is row i // columns, column i % columns"}}


def read_provenance(path: str | Path) -> dict:
    with Image.open(path) as im:
        return json.loads(im.text[PROVENANCE_CHUNK])


def png_damage(data: bytes) -> str | None:
    """Which chunk of a PNG fails its CRC (edited or damaged bytes), or None. Pillow refuses such a
    file outright ('cannot identify image file'), which would hide that it was a PNG that changed."""
    import struct
    import zlib

    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return None
    i = 8
    while i + 12 <= len(data):
        n, = struct.unpack(">I", data[i:i + 4])
        kind, end = data[i + 4:i + 8], i + 8 + n
        if end + 4 > len(data):
            return f"chunk {kind.decode('latin-1')!r} is cut short"
        if zlib.crc32(data[i + 4:end]) != struct.unpack(">I", data[end:end + 4])[0]:
            return f"chunk {kind.decode('latin-1')!r} fails its checksum"
        if kind == b"IEND":
            return None
        i = end + 4
    return "no IEND chunk (truncated)"


def read_signed(path: str | Path) -> tuple[str | None, str | None, np.ndarray]:
    """(provenance text, signature text, decoded pixels) of an image file; None for an absent chunk.
    Any format Pillow reads (a JPEG has no chunks: its watermark may still be read from the pixels).
    A PNG chunk whose checksum fails raises SyntaxError (Pillow's own check)."""
    with Image.open(path) as im:
        im.load()
        text = getattr(im, "text", None) or {}
        return text.get(PROVENANCE_CHUNK), text.get(SIGNATURE_CHUNK), np.asarray(im)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def read_image(path: str | Path, channels: int) -> torch.Tensor:
    """One image file as (1, channels, H, W) float in [-1, 1], through the checks `ganpipe dataset
    add` applies (format allow-list, decompression-bomb limit, modes); errors name the file."""
    path = Path(path)
    policy = IngestPolicy(channels=channels)
    try:
        im, _ = to_target_mode(load_pixels(open_checked(path.read_bytes(), policy)), policy)
    except Rejected as r:
        raise ValueError(f"{path}: cannot be read as an image ({r.reason}: {r.detail})") from None
    arr = np.asarray(im, dtype=np.uint8)
    arr = arr[None] if channels == 1 else arr.transpose(2, 0, 1)
    return torch.from_numpy(np.array(arr))[None].float().div_(127.5).sub_(1.0)  # a copy: PIL memory is read-only


def image_files(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder of images")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return paths


def read_folder(folder: str | Path, channels: int) -> torch.Tensor:
    """All images of a folder (sorted by name) as (N, channels, H, W) float in [-1, 1].
    Every image passes `read_image`'s checks and all must share one size (no resizing: evaluation
    compares images as they are); errors name the file."""
    paths = image_files(folder)
    images = []
    for p in paths:
        x = read_image(p, channels)
        if images and x.shape != images[0].shape:
            raise ValueError(f"{p}: {x.shape[-1]}x{x.shape[-2]} differs from {images[0].shape[-1]}x"
                             f"{images[0].shape[-2]} of {paths[0].name}")
        images.append(x)
    return torch.cat(images)
