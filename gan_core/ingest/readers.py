"""Where files come from: a folder, a zip/tar archive, a .npz, MNIST-style IDX files.

Each reader yields Entry(path, data or image, rejected, class name). Folders and archives use the
same layout rule: after stripping one top-level folder that every file shares, files inside class
sub-folders are labelled with that folder's name; with no sub-folders the data is unlabelled.
"""
from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator

import numpy as np
from PIL import Image

from gan_core.ingest.archive import ArchiveLimits, read_archive
from gan_core.ingest.report import IngestError, Rejected

SKIP_PARTS = ("__MACOSX",)  # macOS zip metadata


@dataclass(frozen=True)
class Entry:
    path: str  # as shown in the report (relative to the source)
    data: bytes | None = None  # encoded file bytes, or
    image: Image.Image | None = None  # an already decoded image (npz, IDX)
    rejected: Rejected | None = None
    label: str | None = None  # class name (folder name, or the label value as text)
    key: str | None = None  # path below the class/domain folder (pairs match on it)


def skipped(rel: str) -> bool:
    parts = PurePosixPath(rel).parts
    return any(p.startswith(".") or p in SKIP_PARTS for p in parts)


def assign_labels(entries: list[Entry], kind: str) -> list[Entry]:
    """Apply the class-folder rule to path-based entries. kind: auto | labelled | unconditional."""
    paths = [PurePosixPath(e.path).parts for e in entries]
    while paths and all(len(p) >= 2 for p in paths) and len({p[0] for p in paths}) == 1:
        paths = [p[1:] for p in paths]  # one shared top-level folder (dataset.zip -> dataset/...)
    has_folders = any(len(p) >= 2 for p in paths)
    if kind == "labelled" and not has_folders:
        raise IngestError("--kind labelled: no class sub-folders found (expected <class>/<image> files)")
    if kind == "unconditional" or not has_folders:
        return entries
    out = []
    for e, parts in zip(entries, paths):
        if len(parts) < 2 and e.rejected is None:
            e = Entry(e.path, rejected=Rejected("no-label", "file at the top level, outside every class folder"))
        out.append(Entry(e.path, e.data, e.image, e.rejected, parts[0] if len(parts) >= 2 else None,
                         "/".join(parts[1:]) if len(parts) >= 2 else None))
    return out


def read_folder(root: Path, max_file_bytes: int) -> Iterator[Entry]:
    root = Path(root)
    if not root.is_dir():
        raise IngestError(f"{root}: not a folder")
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            if skipped(rel):
                continue
            if full.is_symlink():
                yield Entry(rel, rejected=Rejected("link", f"symlink to {os.readlink(full)!r} (not followed)"))
                continue
            st = full.lstat()
            if not full.is_file():
                yield Entry(rel, rejected=Rejected("special-file"))
            elif st.st_size > max_file_bytes:
                yield Entry(rel, rejected=Rejected("too-large", f"{st.st_size} bytes > limit {max_file_bytes}"))
            else:
                yield Entry(rel, data=full.read_bytes())


def read_archive_entries(path: Path, limits: ArchiveLimits) -> Iterator[Entry]:
    for m in read_archive(path, limits):
        if m.rejected is None and skipped(m.name):
            continue
        yield Entry(m.name, data=m.data, rejected=m.rejected)


def array_entries(images: np.ndarray, labels: np.ndarray | None, source: str,
                  class_names: tuple[str, ...] | None = None) -> Iterator[Entry]:
    """Entries from in-memory arrays; labels become class names (given names, or the value as text)."""
    if images.ndim == 4 and images.shape[1] in (1, 3) and images.shape[-1] not in (1, 3):
        images = images.transpose(0, 2, 3, 1)  # NCHW -> NHWC
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3, 4)):
        raise IngestError(f"{source}: images must be (N, H, W) or (N, H, W, 1|3|4), got {images.shape}")
    if labels is not None and labels.shape != (len(images),):
        raise IngestError(f"{source}: labels shape {labels.shape} does not match {len(images)} images")
    if images.dtype == np.uint16:
        mode = "I;16"
    elif images.dtype == np.uint8:
        mode = None
    elif np.issubdtype(images.dtype, np.floating):  # floats in [0, 1]
        images = np.clip(np.round(images * 255.0), 0, 255).astype(np.uint8)
        mode = None
    else:
        raise IngestError(f"{source}: images dtype {images.dtype} (expected uint8, uint16 or float in [0, 1])")
    for i, a in enumerate(images):
        a = a[..., 0] if a.ndim == 3 and a.shape[-1] == 1 else a
        im = Image.fromarray(np.ascontiguousarray(a), mode) if mode else Image.fromarray(np.ascontiguousarray(a))
        label = None if labels is None else (class_names[int(labels[i])] if class_names else str(int(labels[i])))
        yield Entry(f"{source}[{i}]", image=im, label=label)


def read_npz(path: Path) -> Iterator[Entry]:
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            img_key = next((k for k in ("images", "x", "x_train", "arr_0") if k in keys), None)
            if img_key is None:
                raise IngestError(f"{path}: no 'images' (or x, x_train, arr_0) array; found {sorted(keys)}")
            lab_key = next((k for k in ("labels", "y", "y_train") if k in keys), None)
            images = z[img_key]
            labels = z[lab_key] if lab_key else None
    except (ValueError, OSError) as e:  # includes object arrays refused by allow_pickle=False
        raise IngestError(f"{path}: unreadable .npz ({e})") from None
    if labels is not None and not np.issubdtype(labels.dtype, np.integer):
        raise IngestError(f"{path}: labels must be integers, got {labels.dtype}")
    yield from array_entries(images, labels, path.name)


IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format), optionally gzipped: magic 0 0 type ndim, big-endian dims, data."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_TYPES:
        raise IngestError(f"{path}: not an IDX file (bad magic {raw[:4].hex()})")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    dtype = np.dtype(IDX_TYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    body = raw[4 + 4 * ndim:]
    if len(body) != expected:
        raise IngestError(f"{path}: holds {len(body)} data bytes, dims {dims} need {expected}")
    return np.frombuffer(body, dtype=dtype).reshape(dims)


def idx_labels_for(images_path: Path) -> Path | None:
    """MNIST naming: train-images-idx3-ubyte[.gz] -> train-labels-idx1-ubyte[.gz]."""
    name = images_path.name.replace("images-idx3", "labels-idx1").replace("images.idx3", "labels.idx1")
    cand = images_path.with_name(name)
    return cand if cand != images_path and cand.is_file() else None


def read_idx_source(path: Path) -> Iterator[Entry]:
    images = read_idx(path)
    if images.ndim != 3:
        raise IngestError(f"{path}: image IDX must be 3-d (N, rows, cols), got {images.shape}")
    labels_path = idx_labels_for(path)
    labels = read_idx(labels_path) if labels_path else None
    yield from array_entries(np.ascontiguousarray(images.astype(np.uint8)), labels, path.name)
