"""Signed provenance of generated images: an HMAC-SHA256 over the provenance text exactly as stored
and a hash of the decoded pixels, so editing any field, any byte of the text or any pixel breaks it.

Pure functions: the key is passed in (the CLI and stages look it up; nothing here reads the
environment). The signature record names the key by id (the first 8 hex of sha256(key)), so a
verifier holding another key can say so instead of calling the image altered.
"""
from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass

import numpy as np

SCHEME = "ganpipe-hmac-sha256-v1"

VERIFIED, ALTERED, UNSIGNED, NO_KEY, OTHER_KEY = "verified", "altered", "unsigned", "no-key", "other-key"


def canonical(provenance: dict) -> str:
    """The one text a provenance dict is stored and signed as (sorted keys, no spaces, ASCII)."""
    return json.dumps(provenance, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:8]


def pixels_sha256(array: np.ndarray) -> str:
    """Hash of the decoded pixels with their shape and dtype: re-compressing a PNG keeps it, changing
    any pixel (or cropping, or a mode change) does not."""
    a = np.ascontiguousarray(array)
    h = hashlib.sha256(f"{a.dtype.str}|{'x'.join(map(str, a.shape))}|".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def _mac(key: bytes, text: str, pixels: str, kid: str) -> str:
    msg = "\n".join((SCHEME, kid, pixels, text)).encode()
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


def sign(text: str, pixels: str, key: bytes) -> dict:
    """The signature record of provenance `text` (stored as is) over pixels hashed as `pixels`."""
    kid = key_id(key)
    return {"scheme": SCHEME, "key_id": kid, "pixels_sha256": pixels, "mac": _mac(key, text, pixels, kid)}


def tag(text: str, key: bytes) -> int:
    """32 bits of a keyed hash of the provenance text: what a watermark carries besides the key id."""
    return int.from_bytes(hmac.new(key, b"watermark\n" + text.encode(), hashlib.sha256).digest()[:4], "big")


@dataclass(frozen=True)
class Verdict:
    status: str  # one of VERIFIED, ALTERED, UNSIGNED, NO_KEY, OTHER_KEY
    detail: str


def verify(text: str | None, signature: str | None, pixels: str, key: bytes | None) -> Verdict:
    """The verdict on stored provenance `text` and signature chunk `signature` (both as read from the
    file, None where absent) for an image whose decoded pixels hash to `pixels`."""
    if signature is None:
        if text is None:
            return Verdict(UNSIGNED, "no ganpipe provenance metadata (stripped, or not written by ganpipe)")
        return Verdict(UNSIGNED, "provenance fields but no signature: written unsigned, or the signature was removed")
    try:
        sig = json.loads(signature)
        kid, claimed, mac, scheme = sig["key_id"], sig["pixels_sha256"], sig["mac"], sig["scheme"]
    except (ValueError, KeyError, TypeError):
        return Verdict(ALTERED, "the signature chunk is not a signature record (edited or damaged)")
    if scheme != SCHEME:
        return Verdict(ALTERED, f"unknown signature scheme {scheme!r} (this ganpipe knows {SCHEME})")
    if text is None:
        return Verdict(ALTERED, "signed, but the provenance fields were removed")
    if key is None:
        return Verdict(NO_KEY, f"signed with key {kid}, but no key is available here to verify it")
    if kid != key_id(key):
        if hmac.compare_digest(mac, _mac(key, text, claimed, key_id(key))):  # our key signed it: the id was edited
            return Verdict(ALTERED, "the signature's key id was changed")
        return Verdict(OTHER_KEY, f"signed with key {kid}; the key here is {key_id(key)}")
    if not hmac.compare_digest(mac, _mac(key, text, claimed, kid)):
        return Verdict(ALTERED, "the provenance fields (or the signature) changed since signing")
    if claimed != pixels:
        return Verdict(ALTERED, "the pixels changed since signing")
    return Verdict(VERIFIED, f"signed with key {kid}; fields and pixels unchanged")
