"""Archive members read into memory, never extracted to disk, each checked before it is read.

Whole-archive limits (member count, total uncompressed bytes, overall expansion ratio) stop the
archive with IngestError: past them, reading on is the attack. Member-level problems (absolute or
`..` paths, links, devices, a member expanding more than `max_ratio`) reject that member only.
"""
from __future__ import annotations

import os
import stat
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator

from gan_core.ingest.report import IngestError, Rejected


@dataclass(frozen=True)
class ArchiveLimits:
    max_members: int = 200_000
    max_total_bytes: int = 4 * 2**30  # uncompressed
    max_member_bytes: int = 64 * 2**20
    max_ratio: float = 200.0  # uncompressed / compressed, per zip member and for a whole tar


@dataclass(frozen=True)
class Member:
    name: str  # normalised relative POSIX path inside the archive
    data: bytes | None  # None when rejected
    rejected: Rejected | None = None


def is_archive(path: Path) -> bool:
    return path.is_file() and (zipfile.is_zipfile(path) or _is_tar(path))


def _is_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


def safe_name(name: str) -> str:
    """Relative, normalised, inside the archive; raises Rejected otherwise."""
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise Rejected("unsafe-path", f"absolute path {name!r}")
    parts = [p for p in PurePosixPath(name.replace("\\", "/")).parts if p not in ("", ".")]
    if ".." in parts:
        raise Rejected("unsafe-path", f"{name!r} climbs out with '..'")
    return "/".join(parts)


def read_archive(path: Path, limits: ArchiveLimits = ArchiveLimits()) -> Iterator[Member]:
    path = Path(path)
    if zipfile.is_zipfile(path):
        yield from _read_zip(path, limits)
    elif _is_tar(path):
        yield from _read_tar(path, limits)
    else:
        raise IngestError(f"{path}: not a zip or tar archive")


def _read_zip(path: Path, limits: ArchiveLimits) -> Iterator[Member]:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise IngestError(f"{path}: unreadable zip ({e})") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > limits.max_members:
            raise IngestError(f"{path}: {len(infos)} members > limit {limits.max_members}")
        declared = sum(i.file_size for i in infos)
        if declared > limits.max_total_bytes:
            raise IngestError(f"{path}: {declared} bytes uncompressed > limit {limits.max_total_bytes} (zip bomb?)")
        for info in infos:
            if info.is_dir():
                continue
            try:
                name = safe_name(info.filename)
                kind = stat.S_IFMT(info.external_attr >> 16)
                if kind == stat.S_IFLNK:
                    raise Rejected("link", "symbolic link (links are not followed)")
                if kind not in (0, stat.S_IFREG):
                    raise Rejected("special-file", f"file type {oct(kind)}")
                if info.file_size > limits.max_member_bytes:
                    raise Rejected("too-large", f"{info.file_size} bytes > limit {limits.max_member_bytes}")
                if info.file_size > limits.max_ratio * max(info.compress_size, 1):
                    raise Rejected("compression-ratio", f"{info.compress_size} -> {info.file_size} bytes "
                                                        f"(> {limits.max_ratio:g}x)")
                with zf.open(info) as f:  # read no more than declared: the header may lie
                    data = f.read(info.file_size + 1)
                if len(data) != info.file_size:
                    raise Rejected("corrupt", f"declares {info.file_size} bytes, holds {len(data)}")
                yield Member(name, data)
            except Rejected as r:
                yield Member(info.filename, None, r)
            except (zipfile.BadZipFile, OSError, EOFError) as e:  # CRC mismatch, truncated member
                yield Member(info.filename, None, Rejected("corrupt", f"{type(e).__name__}: {e}"))


def _read_tar(path: Path, limits: ArchiveLimits) -> Iterator[Member]:
    compressed = os.path.getsize(path)
    total = count = 0
    try:
        tf = tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError) as e:
        raise IngestError(f"{path}: unreadable tar ({e})") from None
    with tf:
        for info in tf:  # streams: headers are read one at a time, never all up front
            count += 1
            if count > limits.max_members:
                raise IngestError(f"{path}: more than {limits.max_members} members")
            if info.isdir():
                continue
            try:
                name = safe_name(info.name)
                if info.issym() or info.islnk():
                    target = info.linkname
                    out = target.startswith("/") or ".." in PurePosixPath(target).parts
                    raise Rejected("link", f"{'symlink' if info.issym() else 'hard link'} to {target!r}"
                                           + (" (points out of the archive)" if out else " (links are not followed)"))
                if not info.isreg():
                    raise Rejected("special-file", "device, FIFO or other non-regular member")
                if info.size > limits.max_member_bytes:
                    raise Rejected("too-large", f"{info.size} bytes > limit {limits.max_member_bytes}")
                total += info.size
                if total > limits.max_total_bytes or total > limits.max_ratio * max(compressed, 1):
                    raise IngestError(f"{path}: expands past {total} bytes from {compressed} compressed "
                                      f"(limits {limits.max_total_bytes} bytes, {limits.max_ratio:g}x; tar bomb?)")
                f = tf.extractfile(info)
                data = f.read(info.size + 1) if f is not None else b""
                if len(data) != info.size:
                    raise Rejected("corrupt", f"declares {info.size} bytes, holds {len(data)}")
                yield Member(name, data)
            except Rejected as r:
                yield Member(info.name, None, r)
            except (tarfile.TarError, OSError, EOFError) as e:
                yield Member(info.name, None, Rejected("corrupt", f"{type(e).__name__}: {e}"))
