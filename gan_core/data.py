"""The prepared-dataset format: uint8 NCHW images (+ int64 labels) and a manifest with a content hash.

On disk a prepared dataset is a folder:
    images.npy      (N, C, R, R) uint8, 0..255 (domain A for paired/unpaired data)
    labels.npy      (N,) int64, only for labelled data
    images_b.npy    (M, C, R, R) uint8, domain B: paired (M = N, row i pairs with row i) or unpaired
    captions.npy    (N, K, L) int64 token ids of captioned data (0-padded; fewer captions: zero rows),
    vocab.json      with the vocabulary they index (built from the training rows' captions only),
    captions.json   the caption texts (a list per image) and, optionally,
    attributes.npy  (N, A) int64 per-image attribute indices (the built-in captioned shapes)
    manifest.json   kind, count, shape, labels, content_sha256, file hashes
Plain .npy files (not .npz) because np.savez stamps the current time into its zip entries, which
would change the bytes, and so the DVC hash, of identical data.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from gan_core.captions import CaptionError, Vocabulary, counts_of, encode_all
from gan_core.files import canonical_json, file_sha256, replace_dir, room_for, write_json_atomic

FORMAT = "ganpipe-prepared/1"


class DataError(ValueError):
    """Dataset content or files are invalid. The message names the file or array and the reason."""


@dataclass(frozen=True)
class CaptionData:
    """What a captioned dataset adds to its images: ids, the vocabulary they index, the texts."""
    tokens: np.ndarray  # (N, K, L) int64, 0-padded
    texts: list[list[str]]  # per image its captions, as given
    vocabulary: Vocabulary
    attributes: np.ndarray | None = None  # (N, A) int64, where the source knows them
    attribute_names: dict[str, list[str]] | None = None  # column name -> its values' words


def caption_data(texts: list[list[str]], heldout: int, attributes: np.ndarray | None = None,
                 attribute_names: dict | None = None) -> CaptionData:
    """Texts -> CaptionData with the vocabulary of the TRAINING rows (all but the last `heldout`),
    so held-out captions may hold words the model never saw (UNK), as real prompts do."""
    train = texts[:len(texts) - heldout] if heldout else texts
    vocab = Vocabulary.build(t for caps in train for t in caps)
    return CaptionData(encode_all(vocab, texts), [list(c) for c in texts], vocab, attributes, attribute_names)


def vocabulary_sha256(vocab: Vocabulary) -> str:
    return hashlib.sha256(canonical_json(vocab.to_dict()).encode()).hexdigest()


@dataclass(frozen=True)
class PreparedDataset:
    images: np.ndarray  # (N, C, R, R) uint8
    labels: np.ndarray | None  # (N,) int64 in [0, num_classes)
    manifest: dict
    images_b: np.ndarray | None = None  # (M, C, R, R) uint8: the second domain of paired/unpaired data
    captions: np.ndarray | None = None  # (N, K, L) int64 token ids (captioned data)
    attributes: np.ndarray | None = None  # (N, A) int64 (captioned data whose source knows them)
    vocabulary: Vocabulary | None = None  # what `captions` index (captioned data)
    caption_texts: list[list[str]] | None = None  # per image its caption texts (captioned data)

    @property
    def kind(self) -> str:
        return self.manifest.get("kind", "labelled" if self.labels is not None else "unconditional")

    @property
    def heldout(self) -> int:
        """The last `heldout` rows (of images, labels and images_b) are never trained on."""
        return int(self.manifest.get("heldout", 0))

    @property
    def num_classes(self) -> int:
        return int(self.manifest["labels"]["num_classes"]) if self.labels is not None else 0


def normalise_images(images: np.ndarray, resolution: int, channels: int) -> np.ndarray:
    """(N, H, W) or (N, H, W, C) uint8 -> (N, channels, resolution, resolution) uint8.

    Resizes with Pillow's bicubic filter (antialiased when shrinking) and converts grey <-> RGB.
    """
    if images.dtype != np.uint8:
        raise DataError(f"images: expected uint8, got {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise DataError(f"images: expected (N, H, W) or (N, H, W, 1|3), got shape {images.shape}")
    mode = "L" if channels == 1 else "RGB"
    out = np.empty((len(images), channels, resolution, resolution), dtype=np.uint8)
    for i, im in enumerate(images):
        pil = Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im).convert(mode)
        if pil.size != (resolution, resolution):
            pil = pil.resize((resolution, resolution), Image.Resampling.BICUBIC)
        arr = np.asarray(pil, dtype=np.uint8)
        out[i] = arr[None] if channels == 1 else arr.transpose(2, 0, 1)
    return out


def validate(images: np.ndarray, labels: np.ndarray | None) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        raise DataError(f"images: must be a uint8 numpy array, got {getattr(images, 'dtype', type(images))}")
    if images.ndim != 4 or images.shape[1] not in (1, 3) or images.shape[2] != images.shape[3]:
        raise DataError(f"images: must be (N, 1|3, R, R), got shape {images.shape}")
    if len(images) == 0:
        raise DataError("images: dataset is empty")
    if labels is not None:
        if labels.dtype != np.int64 or labels.shape != (len(images),):
            raise DataError(f"labels: must be int64 of shape ({len(images)},), got {labels.dtype} {labels.shape}")
        if labels.min() < 0:
            raise DataError(f"labels: must be >= 0, found {labels.min()}")


def validate_captions(c: CaptionData, n: int) -> None:
    """Ids aligned with the n images, inside the vocabulary, at least one caption per image, and
    texts that encode to exactly these ids (so the ids cannot drift from the texts they claim)."""
    t = c.tokens
    if not isinstance(t, np.ndarray) or t.dtype != np.int64 or t.ndim != 3 or len(t) != n:
        raise DataError(f"captions: must be int64 of shape ({n}, K, L), got {getattr(t, 'dtype', type(t))} "
                        f"{getattr(t, 'shape', '')}")
    if t.shape[2] != c.vocabulary.max_tokens:
        raise DataError(f"captions: last dimension {t.shape[2]} is not the vocabulary's max_tokens "
                        f"{c.vocabulary.max_tokens}")
    if t.size and (t.min() < 0 or t.max() >= c.vocabulary.size):
        raise DataError(f"captions: ids must lie in [0, {c.vocabulary.size}), found {t.min()}..{t.max()}")
    counts = counts_of(t)
    if (counts == 0).any():
        raise DataError(f"captions: image {int(np.argmin(counts))} has no caption")
    if len(c.texts) != n or any(len(x) != k for x, k in zip(c.texts, counts)):
        raise DataError(f"captions.json: must list each of the {n} images' {t.shape[1]} or fewer captions, "
                        "one text per caption row")
    try:
        again = encode_all(c.vocabulary, c.texts)
    except CaptionError as e:
        raise DataError(f"captions.json: {e}") from None
    if again.shape != t.shape or not np.array_equal(again, t):
        raise DataError("captions: ids differ from the texts in captions.json encoded with vocab.json")
    if c.attributes is not None:
        a = c.attributes
        if a.dtype != np.int64 or a.ndim != 2 or len(a) != n:
            raise DataError(f"attributes: must be int64 of shape ({n}, A), got {a.dtype} {a.shape}")


def content_hash(images: np.ndarray, labels: np.ndarray | None, images_b: np.ndarray | None = None,
                 captions: CaptionData | None = None) -> str:
    """sha256 over shape, pixels and labels: equal data <=> equal hash, whatever the file layout.
    Captioned data adds its texts, vocabulary (tokenizer included), ids and attributes: changing a
    caption, or how captions become ids, is a new version."""
    h = hashlib.sha256()
    h.update(json.dumps({"shape": list(images.shape), "labels": labels is not None}).encode())
    h.update(np.ascontiguousarray(images).tobytes())
    if labels is not None:
        h.update(np.ascontiguousarray(labels).tobytes())
    if images_b is not None:  # absent for one-domain data, so their hashes are unchanged
        h.update(json.dumps({"shape_b": list(images_b.shape)}).encode())
        h.update(np.ascontiguousarray(images_b).tobytes())
    if captions is not None:  # absent for other kinds, so their hashes are unchanged
        h.update(canonical_json({"captions": captions.texts, "vocabulary": captions.vocabulary.to_dict(),
                                 "tokens_shape": list(captions.tokens.shape),
                                 "attribute_names": captions.attribute_names}).encode())
        h.update(np.ascontiguousarray(captions.tokens).tobytes())
        if captions.attributes is not None:
            h.update(json.dumps({"attributes_shape": list(captions.attributes.shape)}).encode())
            h.update(np.ascontiguousarray(captions.attributes).tobytes())
    return h.hexdigest()


def _write_captions(tmp: Path, c: CaptionData, files: dict) -> dict:
    """The captioned files into tmp; returns the manifest's vocabulary (and attributes) entries."""
    save_npy(tmp / "captions.npy", c.tokens)
    write_json_atomic(tmp / "vocab.json", c.vocabulary.to_dict())
    write_json_atomic(tmp / "captions.json", c.texts)
    names = ["captions.npy", "vocab.json", "captions.json"]
    out = {"vocabulary": {"size": c.vocabulary.size, "tokenizer": c.vocabulary.tokenizer,
                          "max_tokens": c.vocabulary.max_tokens, "sha256": vocabulary_sha256(c.vocabulary)},
           "captions_per_image": int(c.tokens.shape[1])}
    if c.attributes is not None:
        save_npy(tmp / "attributes.npy", c.attributes)
        names.append("attributes.npy")
        out["attributes"] = {"names": list((c.attribute_names or {}).keys()),
                             "values": [list(v) for v in (c.attribute_names or {}).values()]}
    files.update({name: file_sha256(tmp / name) for name in names})
    return out


