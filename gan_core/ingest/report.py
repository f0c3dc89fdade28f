"""What ingestion refused and why: one line per file, counts per reason."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

# reason codes (stable: tests, reports and the CLI's summary use them)
REASONS = {
    "empty": "zero-byte file",
    "format": "not an image in an allowed format",
    "truncated": "image data ends early",
    "corrupt": "image data cannot be decoded",
    "bomb": "more pixels than the decompression-bomb limit",
    "mode": "colour mode not accepted by the policy",
    "size": "size not accepted by the policy",
    "duplicate": "same pixels (and label) as an earlier file",
    "unsafe-path": "archive member path is absolute or leaves the archive",
    "link": "symbolic or hard link",
    "special-file": "device, FIFO or other non-regular file",
    "compression-ratio": "archive member expands more than the ratio limit",
    "too-large": "file larger than the per-file limit",
    "no-label": "file outside the class sub-folders of a labelled dataset",
    "no-pair": "paired dataset: no file of the same name in the other domain's folder",
    # captioned data (gan_core/ingest/captioned.py)
    "no-caption": "captioned dataset: image without a caption",
    "empty-caption": "captioned dataset: an empty caption (or a caption file with no non-empty line)",
    "no-words": "captioned dataset: a caption without a word (letters or digits)",
    "too-many-captions": "captioned dataset: more captions for one image than the limit",
    "encoding": "caption text is not UTF-8",
    "bad-json": "captions.jsonl line is not a JSON object {\"file\": ..., \"captions\": [...]}",
    "no-image": "a caption for an image that is not in the source",
    "repeated-entry": "a second captions.jsonl line for the same image",
}


class Rejected(Exception):
    """One input file is refused; `reason` is a key of REASONS, `detail` says what was found."""

    def __init__(self, reason: str, detail: str = ""):
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail or REASONS[reason]}")
        self.reason, self.detail = reason, detail or REASONS[reason]


class IngestError(ValueError):
    """The whole input is refused (an archive over its limits, rejects under the fail policy, ...)."""


@dataclass
class IngestReport:
    source: str
    accepted: int = 0
    rejected: list[tuple[str, str, str]] = field(default_factory=list)  # (path, reason, detail)
    converted: Counter = field(default_factory=Counter)  # "RGBA->L", "resize 32x24->16x16", ...

    def reject(self, path: str, err: Rejected) -> None:
        self.rejected.append((path, err.reason, err.detail))

    @property
    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(r for _, r, _ in self.rejected).items()))

    def to_dict(self) -> dict:
        return {"source": self.source, "accepted": self.accepted, "rejected_total": len(self.rejected),
                "rejected_by_reason": self.counts, "converted": dict(sorted(self.converted.items())),
                "rejected": [{"path": p, "reason": r, "detail": d} for p, r, d in self.rejected]}

    def summary(self, limit: int = 20) -> str:
        lines = [f"{self.source}: {self.accepted} accepted, {len(self.rejected)} rejected"]
        lines += [f"  {reason}: {n}" for reason, n in self.counts.items()]
        lines += [f"  - {p}: {r} ({d})" for p, r, d in self.rejected[:limit]]
        if len(self.rejected) > limit:
            lines.append(f"  ... and {len(self.rejected) - limit} more (see the report file)")
        return "\n".join(lines)
