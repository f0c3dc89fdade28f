"""params.yaml + `key=value` overrides -> a validated PipelineConfig.

Overrides behave like `dvc exp run -S key=value`: they are written into params.yaml (comments kept)
before anything runs, so params.yaml, dvc.lock and the params hash on the model always agree.
A bad override changes nothing: the merged config is validated first, then written.

Typed values (the Prefect run form's ints, floats and bools) go in as they are, beside the overrides,
never through text: `1e-05` re-read as YAML 1.1 is a string, not a number. The config is parsed once
per params.yaml text and settings: a second load of the same inputs in the process (the CLI checks
before Prefect starts, the flow checks again before it waits for the workspace lock and loads under
it) returns the same frozen PipelineConfig.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Sequence

import yaml
from ruamel.yaml import YAML

from gan_core.config import FAMILY, SECTIONS, ConfigError, PipelineConfig
from gan_core.files import write_text_atomic


Setting = tuple[tuple[str, ...], Any]  # (("train", "steps"), 500): where a value goes, and the value


def parse_override(text: str) -> Setting:
    """`section.field=value`, or `family.<arch>.field=value` for a family's own settings."""
    if "=" not in text:
        raise ConfigError(text, "override must look like section.field=value (e.g. train.steps=500)")
    key, raw = text.split("=", 1)
    parts = setting_key(key.strip())
    return parts, parse_value(key.strip(), raw)


def setting_key(key: str) -> tuple[str, ...]:
    """`train.steps` -> ("train", "steps"), refusing a key no section has room for."""
    parts = tuple(key.split("."))
    nested = parts[0] == FAMILY
    if len(parts) != (3 if nested else 2) or not all(parts):
        raise ConfigError(key, "override key must be section.field (e.g. model.arch), or family.ARCH.field "
                               "(e.g. family.pix2pix.l1_lambda)")
    if parts[0] not in (*SECTIONS, FAMILY):
        raise ConfigError(key, f"unknown section {parts[0]!r} (known: {', '.join([*SECTIONS, FAMILY])})")
    return parts


def typed_settings(values: dict[str, Any]) -> list[Setting]:
    """`{"train.steps": 500}` -> settings that keep their types (None: leave params.yaml's value)."""
    return [(setting_key(k), v) for k, v in values.items() if v is not None]


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
    return _params_of(path, _params_text(path))


def _params_text(path: Path) -> str:
    if not path.is_file():
        raise ConfigError(str(path), "params file not found")
    return path.read_text()


def _params_of(path: Path, text: str) -> dict:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(str(path), f"not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(str(path), "top level must be a mapping of sections")
    return data


def load_config(path: Path, overrides: list[str] | tuple[str, ...] = (), write: bool = True,
                values: Sequence[Setting] = ()) -> PipelineConfig:
    """Validate params.yaml with `values` (typed settings) and then `overrides` (`key=value` text, which
    win, being applied last); write both back only if valid."""
    text = _params_text(path)
    parsed = [*values, *(parse_override(o) for o in overrides)]
    shown = [f"{'.'.join(k)}={v}" for k, v in values] + list(overrides)
    try:
        cfg = _parsed(path, text, parsed)
        check_choices(cfg, path.parent)
    except ConfigError as e:
        raise ConfigError(e.field, f"{e.reason} (in {path.name} with overrides {shown})") from e
    if parsed and write:
        _write_overrides(path, parsed)
    return cfg


_last: tuple[tuple, PipelineConfig] | None = None  # the last parse: its inputs and its config


def _parsed(path: Path, text: str, parsed: list[Setting]) -> PipelineConfig:
    """PipelineConfig of params.yaml's text with the settings applied: parsed once per distinct input.
    The key is the text itself, not a modification time, so an edit in between is never missed; a
    repr per value keeps 1, 1.0 and True apart."""
    global _last
    key = (str(path.resolve()), text, tuple((k, repr(v)) for k, v in parsed))
    if _last is not None and _last[0] == key:
        return _last[1]
    data = _params_of(path, text)
    for keys, value in parsed:
        node = data
        for i, k in enumerate(keys[:-1]):
            if node.get(k) is None:
                node[k] = {}
            if not isinstance(node[k], dict):
                raise ConfigError(".".join(keys[:i + 1]), f"{path}: section must be a mapping")
            node = node[k]
        node[keys[-1]] = value
    cfg = PipelineConfig.from_dict(data)
    _last = (key, cfg)
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


def article(word: str) -> str:
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"


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
                raise ConfigError("data.name", f"built-in {d.dataset} is {article(kind)} dataset; {family.name} trains on "
                                               f"{' or '.join(usable)} data (model.arch={family.name})")
            return
        known = sorted(data["datasets"]) + [f"{n} (built-in)" for n in builtins]
        what = f"unknown dataset {d.dataset!r}" if d.version is None or d.dataset not in builtins else \
            f"built-in dataset {d.dataset!r} has no versions; add it to the catalog to version it"
        raise ConfigError("data.name", f"{what} (known: {', '.join(known)}; add one with "
                                       f"`ganpipe dataset add NAME SOURCE`)")
    version, entry = catalog.resolve(data, d.dataset, d.version)
    if entry["kind"] not in usable:
        raise ConfigError("data.name", f"{d.dataset}@{version} is {article(entry['kind'])} dataset; {family.name} trains on "
                                       f"{' or '.join(usable)} data (model.arch={family.name})")
    if (entry["resolution"], entry["channels"]) != (d.resolution, d.channels):
        raise ConfigError("data.resolution", f"{d.dataset}@{version} is {entry['resolution']}x{entry['resolution']} "
                                             f"with {entry['channels']} channel(s); set data.resolution="
                                             f"{entry['resolution']} data.channels={entry['channels']}")


def _write_overrides(path: Path, parsed: list[Setting]) -> None:
    rt = YAML()  # round-trip: keeps comments and key order
    rt.preserve_quotes = True  # "off", "yes", "1e-4" stay strings for YAML 1.1 readers (PyYAML, DVC)
    rt.representer.add_representer(float, _float_yaml11)
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


def _float_yaml11(representer, value: float):
    """A float YAML 1.1 readers (PyYAML, DVC) read back as a float: ruamel writes 1e-05, which they
    read as a string; 1.0e-05 is a float to both."""
    text = repr(value)
    if text in ("inf", "-inf", "nan"):
        text = {"inf": ".inf", "-inf": "-.inf", "nan": ".nan"}[text]
    elif "e" in text and "." not in text.split("e")[0]:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}.0e{exponent}"
    return representer.represent_scalar("tag:yaml.org,2002:float", text)
