"""Where a dataset comes from. A SOURCE is one of:

    /path/to/folder | .zip | .tar(.gz) | .npz | *-images-idx3-ubyte[.gz]   local files (gan_core.ingest)
    s3://bucket/prefix            objects under the prefix (boto3: endpoint and credentials from the
                                  standard AWS environment/profile, e.g. AWS_ENDPOINT_URL, AWS_PROFILE)
    sklearn-digits                the 1797 8x8 digits bundled with scikit-learn (offline)
    synthetic-blobs | synthetic-shapes   generated datasets with known modes (gan_core.synthetic)
    (built-in `captions`: captioned shapes, gan_core.captions, prepared by name only: caption_builtin)
    mnist | fashion-mnist | cifar10      standard downloads (checksummed), when the machine is online

`fetch` turns a source into something gan_core.ingest reads: a local path, or arrays.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from gan_core.captions import ATTRIBUTES, captioned_shapes
from gan_core.config import ConfigError
from gan_core.data import CaptionData, caption_data, normalise_images
from gan_core.ingest.archive import safe_name
from gan_core.ingest.report import IngestError, Rejected
from gan_core.synthetic import CLASS_NAMES, SYNTHETIC

RawData = tuple[np.ndarray, "np.ndarray | None"]


def sklearn_digits() -> RawData:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 ink levels -> 0..255
    return images, d.target.astype(np.int64)


BUILTIN: dict[str, Callable[[], RawData]] = {
    "sklearn-digits": sklearn_digits,
    **{f"synthetic-{name}": make for name, make in SYNTHETIC.items()},
}
# datasets usable by name without `dataset add` (prepare builds them from the source; the default run)
BUILTIN_DATASETS = {"digits": "sklearn-digits", "blobs": "synthetic-blobs", "shapes": "synthetic-shapes"}
# two-domain and super-resolution datasets derived from bundled real images (gan_core.pairs): name -> kind
IMAGE_BUILTINS = {"edges2digits": "paired", "edges2photos": "paired", "digits-inverted": "unpaired",
                  "photo-patches": "superres"}
# captioned built-ins (text-to-image families): name -> (images, captions, attributes) at a resolution
CAPTION_BUILTINS = {"captions": lambda res: captioned_shapes(2048, res, seed=0)}
CAPTION_HELDOUT_FRACTION = 0.1  # as flows.data.datasets.HELDOUT_FRACTION for added image-to-image data


def builtin_kind(name: str) -> str:
    """The dataset kind of a built-in, checked against the family before any work."""
    if name in CAPTION_BUILTINS:
        return "captioned"
    return IMAGE_BUILTINS.get(name, "labelled")  # digits, blobs and shapes all carry their classes


def builtin_names() -> list[str]:
    return [*BUILTIN_DATASETS, *IMAGE_BUILTINS, *CAPTION_BUILTINS]


def caption_builtin(name: str, resolution: int, channels: int) -> tuple[np.ndarray, CaptionData, dict]:
    """A captioned built-in, offline: (images NCHW uint8, captions, manifest meta). Its rows come in
    a seeded random order, so the last tenth held out covers the attribute combinations evenly."""
    raw, texts, attributes = CAPTION_BUILTINS[name](resolution)
    heldout = max(1, round(CAPTION_HELDOUT_FRACTION * len(raw)))
    captions = caption_data(texts, heldout, attributes, {k: list(v) for k, v in ATTRIBUTES.items()})
    meta = {"source": f"gan_core.captions.captioned_shapes(n={len(raw)}, seed=0)", "kind": "captioned",
            "heldout": heldout}
    return normalise_images(raw, resolution, channels), captions, meta


# ---- standard downloads ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Download:
    base: str
    files: dict[str, str]  # file name -> md5 published by the dataset's authors / torchvision


DOWNLOADS = {
    "mnist": Download("https://ossci-datasets.s3.amazonaws.com/mnist/", {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432"}),
    "fashion-mnist": Download("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe"}),
    # the binary version: fixed-length records, no pickle (the python version is pickled)
    "cifar10": Download("https://www.cs.toronto.edu/~kriz/", {
        "cifar-10-binary.tar.gz": "c32a1d4ab5d03f1284b67883e8d87530"}),
}


def download_dir() -> Path:
    return Path(os.environ.get("GANPIPE_DOWNLOADS", Path.home() / ".cache" / "ganpipe" / "downloads"))


def download(name: str, timeout: float = 30.0) -> Path:
    """Fetch (once) and md5-check a standard dataset's files; returns the folder holding them.
    GANPIPE_DOWNLOAD_MIRROR replaces the base URL (an internal mirror)."""
    spec = DOWNLOADS[name]
    base = os.environ.get("GANPIPE_DOWNLOAD_MIRROR") or spec.base
    folder = download_dir() / name
    folder.mkdir(parents=True, exist_ok=True)
    for fname, md5 in spec.files.items():
        dest = folder / fname
        if dest.is_file() and _md5(dest) == md5:
            continue
        url = base.rstrip("/") + "/" + fname
        tmp = dest.with_name(dest.name + ".part")
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, "wb") as f:
                shutil.copyfileobj(r, f)
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            tmp.unlink(missing_ok=True)
            raise IngestError(f"{name}: cannot download {url} ({getattr(e, 'reason', e)}). This machine may be "
                              f"offline: download the files elsewhere and add them from disk "
                              f"(ganpipe dataset add NAME /path/to/{fname}).") from None
        got = _md5(tmp)
        if got != md5:
            tmp.unlink()
            raise IngestError(f"{name}: {url} has md5 {got}, expected {md5}; refusing a corrupted or altered file")
        tmp.replace(dest)
    return folder


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def read_cifar_binary(archive: Path) -> RawData:
    """CIFAR-10 binary batches: records of 1 label byte + 3072 bytes (R, G, B planes of 32x32)."""
    images, labels = [], []
    with tarfile.open(archive, "r:gz") as tf:
        for i in range(1, 6):
            member = tf.getmember(f"cifar-10-batches-bin/data_batch_{i}.bin")
            raw = np.frombuffer(tf.extractfile(member).read(), dtype=np.uint8).reshape(-1, 3073)
            labels.append(raw[:, 0].astype(np.int64))
            images.append(raw[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return np.concatenate(images), np.concatenate(labels)


# ---- S3 ---------------------------------------------------------------------------------------------
def fetch_s3(uri: str, dest: Path, max_objects: int = 200_000, max_bytes: int = 4 * 2**30) -> Path:
    """Copy the objects under s3://bucket/prefix into dest (keys relative to the prefix become paths).
    One object that is an archive/npz comes back as that file. Unsafe keys are refused."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, prefix = uri[len("s3://"):].partition("/")
    if not bucket:
        raise IngestError(f"{uri}: expected s3://bucket/prefix")
    from flows.ops.retry import boto_config

    s3 = boto3.client("s3", config=boto_config())  # bounded standard retries (flows/ops/retry.py)
    keys, total = [], 0
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                if obj["Key"].endswith("/"):
                    continue
                keys.append(obj["Key"])
                total += obj["Size"]
                if len(keys) > max_objects or total > max_bytes:
                    raise IngestError(f"{uri}: more than {max_objects} objects or {max_bytes} bytes")
        if not keys:
            raise IngestError(f"{uri}: no objects under this prefix")
        dest.mkdir(parents=True, exist_ok=True)
        for key in keys:
            try:  # the key below the prefix is the path (class folders); a lone object keeps its name
                rel = safe_name(key[len(prefix):].lstrip("/") or Path(key).name)
            except Rejected as r:
                raise IngestError(f"s3://{bucket}/{key}: {r.detail}") from None
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, key, str(target))
    except (BotoCoreError, ClientError) as e:
        raise IngestError(f"{uri}: S3 error ({e})") from None
    if len(keys) == 1 and dest.joinpath(rel).suffix.lower() in (".zip", ".tar", ".gz", ".tgz", ".npz"):
        return dest / rel
    return dest


