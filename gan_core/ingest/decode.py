"""One image file's bytes -> a uint8 (C, R, R) array, or Rejected with the reason.

Order matters for safety: the size limit and the format allow-list are checked from the header
before any pixel is decoded; `im.load()` then decodes everything, so truncated files fail here
and not later in training. Pillow's own decompression-bomb warning is raised as an error.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from gan_core.ingest.policy import IngestPolicy
from gan_core.ingest.report import Rejected

PLAIN = ("L", "RGB")


def open_checked(data: bytes, policy: IngestPolicy) -> Image.Image:
    """Open from the header only: empty, unknown/disallowed format and oversized images are refused."""
    if not data:
        raise Rejected("empty")
    if len(data) > policy.max_file_bytes:
        raise Rejected("too-large", f"{len(data)} bytes > limit {policy.max_file_bytes}")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data), formats=list(policy.formats))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise Rejected("bomb", str(e)) from None
        except UnidentifiedImageError:
            raise Rejected("format", f"not a {'/'.join(policy.formats)} image") from None
        except (OSError, SyntaxError, ValueError) as e:
            raise Rejected("corrupt", f"{type(e).__name__}: {e}") from None
    w, h = im.size
    if w * h > policy.max_pixels:
        raise Rejected("bomb", f"{w}x{h} = {w * h} pixels > limit {policy.max_pixels}")
    if w == 0 or h == 0:
        raise Rejected("corrupt", f"{w}x{h} image")
    return im


def load_pixels(im: Image.Image) -> Image.Image:
    try:
        im.load()
    except OSError as e:
        reason = "truncated" if "truncat" in str(e).lower() or "end of file" in str(e).lower() else "corrupt"
        raise Rejected(reason, f"{type(e).__name__}: {e}") from None
    except (SyntaxError, ValueError, EOFError) as e:
        raise Rejected("corrupt", f"{type(e).__name__}: {e}") from None
    return im


def to_target_mode(im: Image.Image, policy: IngestPolicy) -> tuple[Image.Image, str | None]:
    """Convert to L or RGB. Returns the image and a conversion label ("RGBA->RGB") or None."""
    src = im.mode
    if src in PLAIN:
        out = im if src == policy.target_mode else im.convert(policy.target_mode)
        return out, None if src == policy.target_mode else f"{src}->{policy.target_mode}"
    if policy.modes == "reject":
        raise Rejected("mode", f"mode {src} (only L and RGB with --modes reject)")
    if src in ("I;16", "I;16B", "I;16L", "I", "F"):  # high bit depth: scale the range to 8 bits
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if src.startswith("I;16") or a.max() > 255 else 255.0
        im = Image.fromarray(np.clip(np.round(a * (255.0 / top)), 0, 255).astype(np.uint8), "L")
    elif src in ("P", "PA"):
        im = im.convert("RGBA")
    elif src in ("CMYK", "YCbCr", "LAB", "HSV", "1"):
        im = im.convert("RGB" if src != "1" else "L")
    if im.mode in ("RGBA", "LA"):  # transparent pixels become black: composite over a black background
        im = Image.alpha_composite(Image.new("RGBA", im.size, (0, 0, 0, 255)), im.convert("RGBA"))
    return im.convert(policy.target_mode), f"{src}->{policy.target_mode}"


def to_target_size(im: Image.Image, policy: IngestPolicy) -> tuple[Image.Image, str | None]:
    r = policy.resolution
    w, h = im.size
    if (w, h) == (r, r):
        return im, None
    if policy.resize == "reject":
        raise Rejected("size", f"{w}x{h}, expected {r}x{r} (--resize reject)")
    if policy.resize == "crop" and w != h:
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        im = im.crop((left, top, left + side, top + side))
    return im.resize((r, r), Image.Resampling.BICUBIC), f"resize {w}x{h}->{r}x{r}"


def decode(data: bytes, policy: IngestPolicy) -> tuple[np.ndarray, list[str]]:
    """bytes -> (C, R, R) uint8 and the conversions applied; raises Rejected."""
    im = load_pixels(open_checked(data, policy))
    if getattr(im, "n_frames", 1) > 1:
        im.seek(0)  # animated GIF/WEBP/multi-page TIFF: the first frame is the image
    im, mode_change = to_target_mode(im, policy)
    im, size_change = to_target_size(im, policy)
    arr = np.asarray(im, dtype=np.uint8)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr), [c for c in (mode_change, size_change) if c]
