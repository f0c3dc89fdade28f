"""How strict ingestion is. Read once at the edge (CLI flags), frozen, validated with field names."""
from __future__ import annotations

from dataclasses import dataclass

from gan_core.sections import ConfigError

FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP")
MODES = ("convert", "reject")  # anything but L/RGB: convert it, or refuse the file
RESIZE = ("crop", "stretch", "reject")  # centre-crop to square then resize | resize as is | must match
DUPLICATES = ("drop", "keep")  # exact duplicates (same pixels and label): report and drop, or keep
ON_REJECT = ("fail", "skip")  # any reject fails the add (nothing written) | rejects are reported and skipped


@dataclass(frozen=True)
class IngestPolicy:
    resolution: int = 32
    channels: int = 3
    formats: tuple[str, ...] = FORMATS
    max_pixels: int = 40_000_000  # per image, from the header, before decoding (a 20000x20000 PNG is 400M)
    max_file_bytes: int = 64 * 2**20
    modes: str = "convert"
    resize: str = "crop"
    duplicates: str = "drop"
    on_reject: str = "fail"

    def __post_init__(self):
        def check(cond, name, reason):
            if not cond:
                raise ConfigError(name, reason)

        check(self.resolution >= 8 and self.resolution & (self.resolution - 1) == 0, "--resolution",
              f"must be a power of two >= 8, got {self.resolution}")
        check(self.channels in (1, 3), "--channels", f"must be 1 or 3, got {self.channels}")
        check(set(self.formats) <= set(FORMATS) and self.formats, "formats", f"must be a subset of {FORMATS}")
        check(self.max_pixels > 0 and self.max_file_bytes > 0, "max_pixels", "limits must be > 0")
        check(self.modes in MODES, "--modes", f"must be one of {MODES}, got {self.modes!r}")
        check(self.resize in RESIZE, "--resize", f"must be one of {RESIZE}, got {self.resize!r}")
        check(self.duplicates in DUPLICATES, "--duplicates", f"must be one of {DUPLICATES}, got {self.duplicates!r}")
        check(self.on_reject in ON_REJECT, "--policy", f"must be one of {ON_REJECT}, got {self.on_reject!r}")

    @property
    def target_mode(self) -> str:
        return "L" if self.channels == 1 else "RGB"
