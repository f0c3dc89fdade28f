"""Entries -> images, labels, class names and the report, under the policy."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from gan_core.ingest.archive import ArchiveLimits, is_archive
from gan_core.ingest.decode import decode, to_target_mode, to_target_size
from gan_core.ingest.policy import IngestPolicy
from gan_core.ingest.readers import Entry, assign_labels, read_archive_entries, read_folder, read_idx_source, read_npz
from gan_core.ingest.report import IngestError, IngestReport, Rejected


@dataclass(frozen=True)
class IngestResult:
    images: np.ndarray  # (N, C, R, R) uint8
    labels: np.ndarray | None  # (N,) int64 indices into classes
    classes: list[str] | None  # class names, index = label
    report: IngestReport


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
    report.accepted = len(kept)
    if report.rejected and policy.on_reject == "fail":
        raise IngestError(f"{len(report.rejected)} file(s) rejected (--policy fail; use --policy skip to leave "
                          f"them out):\n{report.summary()}")
    if not kept:
        raise IngestError(f"{source}: no usable images\n{report.summary()}")
    images = np.stack([a for a, _ in kept])
    names = [label for _, label in kept]
    if all(n is None for n in names):
        return IngestResult(images, None, None, report)
    classes = class_order(names)
    index = {c: i for i, c in enumerate(classes)}
    return IngestResult(images, np.array([index[n] for n in names], dtype=np.int64), classes, report)


def read_local(source: Path, policy: IngestPolicy, kind: str = "auto",
               limits: ArchiveLimits = ArchiveLimits()) -> IngestResult:
    """A local folder, archive, .npz or IDX file, ingested under the policy."""
    source = Path(source)
    if not source.exists():
        raise IngestError(f"{source}: no such file or folder")
    name = source.name.lower()
    if source.is_dir():
        entries = assign_labels(list(read_folder(source, policy.max_file_bytes)), kind)
    elif name.endswith(".npz"):
        entries = list(read_npz(source))
    elif "idx3" in name or name.endswith((".idx", ".idx.gz")):
        entries = list(read_idx_source(source))
    elif is_archive(source):
        entries = assign_labels(list(read_archive_entries(source, limits)), kind)
    else:
        raise IngestError(f"{source}: not a folder, .zip, .tar(.gz), .npz or IDX file")
    if kind == "unconditional":
        entries = [Entry(e.path, e.data, e.image, e.rejected, None) for e in entries]
    elif kind == "labelled" and entries and all(e.label is None for e in entries):
        raise IngestError(f"{source}: --kind labelled, but the source has no labels")
    return ingest(entries, policy, str(source))
