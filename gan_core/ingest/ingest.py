"""Entries -> images, labels, class names and the report, under the policy."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Iterable

import numpy as np

from gan_core.ingest.archive import ArchiveLimits, is_archive
from gan_core.ingest.captioned import read_captioned
from gan_core.ingest.decode import decode, to_target_mode, to_target_size
from gan_core.ingest.policy import IngestPolicy
from gan_core.ingest.readers import Entry, assign_labels, read_archive_entries, read_folder, read_idx_source, read_npz
from gan_core.ingest.report import IngestError, IngestReport, Rejected


KINDS = ("auto", "unconditional", "labelled", "paired", "unpaired", "superres", "captioned")


@dataclass(frozen=True)
class IngestResult:
    images: np.ndarray  # (N, C, R, R) uint8 (domain A of paired/unpaired data)
    labels: np.ndarray | None  # (N,) int64 indices into classes
    classes: list[str] | None  # class names, index = label (the two domain names for paired/unpaired)
    report: IngestReport
    keys: list[str | None] | None = None  # per image: path below its class/domain folder
    images_b: np.ndarray | None = None  # (M, C, R, R) domain B
    kind: str = ""  # unconditional | labelled | paired | unpaired | superres | captioned
    captions: list[list[str]] | None = None  # captioned: per image its caption texts
    attributes: np.ndarray | None = None  # captioned: (N, A) int64 attribute indices, where known


def class_order(names: Iterable[str]) -> list[str]:
    """Sorted class names; numerically when they are all integers ("2" before "10")."""
    names = sorted(set(names))
    return sorted(names, key=int) if all(n.lstrip("-").isdigit() for n in names) else names


def normalise(entry: Entry, policy: IngestPolicy) -> tuple[np.ndarray, list[str]]:
    if entry.data is not None:
        return decode(entry.data, policy)
    im, mode_change = to_target_mode(entry.image, policy)
    im, size_change = to_target_size(im, policy)
    arr = np.asarray(im, dtype=np.uint8)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr), [c for c in (mode_change, size_change) if c]


def ingest(entries: Iterable[Entry], policy: IngestPolicy, source: str) -> IngestResult:
    """Decode and check every entry; with on_reject=fail any reject raises IngestError (with the
    whole report in the message), so nothing half-checked is ever written."""
    report = IngestReport(source)
    kept: list[tuple[np.ndarray, str | None]] = []
    keys: list[str | None] = []
    seen: dict[str, str] = {}
    for e in entries:
        try:
            if e.rejected is not None:
                raise e.rejected
            arr, changes = normalise(e, policy)
            key = hashlib.sha256(arr.tobytes() + (e.label or "").encode()).hexdigest()
            if key in seen and policy.duplicates == "drop":
                raise Rejected("duplicate", f"same pixels and label as {seen[key]}")
            seen.setdefault(key, e.path)
        except Rejected as r:
            report.reject(e.path, r)
            continue
        report.converted.update(changes)
        kept.append((arr, e.label))
        keys.append(e.key)
    report.accepted = len(kept)
    if report.rejected and policy.on_reject == "fail":
        raise IngestError(f"{len(report.rejected)} file(s) rejected (--policy fail; use --policy skip to leave "
                          f"them out):\n{report.summary()}")
    if not kept:
        raise IngestError(f"{source}: no usable images\n{report.summary()}")
    images = np.stack([a for a, _ in kept])
    names = [label for _, label in kept]
    if all(n is None for n in names):
        return IngestResult(images, None, None, report, keys, kind="unconditional")
    classes = class_order(names)
    index = {c: i for i, c in enumerate(classes)}
    return IngestResult(images, np.array([index[n] for n in names], dtype=np.int64), classes, report, keys,
                        kind="labelled")


def split_domains(result: IngestResult, kind: str, policy: IngestPolicy) -> IngestResult:
    """Two domain folders -> images (A) and images_b (B). Paired: files match by their path below
    the domain folder, extension aside (A/x.jpg pairs with B/x.png); a file without a partner is
    rejected as no-pair. Unpaired: the two sets as they are."""
    if result.classes is None or len(result.classes) != 2:
        raise IngestError(f"--kind {kind}: needs exactly two sub-folders, one per domain (e.g. A/ and B/); "
                          f"found {result.classes or 'none'}")
    a, b = result.labels == 0, result.labels == 1
    report = result.report
    if kind == "unpaired":
        return IngestResult(result.images[a], None, result.classes, report, images_b=result.images[b], kind=kind)
    stem = lambda k: str(PurePosixPath(k).with_suffix(""))  # noqa: E731
    side = {0: {}, 1: {}}
    for i, (label, key) in enumerate(zip(result.labels, result.keys)):
        side[int(label)][stem(key)] = i
    for d, other in ((0, 1), (1, 0)):
        for k in sorted(set(side[d]) - set(side[other])):
            report.reject(f"{result.classes[d]}/{k}", Rejected(
                "no-pair", f"no file named {k}.* in {result.classes[other]}/"))
    common = sorted(set(side[0]) & set(side[1]))
    report.accepted = 2 * len(common)
    if report.rejected and policy.on_reject == "fail":
        raise IngestError(f"{len(report.rejected)} file(s) rejected (--policy fail; use --policy skip to leave "
                          f"them out):\n{report.summary()}")
    if not common:
        raise IngestError(f"--kind paired: no file names shared by {result.classes[0]}/ and {result.classes[1]}/")
    return IngestResult(result.images[[side[0][k] for k in common]], None, result.classes, report,
                        images_b=result.images[[side[1][k] for k in common]], kind=kind)


def read_local(source: Path, policy: IngestPolicy, kind: str = "auto",
               limits: ArchiveLimits = ArchiveLimits(), watch=None) -> IngestResult:
    """A local folder, archive, .npz or IDX file, ingested under the policy. kind: see KINDS;
    paired/unpaired read two domain sub-folders, superres is unconditional high-resolution images,
    captioned images with captions (gan_core/ingest/captioned.py).
    `watch(entries)`, if given, returns the entries unchanged as an iterable the caller observes
    (a progress count of the checks: decoding and resizing are the slow part)."""
    watch = watch or (lambda entries: entries)
    source = Path(source)
    if kind not in KINDS:
        raise IngestError(f"--kind: must be one of {KINDS}, got {kind!r}")
    if not source.exists():
        raise IngestError(f"{source}: no such file or folder")
    if kind == "captioned":
        return read_captioned(source, policy, limits, ingest, watch)
    if kind in ("paired", "unpaired"):
        if not (source.is_dir() or is_archive(source)):
            raise IngestError(f"{source}: --kind {kind} reads a folder or archive with two domain sub-folders")
        read = read_folder(source, policy.max_file_bytes) if source.is_dir() else read_archive_entries(source, limits)
        entries = assign_labels(list(read), "labelled")
        return split_domains(ingest(watch(entries), policy, str(source)), kind, policy)
    base = "unconditional" if kind == "superres" else kind
    name = source.name.lower()
    if source.is_dir():
        entries = assign_labels(list(read_folder(source, policy.max_file_bytes)), base)
    elif name.endswith(".npz"):
        entries = list(read_npz(source))
    elif "idx3" in name or name.endswith((".idx", ".idx.gz")):
        entries = list(read_idx_source(source))
    elif is_archive(source):
        entries = assign_labels(list(read_archive_entries(source, limits)), base)
    else:
        raise IngestError(f"{source}: not a folder, .zip, .tar(.gz), .npz or IDX file")
    if base == "unconditional":
        entries = [Entry(e.path, e.data, e.image, e.rejected, None) for e in entries]
    elif base == "labelled" and entries and all(e.label is None for e in entries):
        raise IngestError(f"{source}: --kind labelled, but the source has no labels")
    result = ingest(watch(entries), policy, str(source))
    return replace(result, kind="superres") if kind == "superres" else result
