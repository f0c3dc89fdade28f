"""The dataset catalog: data/catalog.yaml in the repo, name -> versions -> what each version is.

Written only by `ganpipe dataset add`, under a lock, atomically, and only after the version's data
is DVC-tracked and pushed; so an entry always points at data `dvc pull` can restore.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import yaml

from flows.ops.locks import file_lock
from gan_core.config import ConfigError
from gan_core.files import write_text_atomic

HEADER = "# Written by `ganpipe dataset add`; one entry per dataset version (data under DVC). Do not edit.\n"


def catalog_path(workspace: Path) -> Path:
    return workspace / "data" / "catalog.yaml"


def version_dir(workspace: Path, name: str, version: str) -> Path:
    return workspace / "data" / "datasets" / name / version


def load(workspace: Path) -> dict:
    path = catalog_path(workspace)
    if not path.is_file():
        return {"datasets": {}}
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data.get("datasets", {}), dict):
        raise ConfigError(str(path), "malformed catalog: 'datasets' must be a mapping")
    data.setdefault("datasets", {})
    return data


def save(workspace: Path, data: dict) -> None:
    write_text_atomic(catalog_path(workspace), HEADER + yaml.safe_dump(data, sort_keys=True))


@contextmanager
def locked(workspace: Path) -> Iterator[None]:
    """One writer at a time (two adds would both pick the same next version)."""
    with file_lock(workspace / "data" / ".catalog.lock"):
        yield


def versions(data: dict, name: str) -> dict:
    return (data["datasets"].get(name) or {}).get("versions", {})


def next_version(data: dict, name: str) -> str:
    nums = [int(v[1:]) for v in versions(data, name) if re.fullmatch(r"v\d+", v)]
    return f"v{max(nums, default=0) + 1}"


def find_content(data: dict, name: str, content_sha256: str) -> str | None:
    return next((v for v, e in versions(data, name).items() if e["content_sha256"] == content_sha256), None)


def resolve(data: dict, name: str, version: str | None, field: str = "data.name") -> tuple[str, dict]:
    """(version, entry) of NAME[@VERSION]; unknown names and versions list what exists."""
    if name not in data["datasets"]:
        known = ", ".join(sorted(data["datasets"])) or "none yet"
        raise ConfigError(field, f"unknown dataset {name!r} (catalogued: {known}; add one with "
                                 f"`ganpipe dataset add {name} SOURCE`)")
    vs = versions(data, name)
    version = version or data["datasets"][name]["latest"]
    if version not in vs:
        raise ConfigError(field, f"dataset {name!r} has no version {version!r} (versions: {', '.join(sorted(vs))})")
    return version, vs[version]


def with_version(data: dict, name: str, version: str, entry: dict) -> dict:
    """A copy of the catalog with the entry added and `latest` moved to it."""
    out = {"datasets": {k: dict(v) for k, v in data["datasets"].items()}}
    ds = out["datasets"].setdefault(name, {})
    ds["versions"] = {**ds.get("versions", {}), version: entry}
    ds["latest"] = version
    return out
