"""Manual promotion and rollback of the `champion` alias (`ganpipe models promote|rollback`).

The checks are pure (`refusal`), so every branch is unit-tested; the action (`move_champion`) runs them
again on the champion re-read under the same promotion lock the registration gate takes
(flows.stages.register.promotion_lock), so a manual move and an automatic one never interleave. A move
is recorded on the version (promotion.manual.by/.at/.reason/.previous/.forced) and appended to the
model's champion history (flows.registry.history)."""
from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from flows.registry import history
from flows.registry.gate import epsilon_budget, privacy_refusal
from flows.registry.tracking import CHAMPION, champion_version

log = logging.getLogger(__name__)
MANUAL = "promotion.manual."


class PromotionError(ValueError):
    """The move cannot be made at all (unknown model or version, nothing to roll back to, no reason)."""


class PromotionRefused(PromotionError):
    """The move is refused by a check that --force overrides."""


@dataclass(frozen=True)
class Version:
    """What the checks read of a model version."""
    version: str
    tags: Mapping[str, str]


def refusal(candidate: Version, champion: Version | None, force: bool, max_epsilon: float = 0.0,
            allow_non_private: bool = False) -> str | None:
    """Why `candidate` must not become champion now, or None. Already being champion is refused even
    with force (there is nothing to move); a version the gate refused (no finite metric) or one scored
    under another evaluator fingerprint than the champion's (its metric is not comparable) only
    without force."""
    if champion is not None and champion.version == candidate.version:
        return f"v{candidate.version} is already the champion"
    # privacy: over the budget is refused even with --force; non-DP over a DP champion only without a flag
    held = privacy_refusal(candidate.tags, champion and champion.tags, max_epsilon, allow_non_private or force)
    if held is not None:
        return f"v{candidate.version}: {held[0]}" + (" (raise the budget to promote it)" if not held[1] else "")
    if force:
        return None
    tags = candidate.tags
    if tags.get("promotion.decision") == "refused":
        return (f"v{candidate.version} was refused at registration ({tags.get('promotion.reason', 'no reason recorded')}); "
                "--force to make it champion anyway")
    if champion is not None:
        mine, theirs = tags.get("eval.fingerprint_id", "missing"), champion.tags.get("eval.fingerprint_id", "missing")
        if mine != theirs:
            return (f"v{candidate.version} was scored under evaluator fingerprint {mine}, champion v{champion.version} "
                    f"under {theirs}: their metrics are not comparable; --force to make it champion anyway")
    return None


def _version(c, name: str, version: str) -> Version:
    from mlflow.exceptions import MlflowException

    try:
        v = c.get_model_version(name, version)
    except MlflowException:
        try:
            known = sorted(int(v.version) for v in c.search_model_versions(f"name='{_quoted(name)}'"))
        except MlflowException:
            known = []
        if not known:
            raise PromotionError(f"no registered model {name!r} (or it has no versions)") from None
        raise PromotionError(f"{name} has no version {version!r}; versions: "
                             f"{', '.join(f'v{k}' for k in known)}") from None
    return Version(str(v.version), dict(v.tags))


def _quoted(name: str) -> str:
    return name.replace("'", "\\'")


def _record(c, name: str, version: str, move: history.Move, champion) -> None:
    """Move the alias, tag both versions and append the history: under the lock, alias first (the
    move itself), then what records it."""
    c.set_registered_model_alias(name, CHAMPION, version)
    for key, value in (("by", move.by), ("at", move.at), ("reason", move.why), ("previous", move.previous or "none"),
                       ("forced", "true" if move.forced else "false"), ("kind", move.kind)):
        c.set_model_version_tag(name, version, MANUAL + key, value)
    if champion is not None:
        c.set_model_version_tag(name, champion.version, "promotion.superseded_by",
                                f"v{version} ({move.kind} by {move.by}: {move.why})")
    history.append(c, name, move)


def move_champion(c, name: str, target: str | None, reason: str, force: bool, lock_path: Path,
                  rollback: bool = False, allow_non_private: bool = False) -> history.Move:
    """Make `target` the champion (a manual promotion), or with rollback=True (target None) the
    champion before the current one. Checks run on the champion re-read under the promotion lock.
    Raises PromotionError/PromotionRefused with the reason; returns the move recorded."""
    from flows.stages.register import promotion_lock

    reason = reason.strip()
    try:
        budget = epsilon_budget(os.environ)  # a malformed GANPIPE_MAX_EPSILON fails before the lock
    except ValueError as e:
        raise PromotionError(str(e)) from None
    if not reason:
        raise PromotionError("--reason is empty: say why the champion changes (it is recorded on the version)")
    if target is not None:
        _version(c, name, target)  # an unknown name or version fails before waiting for the lock
    holder = f"pid {os.getpid()} on {socket.gethostname()}: {'rollback' if rollback else 'promote'} {name}"

    def on_wait(who: str) -> None:
        log.warning("waiting for the promotion lock of %s, held by %s", name, who)

    with promotion_lock(name, Path(lock_path), holder, on_wait):
        current = champion_version(c, name)
        champion = None if current is None else Version(str(current.version), dict(current.tags))
        moves = history.read(c, name)
        if rollback:
            if champion is None:
                raise PromotionError(f"{name} has no champion to roll back")
            target = history.previous_champion(moves, champion.version)
            if target is None:
                raise PromotionError(f"{name}: no champion before v{champion.version} in its history "
                                     f"({len(moves)} recorded moves); nothing to roll back to")
        candidate = _version(c, name, target)
        if why_not := refusal(candidate, champion, force, budget, allow_non_private):
            raise PromotionRefused(f"{name}: {why_not}")
        move = history.Move(version=candidate.version, at=history.now_utc(), by=history.who(), why=reason,
                            previous=champion and champion.version, kind="rollback" if rollback else "manual",
                            forced=force and refusal(candidate, champion, False, budget, allow_non_private) is not None)
        _record(c, name, candidate.version, move, champion)
    log.info("%s: champion v%s -> v%s (%s by %s: %s)", name, move.previous, move.version, move.kind, move.by, reason)
    return move