# ---- dispatch ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Fetched:
    path: Path | None = None  # a local file/folder for gan_core.ingest.read_local
    arrays: RawData | None = None  # or arrays (builtins, CIFAR)
    class_names: tuple[str, ...] | None = None


def fetch(source: str, workdir: Path) -> Fetched:
    if source in BUILTIN:
        names = CLASS_NAMES.get(source.removeprefix("synthetic-")) if source.startswith("synthetic-") else None
        return Fetched(arrays=BUILTIN[source](), class_names=names)
    if source in DOWNLOADS:
        folder = download(source)
        if source == "cifar10":
            return Fetched(arrays=read_cifar_binary(folder / "cifar-10-binary.tar.gz"), class_names=CIFAR_CLASSES)
        return Fetched(path=folder / "train-images-idx3-ubyte.gz")
    if source.startswith("s3://"):
        return Fetched(path=fetch_s3(source, workdir / "s3"))
    if source.startswith(("http://", "https://")):
        raise IngestError(f"{source}: arbitrary URLs are not a source; download it and add the local file")
    path = Path(source).expanduser()
    if not path.exists():
        known = ", ".join([*BUILTIN, *DOWNLOADS])
        raise IngestError(f"{source}: no such file or folder, and not a known source ({known}, s3://...)")
    return Fetched(path=path)


def read_builtin(name: str) -> tuple[str, RawData]:
    """The source and arrays of a built-in dataset name."""
    if name not in BUILTIN_DATASETS:
        raise ConfigError("data.name", f"{name!r} is not a built-in dataset ({', '.join(BUILTIN_DATASETS)})")
    source = BUILTIN_DATASETS[name]
    return source, BUILTIN[source]()


def workdir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="ganpipe-source-")
