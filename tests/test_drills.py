"""Fault seams act only when drills are switched on, and a production profile refuses drills."""
import logging

import pytest

from flows.ops import drills
from flows.ops.faults import eval_fault
from flows.ops.settings import SettingsError, load_settings


@pytest.fixture
def drills_off(monkeypatch):
    monkeypatch.delenv("GANPIPE_DRILLS", raising=False)
    monkeypatch.setattr(drills, "_warned", set())


@pytest.mark.parametrize("name", drills.SEAMS)
def test_a_stray_seam_variable_is_ignored_with_one_warning_when_drills_are_off(drills_off, monkeypatch, caplog, name):
    monkeypatch.setenv(name, "5:0:always")
    with caplog.at_level(logging.WARNING, logger="ganpipe"):
        assert drills.seam(name) == "" and drills.seam(name) == ""
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == [f"{name}='5:0:always' is set but fault drills are off (GANPIPE_DRILLS unset): ignored"]


def test_seams_act_when_drills_are_on(monkeypatch):
    monkeypatch.setenv("GANPIPE_DRILLS", "1")
    monkeypatch.setenv("GANPIPE_FAULT_AT", "5:0:always")
    assert drills.seam("GANPIPE_FAULT_AT") == "5:0:always"


def test_the_evaluation_seam_raises_only_with_drills_on(drills_off, monkeypatch, tmp_path):
    monkeypatch.setenv("GANPIPE_FAULT_EVAL", "1")
    eval_fault(tmp_path / "count")  # off: nothing happens, nothing is counted
    assert not (tmp_path / "count").exists()
    monkeypatch.setenv("GANPIPE_DRILLS", "1")
    with pytest.raises(RuntimeError, match="injected transient evaluation failure 1/1"):
        eval_fault(tmp_path / "count")


@pytest.mark.parametrize("value", ["", "0", "yes", "true"])
def test_only_the_value_1_switches_drills_on(value):
    assert not drills.drills_on({"GANPIPE_DRILLS": value})


def test_a_production_profile_refuses_drills_when_settings_load(tmp_path):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text("{}\n")
    env = {"GANPIPE_WORKSPACE": str(tmp_path), "GANPIPE_PROFILE": "production", "GANPIPE_DRILLS": "1"}
    with pytest.raises(SettingsError, match=r"GANPIPE_DRILLS=1: fault drills are refused under GANPIPE_PROFILE=production"):
        load_settings(env)
    assert load_settings({**env, "GANPIPE_DRILLS": ""}).workspace == tmp_path.resolve()


def test_a_production_profile_from_the_env_file_refuses_drills_too(tmp_path):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text("{}\n")
    (tmp_path / "prod.env").write_text("GANPIPE_PROFILE=production\n")
    env = {"GANPIPE_WORKSPACE": str(tmp_path), "GANPIPE_ENV_FILE": str(tmp_path / "prod.env"), "GANPIPE_DRILLS": "1"}
    with pytest.raises(SettingsError, match="refused under GANPIPE_PROFILE=production"):
        load_settings(env)