def write_prepared(out_dir: str | Path, images: np.ndarray, labels: np.ndarray | None, meta: dict,
                   extras: Callable[[Path, dict], None] | None = None, images_b: np.ndarray | None = None,
                   captions: CaptionData | None = None) -> dict:
    """Validate and write a prepared dataset atomically: readers see the old folder or the new one.
    `extras(tmp_dir, manifest)` adds derived files (backbone, reference stats) before the swap.
    meta may set "kind" (paired, unpaired, superres); otherwise labelled or unconditional; with
    `captions` the kind is captioned. A full disk raises DiskFullError naming out_dir; the temporary folder is removed."""
    validate(images, labels)
    if images_b is not None:
        validate(images_b, None)
    if captions is not None:
        validate_captions(captions, len(images))
    out_dir = Path(out_dir)
    with room_for(out_dir):
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
        try:
            save_npy(tmp / "images.npy", images)
            files = {"images.npy": file_sha256(tmp / "images.npy")}
            label_info = None
            if labels is not None:
                save_npy(tmp / "labels.npy", labels)
                files["labels.npy"] = file_sha256(tmp / "labels.npy")
                counts = np.bincount(labels)
                label_info = {"num_classes": int(len(counts)), "counts": [int(c) for c in counts]}
            if images_b is not None:
                save_npy(tmp / "images_b.npy", images_b)
                files["images_b.npy"] = file_sha256(tmp / "images_b.npy")
            caption_info = _write_captions(tmp, captions, files) if captions is not None else {}
            manifest = {
                "format": FORMAT, **meta,
                "kind": "captioned" if captions is not None else
                meta.get("kind") or ("labelled" if labels is not None else "unconditional"),
                "count": int(len(images)), "shape": list(images.shape[1:]), "dtype": "uint8",
                "labels": label_info, "content_sha256": content_hash(images, labels, images_b, captions),
                "files": files, **caption_info,
            }
            if images_b is not None:
                manifest["count_b"] = int(len(images_b))
            write_json_atomic(tmp / "manifest.json", manifest)
            if extras is not None:
                extras(tmp, manifest)
            replace_dir(tmp, out_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return manifest


class _Stream:
    """A file seen through its write method only. np.save writes a real file with one fwrite and
    reports a short write (a full disk) as a bare "N requested and M written" OSError without an
    errno; given this, numpy writes chunks through Python's writer, whose error keeps its errno."""

    def __init__(self, f):
        self.write = f.write


def save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(_Stream(f), array, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())  # some filesystems report a full disk only here


def load_manifest(data_dir: str | Path) -> dict:
    path = Path(data_dir) / "manifest.json"
    if not path.is_file():
        raise DataError(f"{path}: missing; run the prepare stage first")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise DataError(f"{path}: format {manifest.get('format')!r} is not {FORMAT!r}")
    return manifest


def load_prepared(data_dir: str | Path, verify: bool = True, mmap: bool = False) -> PreparedDataset:
    """Read a prepared dataset; with verify, refuse files whose bytes differ from the manifest.

    With mmap the .npy arrays are read-only np.memmap views of the files: pages are read from the
    page cache when a row is touched, and clean file pages are not the process's own memory (the
    kernel drops them under pressure; RLIMIT_DATA does not count them). Training uses it, so a rank
    holds only the rows of its batches (ShardedBatches). The default stays in memory: evaluation,
    prepare and tests hand slices to torch.from_numpy and write into them, which a read-only map
    refuses, and what they read (held-out rows, small datasets) fits in memory anyway."""
    data_dir = Path(data_dir)
    manifest = load_manifest(data_dir)
    for name, expected in manifest["files"].items():
        if verify and file_sha256(data_dir / name) != expected:  # streams 1 MiB chunks, never the whole file
            raise DataError(f"{data_dir / name}: sha256 differs from manifest.json (corrupt or edited)")
    load = lambda name: _load_npy(data_dir / name, mmap) if name in manifest["files"] else None  # noqa: E731
    images, labels = _load_npy(data_dir / "images.npy", mmap), load("labels.npy")
    validate(images, labels)
    images_b = load("images_b.npy")
    if images_b is not None:
        validate(images_b, None)
    if "captions.npy" not in manifest["files"]:
        return PreparedDataset(images, labels, manifest, images_b)
    c = load_captions(data_dir, manifest, mmap)
    validate_captions(c, len(images))
    return PreparedDataset(images, labels, manifest, images_b, c.tokens, c.attributes, c.vocabulary, c.texts)


def _load_npy(path: Path, mmap: bool) -> np.ndarray:
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


def load_captions(data_dir: Path, manifest: dict, mmap: bool = False) -> CaptionData:
    vocab_path = data_dir / "vocab.json"
    try:
        vocab = Vocabulary.from_dict(json.loads(vocab_path.read_text()), str(vocab_path))
    except CaptionError as e:
        raise DataError(str(e)) from None
    if vocabulary_sha256(vocab) != manifest.get("vocabulary", {}).get("sha256"):
        raise DataError(f"{vocab_path}: vocabulary differs from the one manifest.json records")
    tokens = _load_npy(data_dir / "captions.npy", mmap)
    texts = json.loads((data_dir / "captions.json").read_text())
    attributes = _load_npy(data_dir / "attributes.npy", mmap) if "attributes.npy" in manifest["files"] else None
    info = manifest.get("attributes")
    names = dict(zip(info["names"], info["values"])) if info else None
    return CaptionData(tokens, texts, vocab, attributes, names)


def to_float(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float32 in [-1, 1], the range every generator outputs."""
    return images_u8.float().div_(127.5).sub_(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float in [-1, 1] -> uint8 0..255 (clamped, rounded)."""
    return images.add(1.0).mul(127.5).round_().clamp_(0, 255).to(torch.uint8)


def training_arrays(data: PreparedDataset) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(aligned, independent) arrays a family trains on, without the held-out rows: images with
    labels or with their paired images_b; an unpaired dataset's images_b on their own. Slices only:
    the arrays of a memory-mapped dataset stay views of its files (nothing is read here but captions,
    whose per-row counts are small)."""
    keep = lambda a: a[:len(a) - data.heldout] if data.heldout else a  # noqa: E731
    aligned = {"images": keep(data.images)}
    if data.labels is not None:
        aligned["labels"] = keep(data.labels)
    if data.captions is not None:  # the family's step picks one of each image's real captions
        aligned["captions"] = keep(data.captions)
        aligned["caption_counts"] = counts_of(aligned["captions"])
    independent = {}
    if data.images_b is not None:
        (independent if data.kind == "unpaired" else aligned)["images_b"] = keep(data.images_b)
    return aligned, independent


def heldout_arrays(data: PreparedDataset) -> tuple[np.ndarray, np.ndarray | None]:
    """The held-out rows of images and images_b (None where the dataset has no second domain, or
    an unpaired dataset whose held-out rows are not aligned ground truth)."""
    if not data.heldout:
        raise DataError(f"{data.manifest.get('name', 'dataset')}: manifest.json holds no held-out rows "
                        "(`heldout`); image-conditioned families are evaluated on them")
    n = data.heldout
    b = data.images_b[-n:] if data.images_b is not None else None
    if data.kind == "unpaired" and not data.manifest.get("heldout_aligned"):
        b = None
    return data.images[-n:], b


@dataclass(frozen=True)
class HeldoutCaptions:
    """A captioned dataset's held-out rows: what text-to-image families are evaluated on."""
    images: np.ndarray  # (H, C, R, R) uint8
    captions: np.ndarray  # (H, K, L) int64 ids (words outside the training vocabulary are UNK)
    counts: np.ndarray  # (H,) int64 real captions per row
    texts: list[list[str]]
    attributes: np.ndarray | None  # (H, A) int64, where the dataset has them


def heldout_captions(data: PreparedDataset) -> HeldoutCaptions:
    if data.captions is None:
        raise DataError(f"{data.manifest.get('name', 'dataset')}: a {data.kind} dataset has no captions")
    if not data.heldout:
        raise DataError(f"{data.manifest.get('name', 'dataset')}: manifest.json holds no held-out rows (`heldout`)")
    n = data.heldout
    return HeldoutCaptions(data.images[-n:], data.captions[-n:], counts_of(data.captions[-n:]),
                           data.caption_texts[-n:], data.attributes[-n:] if data.attributes is not None else None)
