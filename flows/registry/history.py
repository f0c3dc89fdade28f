"""The champion history of a registered model: every move of the `champion` alias, automatic (the
gate at registration) or manual (`ganpipe models promote|rollback`), newest last.

Kept as one model-level tag, `champion.history`, holding a compact JSON list: the MLflow UI shows it on
the model's page, and it is written only by promoters holding the promotion lock
(flows.stages.register.promotion_lock), so a read-modify-write never loses a concurrent entry. Per-version
tags could not say in which order the alias moved. The list keeps the last MAX_ENTRIES moves (a tag
value holds 100,000 characters in MLflow 3; 200 entries of ~250 characters stay well inside it)."""
from __future__ import annotations

import getpass
import json
import logging
import os
import socket
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

log = logging.getLogger(__name__)
HISTORY_TAG = "champion.history"
MAX_ENTRIES = 200
AUTOMATIC = "automatic"
KINDS = ("automatic", "manual", "rollback")


@dataclass(frozen=True)
class Move:
    """One move of the champion alias onto `version` (from `previous`, None for the first champion)."""
    version: str
    at: str  # UTC, ISO 8601
    by: str  # user@host, or "automatic" for the registration gate
    why: str
    previous: str | None
    kind: str = "automatic"  # automatic | manual | rollback
    forced: bool = False


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def who() -> str:
    """GANPIPE_USER if set (a CI job, a shared account), else user@host."""
    if os.environ.get("GANPIPE_USER"):
        return os.environ["GANPIPE_USER"]
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container uid without a passwd entry
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def parse(text: str | None) -> list[Move]:
    """The moves in a `champion.history` tag value; an empty or missing tag is no history. A value
    someone edited into something else raises, naming the tag (a silent reset would lose the chain
    rollback walks)."""
    if not text:
        return []
    try:
        return [Move(version=str(e["v"]), at=e["at"], by=e["by"], why=e["why"], previous=e.get("prev"),
                     kind=e.get("kind", AUTOMATIC), forced=bool(e.get("forced", False))) for e in json.loads(text)]
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"model tag {HISTORY_TAG!r} is not a list of moves ({type(e).__name__}: {e}); fix or "
                         "delete it in the MLflow UI") from e


def dump(moves: list[Move]) -> str:
    compact = [{"v": m.version, "at": m.at, "by": m.by, "why": m.why, "prev": m.previous, "kind": m.kind,
                **({"forced": True} if m.forced else {})} for m in moves[-MAX_ENTRIES:]]
    return json.dumps(compact, separators=(",", ":"))


def read(c, name: str) -> list[Move]:
    return parse(c.get_registered_model(name).tags.get(HISTORY_TAG))


def append(c, name: str, move: Move) -> None:
    """Add a move to the model's history. Call only while holding the promotion lock. An unreadable
    history is set aside (tag `champion.history.unreadable`) and a new one started: the alias has
    already moved, and a registration must not fail over its record."""
    text = c.get_registered_model(name).tags.get(HISTORY_TAG)
    try:
        moves = parse(text)
    except ValueError as e:
        log.warning("%s: %s; kept as %s.unreadable, a new history starts", name, e, HISTORY_TAG)
        c.set_registered_model_tag(name, f"{HISTORY_TAG}.unreadable", text)
        moves = []
    c.set_registered_model_tag(name, HISTORY_TAG, dump(moves + [move]))


def champion_chain(moves: list[Move], current: str | None) -> list[str]:
    """The champions in the order they reigned, a rollback undoing the move before it (so rolling back
    twice goes two champions back, not back and forth). `current` (the alias now) ends the chain even
    when the alias was moved outside ganpipe."""
    chain: list[str] = []
    for m in moves:
        if m.kind == "rollback" and len(chain) >= 2 and chain[-2] == m.version:
            chain.pop()
            continue
        # the champion it replaced, when that one got the alias unrecorded (before the history existed,
        # or by hand in the MLflow UI)
        if m.previous is not None and (not chain or chain[-1] != m.previous):
            chain.append(m.previous)
        if not chain or chain[-1] != m.version:
            chain.append(m.version)
    if current is not None and (not chain or chain[-1] != current):
        chain.append(current)
    return chain


def previous_champion(moves: list[Move], current: str | None) -> str | None:
    """The champion before the current one, or None when there was none."""
    chain = champion_chain(moves, current)
    return chain[-2] if len(chain) >= 2 else None


def as_dict(m: Move) -> dict:
    return asdict(m)


def read_quietly(c, name: str) -> list[Move]:
    """The history for a report (the run summary): [] with a warning when it cannot be read, since a
    report must not fail the run it reports on."""
    try:
        return read(c, name)
    except Exception as e:  # an unreadable tag, an unreachable server: the summary goes without it
        log.warning("%s: champion history not shown in the run summary: %s", name, e)
        return []
