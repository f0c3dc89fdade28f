from gan_core.models import ARCHS


def test_flow_offers_every_family_as_a_choice():
    from flows.stages.pipeline import pipeline

    props = pipeline.parameters.model_dump()["properties"]
    choices = next(a["enum"] for a in props["arch"]["anyOf"] if "enum" in a)
    assert choices == list(ARCHS)  # the Prefect UI's run form shows exactly the registered families


def test_flow_dataset_parameter_is_validated_like_the_cli(tmp_path, monkeypatch):
    """An unknown dataset given to the flow fails inside the flow before any task runs."""
    import shutil
    from pathlib import Path

    import pytest

    from gan_core.config import ConfigError

    root = Path(__file__).resolve().parents[1]
    for f in ("params.yaml", "dvc.yaml"):
        shutil.copy(root / f, tmp_path / f)
    (tmp_path / "data").mkdir()
    shutil.copy(root / "data" / "catalog.yaml", tmp_path / "data" / "catalog.yaml")
    monkeypatch.setenv("GANPIPE_WORKSPACE", str(tmp_path))
    monkeypatch.setenv("GANPIPE_HOME", str(tmp_path / ".ganpipe"))
    from flows.stages.pipeline import pipeline

    with pytest.raises(ConfigError, match="unknown dataset 'nope'"):
        pipeline.fn(dataset="nope")  # the flow body, without a Prefect server: validation comes first
    assert not (tmp_path / ".ganpipe" / "mlflow.db").exists() and not (tmp_path / "data" / "prepared").exists()
