"""`models compare` against a real MLflow SQLite registry: rows, table and chart."""
import math
import time

import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from flows.registry.compare import collect, render_table, write_chart

PARAMS = {"model.loss": "hinge", "model.z_dim": "64", "train.batch_size": "32", "train.lr_g": "0.0002",
          "train.lr_d": "0.0004", "train.num_workers": "2", "train.steps": "500"}
THROUGHPUT = {"r1": [10.0, 100.0, 110.0, 120.0], "r2": [5.0, 200.0], "r3": [42.0]}


def _tags(fid: str, fingerprint: str, run_id: str, step: str) -> dict:
    return {"eval.metric": "fid_2k", "eval.fid": fid, "eval.fingerprint_id": fingerprint,
            "dataset.name": "blobs", "dataset.version": "v2", "dataset.content_sha256": "ab" * 32,
            "model.arch": "dcgan", "model.loss": "hinge", "checkpoint.step": step, "mlflow.run_id": run_id,
            "promotion.decision": "promoted", "promotion.reason": "test"}


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """alpha: v1 (fp A), v2 (fp A, champion), v3 (fp B, FID nan); zeta: v1..v10 with no tags and
    no run (created first, so name order is not creation order). Creating the DB runs migrations
    (seconds), hence one per module."""
    tmp = tmp_path_factory.mktemp("registry")
    c = MlflowClient(tracking_uri=f"sqlite:///{tmp}/m.db")
    exp = c.create_experiment("compare", artifact_location=(tmp / "artifacts").as_uri())
    runs = {}
    for key, values in THROUGHPUT.items():
        run = c.create_run(exp)
        ts = int(time.time() * 1000)
        c.log_batch(run.info.run_id, params=[Param(k, v) for k, v in PARAMS.items()],
                    metrics=[Metric("train/images_per_s", v, ts + i, 10 * i) for i, v in enumerate(values)])
        runs[key] = run.info.run_id
    source = (tmp / "model").as_uri()
    c.create_registered_model("zeta")
    for _ in range(10):
        c.create_model_version("zeta", source=source)
    c.create_registered_model("alpha")
    for fid, fp, key, step in [("12.5", "A", "r1", "400"), ("9.25", "A", "r2", "500"), ("nan", "B", "r3", "600")]:
        c.create_model_version("alpha", source=source, run_id=runs[key], tags=_tags(fid, fp, runs[key], step))
    c.set_registered_model_alias("alpha", "champion", "2")
    return c


def _line(table: str, model: str, version: int) -> str:
    [line] = [ln for ln in table.splitlines() if ln.split()[:2] == [model, str(version)]]
    return line


def test_rows(registry):
    rows = collect(registry)
    assert [(r.name, r.version) for r in rows] == [("alpha", 1), ("alpha", 2), ("alpha", 3)] + \
        [("zeta", v) for v in range(1, 11)]
    a1, a2, a3 = rows[:3]
    assert (a1.fid, a2.fid) == (12.5, 9.25) and math.isnan(a3.fid)
    assert [r.champion for r in rows] == [False, True] + [False] * 11
    assert (a2.fingerprint, a3.fingerprint, a2.metric, a2.dataset, a2.arch, a2.steps) == \
        ("A", "B", "fid_2k", "blobs@v2", "dcgan", "500")
    assert a2.params == {"loss": "hinge", "z_dim": "64", "batch_size": "32", "lr_g": "0.0002", "lr_d": "0.0004",
                         "num_workers": "2"}
    assert a1.images_per_s == pytest.approx((100.0 + 110.0 + 120.0) / 3)
    assert a2.images_per_s == pytest.approx(200.0)
    assert a3.images_per_s == pytest.approx(42.0)  # a single point is kept, not dropped as warm-up
    z = rows[3]  # no tags, no run: placeholders instead of a crash
    assert (z.fingerprint, z.dataset, z.arch, z.steps, z.params["lr_g"]) == ("?", "?@?", "?", "?", "?")
    assert math.isnan(z.fid) and math.isnan(z.images_per_s)


def test_one_model_and_unknown_name(registry):
    assert [r.version for r in collect(registry, "alpha")] == [1, 2, 3]
    with pytest.raises(ValueError, match=r"'nope'.*known models: alpha, zeta"):
        collect(registry, "nope")


def test_table(registry):
    rows = collect(registry)
    table = render_table(rows)
    header = table.splitlines()[0].split()
    assert header[:3] == ["model", "v", "FID(metric)"]  # zeta has no eval.metric: the cells name it
    assert header[-2:] == ["img/s", "champion"]
    assert "12.5000" in _line(table, "alpha", 1) and "9.2500" in _line(table, "alpha", 2)
    assert _line(table, "alpha", 3).split()[2:4] == ["nan", "(fid_2k)"]
    assert render_table(rows[:3]).splitlines()[0].split()[2] == "FID(fid_2k)"  # one metric: in the header
    for r in rows:
        assert _line(table, r.name, r.version).endswith("*") == r.champion
    assert table.count("*") == 1
    assert "note: alpha: FIDs under different fingerprints (A, B) are not comparable" in table
    assert "note: zeta" not in table
    assert "not comparable" not in render_table([r for r in rows if r.fingerprint == "A"])
    assert render_table([]) == "no registered model versions"


def test_chart(registry, tmp_path):
    out = write_chart(collect(registry), tmp_path / "charts" / "compare.png")
    assert out == tmp_path / "charts" / "compare.png"
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5_000
    assert [p.name for p in out.parent.iterdir()] == ["compare.png"]  # no temp file left behind
