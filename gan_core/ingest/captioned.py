"""Captioned sources: images with one or more captions each, from a folder or zip/tar archive.

Two layouts (after stripping one top-level folder every file shares, as for other sources):
    captions.jsonl at the top, one JSON object per line: {"file": "birds/a.png", "captions": ["...", ...]}
    or <stem>.txt beside each image: one caption per non-empty line (a.png <- a.txt)
Everything else is an image, checked as in any other source.

What is refused, and how (the same rule as for bad images: a problem that belongs to one image or
one caption line rejects that row, reported with its file and reason; --policy fail then refuses
the whole add, --policy skip leaves the row out):
    image without a caption          the image: no-caption
    empty caption / empty .txt       the image: empty-caption
    caption with no words ("!!!")    the image: no-words
    non-UTF-8 caption text           the image (its .txt, or the line naming it): encoding; a
                                     captions.jsonl line whose image cannot be read: that line
    line that is not {file, captions} captions.jsonl:N: bad-json (N the line number)
    caption for a missing image      captions.jsonl:N or the .txt: no-image
    a second line for one image      captions.jsonl:N: repeated-entry
A problem with the source as a whole (no captions at all, both layouts at once, an unreadable
captions.jsonl) refuses the add whatever the policy: there is no row to leave out.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable

from gan_core.captions import words
from gan_core.ingest.archive import ArchiveLimits, is_archive, safe_name
from gan_core.ingest.policy import IngestPolicy
from gan_core.ingest.readers import Entry, read_archive_entries, read_folder
from gan_core.ingest.report import IngestError, Rejected

CAPTIONS_FILE = "captions.jsonl"
MAX_CAPTIONS = 16  # per image: the prepared array holds K = the most captions of any image


def read_captioned(source: Path, policy: IngestPolicy, limits: ArchiveLimits, ingest: Callable,
                   watch: Callable[[list], Iterable] = lambda e: e):
    """A folder or archive -> IngestResult of kind captioned with `captions` aligned to its images.
    `ingest` is gan_core.ingest.ingest.ingest (passed in: that module dispatches here)."""
    if source.is_dir():
        entries = list(read_folder(source, policy.max_file_bytes))
    elif is_archive(source):
        entries = list(read_archive_entries(source, limits))
    else:
        raise IngestError(f"{source}: --kind captioned reads a folder or .zip/.tar(.gz) of images with "
                          f"{CAPTIONS_FILE} or per-image .txt captions")
    files = list(zip(entries, _relative(entries)))
    jsonl = [(e, r) for e, r in files if PurePosixPath(r).name == CAPTIONS_FILE]
    texts = {r: e for e, r in files if r.lower().endswith(".txt")}
    images = [(e, r) for e, r in files if PurePosixPath(r).name != CAPTIONS_FILE and r not in texts]
    if jsonl and texts:
        raise IngestError(f"{source}: both {CAPTIONS_FILE} and .txt caption files; use one layout")
    if jsonl:
        captions, strays = _from_jsonl(source, jsonl, {r for _, r in images})
    elif texts:
        captions, strays = _from_texts(texts, {r for _, r in images})
    else:
        raise IngestError(f"{source}: --kind captioned needs {CAPTIONS_FILE} at the top or a <stem>.txt per image; "
                          "found neither")
    of_image = {r: captions.get(_lookup(r, bool(texts))) for _, r in images}
    checked = [_with_captions(e, r, of_image[r]) for e, r in images]
    result = ingest(watch(strays + checked), policy, str(source))
    return replace(result, kind="captioned", labels=None, classes=None,
                   captions=[list(of_image[k]) for k in result.keys])


def _relative(entries: list[Entry]) -> list[str]:
    """Paths below the one top-level folder every file shares (dataset.zip -> dataset/...), if any."""
    parts = [PurePosixPath(e.path).parts for e in entries]
    while parts and all(len(p) >= 2 for p in parts) and len({p[0] for p in parts}) == 1:
        parts = [p[1:] for p in parts]
    return ["/".join(p) for p in parts]


def _lookup(rel: str, by_stem: bool) -> str:
    return str(PurePosixPath(rel).with_suffix("")) if by_stem else rel


def _with_captions(e: Entry, rel: str, caps) -> Entry:
    """The image entry, rejected when its captions are missing or bad; key = its path (captions match on it)."""
    if e.rejected is None:
        problem = Rejected("no-caption", "no caption names this image") if caps is None else \
            caps if isinstance(caps, Rejected) else None
        e = replace(e, rejected=problem)
    return replace(e, label=None, key=rel)


def _check(texts: list, where: str) -> "list[str] | Rejected":
    """A caption list is usable: non-empty, each caption a non-empty text with a word."""
    if not texts:
        return Rejected("empty-caption", f"{where}: no captions")
    if len(texts) > MAX_CAPTIONS:
        return Rejected("too-many-captions", f"{where}: {len(texts)} captions > limit {MAX_CAPTIONS}")
    for i, t in enumerate(texts, 1):
        if not t.strip():
            return Rejected("empty-caption", f"{where}: caption {i} is empty")
        if not words(t):
            return Rejected("no-words", f"{where}: caption {i} {t.strip()[:40]!r} has no words")
    return [t.strip() for t in texts]


def _from_jsonl(source: Path, found: list[tuple[Entry, str]], images: set[str]):
    """captions.jsonl -> ({image path: captions or Rejected}, reject entries for lines naming no image row)."""
    if len(found) > 1 or found[0][1] != CAPTIONS_FILE:
        raise IngestError(f"{source}: {CAPTIONS_FILE} must appear once, at the top of the source "
                          f"(found {', '.join(e.path for e, _ in found)})")
    entry = found[0][0]
    if entry.rejected is not None:
        raise IngestError(f"{source}/{entry.path}: unreadable captions file ({entry.rejected})")
    captions: dict[str, object] = {}
    line_of: dict[str, int] = {}
    strays: list[Entry] = []
    for n, raw in enumerate(entry.data.split(b"\n"), 1):
        where = f"{CAPTIONS_FILE}:{n}"
        if not raw.strip():
            continue
        try:
            file, texts = _parse_line(raw, n)
        except Rejected as r:
            file = _file_named(raw) if r.reason == "encoding" else None
            if file in images and file not in line_of:  # the bad text belongs to a known image: reject that
                line_of[file], captions[file] = n, Rejected("encoding", f"{CAPTIONS_FILE} {r.detail}")
            else:
                strays.append(Entry(where, rejected=r))
            continue
        if file in line_of:
            strays.append(Entry(where, rejected=Rejected(
                "repeated-entry", f"{file} already has captions on line {line_of[file]}")))
            continue
        line_of[file] = n
        if file not in images:
            strays.append(Entry(where, rejected=Rejected("no-image", f"{file}: no such image in the source")))
            continue
        captions[file] = _check(texts, f"{CAPTIONS_FILE} line {n}")
    return captions, strays


def _file_named(raw: bytes) -> str | None:
    """The image a line with non-UTF-8 bytes names, when its "file" itself reads cleanly."""
    try:
        file = json.loads(raw.decode("utf-8", "replace")).get("file")
        return safe_name(file) if isinstance(file, str) and "\ufffd" not in file else None
    except (ValueError, AttributeError, Rejected):
        return None


def _parse_line(raw: bytes, n: int) -> tuple[str, list[str]]:
    try:
        text = raw.decode("utf-8-sig" if n == 1 else "utf-8")
    except UnicodeDecodeError as e:
        raise Rejected("encoding", f"line {n}: byte {e.start} is not UTF-8") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise Rejected("bad-json", f"line {n}: {e.msg} at column {e.colno}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("file"), str) or not obj["file"]:
        raise Rejected("bad-json", f"line {n}: needs \"file\": the image's path")
    texts = obj.get("captions")
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise Rejected("bad-json", f"line {n}: \"captions\" must be a list of texts")
    try:
        return safe_name(obj["file"]), texts
    except Rejected as r:
        raise Rejected("bad-json", f"line {n}: file {r.detail}") from None


def _from_texts(texts: dict[str, Entry], images: set[str]):
    """<stem>.txt files -> ({image stem: captions or Rejected}, reject entries for .txt without an image)."""
    stems = {str(PurePosixPath(r).with_suffix("")) for r in images}
    captions: dict[str, object] = {}
    strays: list[Entry] = []
    for rel, e in sorted(texts.items()):
        stem = str(PurePosixPath(rel).with_suffix(""))
        if stem not in stems:
            strays.append(Entry(e.path, rejected=Rejected("no-image", f"no image named {stem}.* beside it")))
        elif e.rejected is not None:
            captions[stem] = e.rejected
        else:
            try:
                body = e.data.decode("utf-8-sig")
            except UnicodeDecodeError as err:
                captions[stem] = Rejected("encoding", f"{e.path}: byte {err.start} is not UTF-8")
                continue
            captions[stem] = _check([t for t in body.splitlines() if t.strip()], e.path)
    return captions, strays
