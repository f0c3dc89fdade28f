"""params.yaml + `key=value` overrides -> a validated PipelineConfig.

Overrides behave like `dvc exp run -S key=value`: they are written into params.yaml (comments kept)
before anything runs, so params.yaml, dvc.lock and the params hash on the model always agree.
A bad override changes nothing: the merged config is validated first, then written.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import yaml
from ruamel.yaml import YAML

from gan_core.config import FAMILY, SECTIONS, ConfigError, PipelineConfig
from gan_core.files import write_text_atomic


def parse_override(text: str) -> tuple[tuple[str, ...], Any]:
    """`section.field=value`, or `family.<arch>.field=value` for a family's own settings."""
    if "=" not in text:
        raise ConfigError(text, "override must look like section.field=value (e.g. train.steps=500)")
    key, raw = text.split("=", 1)
    parts = tuple(key.strip().split("."))
    nested = parts[0] == FAMILY
    if len(parts) != (3 if nested else 2) or not all(parts):
        raise ConfigError(key, "override key must be section.field (e.g. model.arch), or family.ARCH.field "
                               "(e.g. family.pix2pix.l1_lambda)")
    if parts[0] not in (*SECTIONS, FAMILY):
        raise ConfigError(key, f"unknown section {parts[0]!r} (known: {', '.join([*SECTIONS, FAMILY])})")
    return parts, parse_value(key.strip(), raw)


def parse_value(key: str, raw: str) -> Any:
    """A value is YAML (`5`, `true`, `hinge`), as in params.yaml; malformed YAML (`[`, `{`) from the CLI
    or the UI's overrides list is the user's mistake, so it names the field instead of a parser traceback."""
    if not raw.strip():
        return ""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as e:
        why = getattr(e, "problem", None) or type(e).__name__
        raise ConfigError(key, f"value {raw!r} is not valid YAML ({why}); quote it or fix it") from None


def read_params(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(str(path), "params file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(str(path), f"not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(str(path), "top level must be a mapping of sections")
    return data


def load_config(path: Path, overrides: list[str] | tuple[str, ...] = (), write: bool = True) -> PipelineConfig:
    """Validate params.yaml with overrides applied; write the overrides back only if valid."""
    data = read_params(path)
    parsed = [parse_override(o) for o in overrides]
    for keys, value in parsed:
        node = data
        for i, k in enumerate(keys[:-1]):
            if node.get(k) is None:
                node[k] = {}
            if not isinstance(node[k], dict):
                raise ConfigError(".".join(keys[:i + 1]), f"{path}: section must be a mapping")
            node = node[k]
        node[keys[-1]] = value
    try:
        cfg = PipelineConfig.from_dict(data)
        check_choices(cfg, path.parent)
    except ConfigError as e:
        raise ConfigError(e.field, f"{e.reason} (in {path.name} with overrides {list(overrides)})") from e
    if parsed and write:
        _write_overrides(path, parsed)
    return cfg


def check_choices(cfg: PipelineConfig, workspace: Path | None = None) -> None:
    """Names that must exist somewhere (family, loss, backbone, dataset and version): checked before any work."""
    from gan_core.metrics.evaluator import BACKBONES
    from gan_core.models import family_for

    family_for(cfg.model)
    if cfg.eval.backbone not in BACKBONES:
        raise ConfigError("eval.backbone", f"unknown backbone {cfg.eval.backbone!r} (known: {', '.join(BACKBONES)})")
    if workspace is not None:
        check_dataset(cfg, workspace)


def check_dataset(cfg: PipelineConfig, workspace: Path) -> None:
    """data.name is a catalogued NAME[@VERSION] whose shape matches data.resolution/channels, or a
    built-in name (no version). Unknown names and versions list what exists."""
    from flows.data import catalog
    from flows.data.sources import builtin_kind, builtin_names
    from gan_core.models import family_for

    d = cfg.data
    data = catalog.load(workspace)
    family = family_for(cfg.model)
    usable = {"unconditional": ("unconditional", "labelled", "superres"), "labelled": ("labelled",)}.get(
        family.dataset_kind, (family.dataset_kind,))
    if d.dataset not in data["datasets"]:
        builtins = builtin_names()
        if d.dataset in builtins and d.version is None:
            kind = builtin_kind(d.dataset)
            if kind not in usable:
                raise ConfigError("data.name", f"built-in {d.dataset} is a {kind} dataset; {family.name} trains on "
                                               f"{' or '.join(usable)} data (model.arch={family.name})")
            return
        known = sorted(data["datasets"]) + [f"{n} (built-in)" for n in builtins]
        what = f"unknown dataset {d.dataset!r}" if d.version is None or d.dataset not in builtins else \
            f"built-in dataset {d.dataset!r} has no versions; add it to the catalog to version it"
        raise ConfigError("data.name", f"{what} (known: {', '.join(known)}; add one with "
                                       f"`ganpipe dataset add NAME SOURCE`)")
    version, entry = catalog.resolve(data, d.dataset, d.version)
    if entry["kind"] not in usable:
        raise ConfigError("data.name", f"{d.dataset}@{version} is a {entry['kind']} dataset; {family.name} trains on "
                                       f"{' or '.join(usable)} data (model.arch={family.name})")
    if (entry["resolution"], entry["channels"]) != (d.resolution, d.channels):
        raise ConfigError("data.resolution", f"{d.dataset}@{version} is {entry['resolution']}x{entry['resolution']} "
                                             f"with {entry['channels']} channel(s); set data.resolution="
                                             f"{entry['resolution']} data.channels={entry['channels']}")


def _write_overrides(path: Path, parsed: list[tuple[tuple[str, ...], Any]]) -> None:
    rt = YAML()  # round-trip: keeps comments and key order
    rt.preserve_quotes = True  # "off", "yes", "1e-4" stay strings for YAML 1.1 readers (PyYAML, DVC)
    doc = rt.load(path.read_text())
    for keys, value in parsed:
        node = doc
        for k in keys[:-1]:
            if node.get(k) is None:
                node[k] = {}
            node = node[k]
        node[keys[-1]] = value
    buf = io.StringIO()
    rt.dump(doc, buf)
    write_text_atomic(path, buf.getvalue())
