"""Where the provenance signing key comes from (the edge: gan_core.provenance takes the key as bytes).

Lookup order:
1. GANPIPE_PROVENANCE_KEY: the key itself (at least 16 characters, used as UTF-8 bytes).
2. GANPIPE_PROVENANCE_KEY_FILE: a file holding it (must exist; never created).
3. $GANPIPE_HOME/provenance.key: created on first signing (32 random bytes, hex, mode 0600).
There is no shipped default key: a key everyone has would let anyone forge a signature.
A key file readable by group or others is refused, as ssh refuses such private keys.
"""
from __future__ import annotations

import functools
import os
import secrets
import stat
from pathlib import Path

KEY_ENV = "GANPIPE_PROVENANCE_KEY"
KEY_FILE_ENV = "GANPIPE_PROVENANCE_KEY_FILE"
DEFAULT_NAME = "provenance.key"
MIN_LEN = 16


class ProvenanceKeyError(ValueError):
    """A key that is set but unusable; the message names the variable or file and why."""


def default_key_file(home: Path) -> Path:
    return Path(home) / DEFAULT_NAME


def _checked(key: bytes, where: str) -> bytes:
    if len(key) < MIN_LEN:
        raise ProvenanceKeyError(f"{where}: the provenance key is {len(key)} bytes; use at least {MIN_LEN} "
                        "(e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`)")
    return key


def _read(path: Path) -> bytes:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ProvenanceKeyError(f"{path}: provenance key file is readable by others (mode {stat.S_IMODE(mode):o}); "
                        f"run `chmod 600 {path}`")
    return _checked(path.read_bytes().strip(), str(path))


def _create(path: Path) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32).encode()
    try:  # O_EXCL: two processes creating it at once keep one key, the loser reads the winner's
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read(path)
    with os.fdopen(fd, "wb") as f:
        f.write(key + b"\n")
    return key


def verifying_key(home: Path | None, env=os.environ) -> bytes | None:
    """The key to verify with, or None where none is configured (nothing is created)."""
    if env.get(KEY_ENV):
        return _checked(env[KEY_ENV].encode(), KEY_ENV)
    if env.get(KEY_FILE_ENV):
        path = Path(env[KEY_FILE_ENV]).expanduser()
        if not path.is_file():
            raise ProvenanceKeyError(f"{KEY_FILE_ENV}={path}: no such file")
        return _read(path)
    if home is not None and default_key_file(home).is_file():
        return _read(default_key_file(home))
    return None


def signing_key(home: Path, env=os.environ) -> bytes:
    """The key to sign with; creates $GANPIPE_HOME/provenance.key (0600) when nothing is configured."""
    return verifying_key(home, env) or _create(default_key_file(home))


@functools.lru_cache(maxsize=1)
def serving_key() -> bytes | None:
    """A Serve replica's key, read once: GANPIPE_PROVENANCE_KEY_FILE (passed to replicas by
    flows.serving.app.build; the key itself is not, since runtime_env variables show in Ray's
    dashboard), GANPIPE_PROVENANCE_KEY, or $GANPIPE_HOME/provenance.key if it exists. None: the
    replica serves unsigned PNGs (it never creates a key: replicas on several hosts would each make one)."""
    home = os.environ.get("GANPIPE_HOME")
    return verifying_key(Path(home) if home else None)
