"""The champion gate as a pure decision: no MLflow here, so every branch is unit-tested. The metric
and its direction are the family's (FID lower is better, PSNR higher)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping


@dataclass(frozen=True)
class Scored:
    value: float  # the family's gate metric (FID, PSNR, ...)
    fingerprint_id: str
    version: str = ""
    error: str = ""  # why the metric could not be computed (then value is nan), e.g. the evaluator's MetricError
    higher_is_better: bool = False  # FID: lower is better; PSNR: higher
    metric: str = "FID"  # its name, for the reasons

    def beats(self, other: "Scored", margin: float) -> bool:
        if self.higher_is_better:
            return self.value > other.value + margin
        return self.value < other.value - margin


def decide(candidate: Scored, champion: Scored | None, margin: float) -> tuple[bool, str]:
    """Promote only a finite metric that beats the champion's by more than `margin` (in the
    direction its family declares) under the same evaluator fingerprint; the first valid model for
    a name becomes champion."""
    m = candidate.metric
    if not math.isfinite(candidate.value):
        why = f"{candidate.value}: {candidate.error}" if candidate.error else f"{candidate.value}"
        return False, f"{m} is not finite ({why}); never promoted"
    if champion is None:
        return True, "first valid model under this name"
    if candidate.version and champion.version == candidate.version:
        return True, f"v{candidate.version} is already the champion"
    if champion.fingerprint_id != candidate.fingerprint_id:
        return False, (f"evaluator fingerprint {candidate.fingerprint_id} differs from champion v{champion.version}'s "
                       f"{champion.fingerprint_id}: the {m}s are not comparable, champion kept")
    better = "higher" if candidate.higher_is_better else "lower"
    verdict = "beats" if candidate.beats(champion, margin) else "does not beat"
    return candidate.beats(champion, margin), (
        f"{m} {candidate.value:.4f} {verdict} champion v{champion.version} ({champion.value:.4f}) by more than "
        f"the margin {margin} ({better} is better)")


def fid_from_record(value) -> float:
    """The gate metric (FID, PSNR, ...) as stage records store it: a number, or null when it was not finite (JSON has no NaN)."""
    if value is None:
        return math.nan
    try:
        return float(value)  # also reads "nan"/"inf" strings and tag values
    except (TypeError, ValueError):
        return math.nan


def same_registration(versions: Iterable[tuple[str, Mapping[str, str]]], run_id: str,
                      checkpoint_sha256: str) -> str | None:
    """The version (lowest number) already registered for this training run and checkpoint, from
    (version, tags) pairs, or None. Registration is idempotent on that pair: a retried register
    stage returns it instead of logging the model again."""
    found = [int(v) for v, tags in versions
             if tags.get("mlflow.run_id") == run_id and tags.get("checkpoint.sha256") == checkpoint_sha256]
    return str(min(found)) if found else None


def recorded_decision(tags: Mapping[str, str]) -> str | None:
    """The promotion reason a version was tagged with, or None if its promotion never completed."""
    if tags.get("promotion.decision") in ("promoted", "not promoted", "refused"):
        return tags.get("promotion.reason", "")
    return None


def decision_label(candidate: Scored, promoted: bool) -> str:
    """The `promotion.decision` tag: promoted, refused (no finite FID: never eligible), or not promoted."""
    if promoted:
        return "promoted"
    return "refused" if not math.isfinite(candidate.value) else "not promoted"


# ---- privacy (DP-GAN, gan_core/privacy.py): two refusals on top of the metric ------------------------
EPSILON_TAG = "privacy.epsilon"  # on every version trained with privacy.enabled; absent: not DP
BUDGET_ENV = "GANPIPE_MAX_EPSILON"  # the registry's privacy budget: no version with a larger epsilon is promoted


def epsilon_of(tags: Mapping[str, str]) -> float | None:
    """A version's epsilon, or None for a model trained without differential privacy."""
    value = tags.get(EPSILON_TAG)
    return None if value in (None, "") else fid_from_record(value)


def epsilon_budget(env: Mapping[str, str]) -> float:
    """GANPIPE_MAX_EPSILON as a number; 0 (or unset) means no budget."""
    raw = env.get(BUDGET_ENV, "").strip()
    if not raw:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{BUDGET_ENV}={raw!r}: must be a number (the largest epsilon a champion may have)") from None
    if not value >= 0:
        raise ValueError(f"{BUDGET_ENV}={raw!r}: must be >= 0 (0: no budget)")
    return value


def privacy_refusal(candidate: Mapping[str, str], champion: Mapping[str, str] | None, max_epsilon: float,
                    allow_non_private: bool) -> tuple[str, bool] | None:
    """Why a version's privacy keeps it from becoming champion, with whether the user may override it, or
    None. A DP model over the budget is never promoted (raise the budget instead: no flag overrides it,
    and an epsilon that is not finite counts as over any budget); a non-DP model does not replace a DP
    champion unless the user allows it (`--allow-non-private`, `--force`, params privacy.allow_non_private)."""
    eps = epsilon_of(candidate)
    if eps is not None and max_epsilon > 0 and not eps <= max_epsilon:
        return (f"privacy epsilon {eps:.4g} exceeds the registry budget {BUDGET_ENV}={max_epsilon:g}; "
                "never promoted"), False
    champion_eps = epsilon_of(champion) if champion is not None else None
    if eps is None and champion_eps is not None and not allow_non_private:
        return (f"a model trained without differential privacy does not replace a DP champion (epsilon "
                f"{champion_eps:.4g}) unless allowed (--allow-non-private, or params privacy.allow_non_private)"), True
    return None
