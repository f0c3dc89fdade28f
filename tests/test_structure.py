"""Structure: gan_core's import graph has no cycle and its metrics load without the training stack;
the pipeline's config is parsed once per run and the run form's typed values keep their types.
(gan_core importing none of prefect/mlflow/ray/dvc/boto3 is tests/test_boundary.py.)"""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _drill():
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "drills" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- gan_core's import graph

def test_gan_core_has_no_import_cycle():
    ig = _drill()
    g = ig.graph()
    assert "gan_core.config" in g and "gan_core.models" in g["gan_core.config"]  # the graph was read
    assert ig.cycles(g) == []  # module-level and lazy imports both count: a lazy one only defers the loop


def test_the_cycle_check_finds_a_lazy_cycle(tmp_path):
    """The check above can fail: a loop closed by an import inside a function is reported, one under
    TYPE_CHECKING is not (it never runs)."""
    ig = _drill()
    pkg = tmp_path / "gan_core"
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "config.py").write_text("def defaults():\n    from gan_core.models import ARCHS\n    return ARCHS\n")
    (pkg / "models" / "__init__.py").write_text("from gan_core.config import defaults\nARCHS = {}\n")
    (pkg / "state.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                  "    from gan_core.train import Loop\n")
    (pkg / "train.py").write_text("from gan_core.state import *\n")
    g = ig.graph(pkg)
    assert g["gan_core.config"] == {"gan_core.models": ig.LAZY}
    assert g["gan_core.state"] == {"gan_core.train": ig.TYPE}
    assert ig.cycles(g) == [["gan_core.config", "gan_core.models"]]


def test_metrics_import_without_the_training_stack():
    code = ("import importlib, pkgutil, sys\nimport gan_core.metrics as m\n"
            "for i in pkgutil.walk_packages(m.__path__, 'gan_core.metrics.'): importlib.import_module(i.name)\n"
            "print(sorted(k for k in sys.modules if k.startswith('gan_core.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    loaded = eval(out)  # a printed list of module names
    assert "gan_core.metrics.monitor" in loaded and "gan_core.metrics.evaluator" in loaded
    assert "gan_core.state" in loaded  # the monitor's Callback base and TrainState
    assert not {"gan_core.train", "gan_core.checkpoint"} & set(loaded)


# --- the config, parsed once

def _workspace(tmp: Path) -> Path:
    for f in ("params.yaml", "dvc.yaml"):
        shutil.copy(ROOT / f, tmp / f)
    (tmp / "data").mkdir()
    shutil.copy(ROOT / "data" / "catalog.yaml", tmp / "data" / "catalog.yaml")
    return tmp


@pytest.fixture
def parses(monkeypatch):
    """How often PipelineConfig.from_dict runs (a counter around the real method)."""
    from gan_core.config import PipelineConfig

    calls = []
    real = PipelineConfig.from_dict.__func__

    def counted(cls, d):
        calls.append(d)
        return real(cls, d)

    monkeypatch.setattr(PipelineConfig, "from_dict", classmethod(counted))
    return calls


def test_a_run_parses_params_once(tmp_path, parses):
    """`ganpipe run train.steps=7`: the CLI checks before Prefect starts, the flow checks before it waits
    for the workspace lock and loads under it (writing the override): one parse for the three."""
    from flows.ops.params import load_config
    from flows.stages.pipeline import form_settings

    params = _workspace(tmp_path) / "params.yaml"
    overrides = ["train.steps=7"]
    checked = load_config(params, overrides, write=False)  # flows/cli/pipeline.py run
    values = form_settings(dict(dataset=None, arch=None, steps=None))  # the flow's form, left empty
    load_config(params, overrides, write=False, values=values)  # flows/stages/pipeline.py _run, before the lock
    cfg = load_config(params, overrides, values=values)  # ... and under it
    assert len(parses) == 1 and cfg is checked and cfg.train.steps == 7
    assert yaml.safe_load(params.read_text())["train"]["steps"] == 7  # the stages and dvc.lock read it there


def test_an_edit_in_between_is_parsed_again(tmp_path, parses):
    """What a run waiting for the lock must see: params.yaml changed by the run before it."""
    from flows.ops.params import load_config

    params = _workspace(tmp_path) / "params.yaml"
    load_config(params, write=False)
    load_config(tmp_path / "params.yaml", ["train.seed=3"], write=True)  # another run's override
    assert len(parses) == 2
    cfg = load_config(params, write=False)  # the same arguments as the first call, on the edited text
    assert len(parses) == 3 and cfg.train.seed == 3


def test_form_values_keep_their_types_into_params_yaml(tmp_path, parses):
    """A float the form sends as 1e-05 was a string after a trip through `key=value` text (YAML 1.1
    reads 1e-05 as a string); typed, it is set as it is and written so the stages read a number back."""
    from flows.ops.params import load_config, read_params
    from flows.stages.pipeline import form_settings
    from gan_core.config import ConfigError

    params = _workspace(tmp_path) / "params.yaml"
    values = form_settings(dict(promotion_margin=1e-05, use_gpu=False, steps=9))
    cfg = load_config(params, values=values)
    assert cfg.register.promotion_margin == 1e-05 and cfg.train.use_gpu is False and cfg.train.steps == 9
    assert read_params(params)["register"]["promotion_margin"] == 1e-05  # PyYAML, as `ganpipe stage` reads it
    assert load_config(params, write=False).register.promotion_margin == 1e-05
    with pytest.raises(ConfigError, match=r"^train\.steps: must be an integer"):
        load_config(params, write=False, values=form_settings(dict(steps="9")))  # no silent coercion either
