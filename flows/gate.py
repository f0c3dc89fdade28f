"""The champion gate as a pure decision: no MLflow here, so every branch is unit-tested."""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Scored:
    fid: float
    fingerprint_id: str
    version: str = ""


def decide(candidate: Scored, champion: Scored | None, margin: float) -> tuple[bool, str]:
    """Promote only a finite FID that beats the champion's by more than `margin` under the same
    evaluator fingerprint; the first valid model for a name becomes champion."""
    if not math.isfinite(candidate.fid):
        return False, f"FID is not finite ({candidate.fid}); never promoted"
    if champion is None:
        return True, "first valid model under this name"
    if champion.fingerprint_id != candidate.fingerprint_id:
        return False, (f"evaluator fingerprint {candidate.fingerprint_id} differs from champion v{champion.version}'s "
                       f"{champion.fingerprint_id}: the FIDs are not comparable, champion kept")
    if candidate.fid < champion.fid - margin:
        return True, (f"FID {candidate.fid:.4f} beats champion v{champion.version} ({champion.fid:.4f}) "
                      f"by more than the margin {margin}")
    return False, (f"FID {candidate.fid:.4f} does not beat champion v{champion.version} ({champion.fid:.4f}) "
                   f"by more than the margin {margin}")
