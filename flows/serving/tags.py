"""Registry tags serving writes (no heavy imports: `models compare` and the run summary read them)."""
from __future__ import annotations

REFUSED_TAG = "serving.refused"  # on a version: why serving refused it (fails to load, non-finite output)
SERVED_TAG = "serving.version"  # on the registered model: the version serving replicas last switched to


def served_version(c, name: str) -> str | None:
    """The version `ganpipe deploy` last switched to for `name`, or None (never served, or unreadable)."""
    try:
        return (c.get_registered_model(name).tags or {}).get(SERVED_TAG)
    except Exception:  # a summary or a table must not fail on this
        return None
