"""File primitives every writer in the project shares: hashing, atomic writes, atomic folder swaps.

Readers must never see a half-written file or folder, so every write goes to a temporary sibling
that is fsynced and then renamed into place (a rename within one folder is atomic on POSIX).
A write that runs out of room (full disk or quota, or the process's file-size limit) raises
DiskFullError naming what was being written; the temporaries are removed and the previous
version is left in place."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

# errno of a write that failed for lack of room, not for a bug: what the user can act on
NO_ROOM = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
           errno.EFBIG: "a file-size limit was reached (ulimit -f)"}


class DiskFullError(OSError):
    """Writing `filename` ran out of room. Constructed like OSError(errno, strerror, filename), so it
    survives pickling (Ray ships worker exceptions); the message names the path and the reason."""

    def __str__(self) -> str:
        why = NO_ROOM.get(self.errno, "no room")
        return f"{self.filename}: not written: {self.strerror} ({why}); the previous version is unchanged"


@contextmanager
def room_for(path: str | Path) -> Iterator[None]:
    """Turn an out-of-room OSError raised inside into DiskFullError naming `path` (the thing the
    caller was writing, not one of its temporaries). Other errors pass through unchanged."""
    try:
        yield
    except OSError as e:
        if e.errno not in NO_ROOM:
            raise
        raise DiskFullError(e.errno, e.strerror or os.strerror(e.errno), str(path)) from e


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, rename: readers never see a partial file."""
    write_files_atomic({Path(path): data})


def write_files_atomic(files: dict[Path, bytes]) -> None:
    """Write every file to a temp sibling and fsync them all before renaming any: running out of
    room (the likely failure) can only happen before the first rename, so it leaves every old file
    as it was (a checkpoint and its hash sidecar stay a matching pair). Renames follow in dict order."""
    tmps: dict[Path, str] = {}
    try:
        for path, data in files.items():
            with room_for(path):
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmps[path] = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
        for path, tmp in tmps.items():
            os.replace(tmp, path)
    except BaseException:
        for tmp in tmps.values():
            Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def write_json_atomic(path: str | Path, obj: dict) -> None:
    write_bytes_atomic(path, json_bytes(obj))


def canonical_json(obj) -> str:
    """One text per value (sorted keys, no spaces): what config and fingerprint hashes are taken of."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def json_bytes(obj: dict) -> bytes:
    """Sorted keys and a trailing newline, so equal content gives equal bytes (and DVC hashes)."""
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def replace_dir(new: Path, dest: Path) -> None:
    """Swap `new` into place as `dest` with renames only; the previous folder is removed afterwards."""
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, old)
    os.replace(new, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
