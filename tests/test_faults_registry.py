"""Registry faults, on a real SQLite MLflow with the real stage functions: a generator with non-finite
output is registered but refused (champion kept), concurrent promotions never lose an update (threads
and processes, with the GANPIPE_FAULT_PROMOTE_DELAY seam widening the race window), and registering
the same training run twice returns the version it already has."""
import json
import math
import multiprocessing
import shutil
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from flows.registry.gate import Scored, decide, decision_label, fid_from_record, recorded_decision, same_registration
from flows.ops.settings import Settings

DELAY = 1.0  # seconds the seam holds a promoter between reading the champion and moving the alias


def _strict_json(path: Path) -> dict:
    """json.loads that refuses NaN/Infinity, as DVC and other strict readers do."""
    def bad(token):
        raise ValueError(f"{path}: {token} is not JSON")
    return json.loads(path.read_text(), parse_constant=bad)


# ---- the stage functions on an isolated workspace ------------------------------------------------
@pytest.fixture
def settings(tmp_path, prepared_blobs) -> Settings:
    ws, home = tmp_path / "ws", tmp_path / "home"
    shutil.copytree(prepared_blobs, ws / "data" / "prepared" / "blobs")
    home.mkdir()
    return Settings(workspace=ws, home=home, mlflow_uri=f"sqlite:///{home / 'mlflow.db'}", ray_address=None,
                    dvc_remote="ganpipe-local", dvc_remote_url=None, ray_storage=str(home / "ray_results"))


def _cfg(**data):
    return tiny_config(data={"name": "blobs", **data})


def make_candidate(settings: Settings, cfg, seed: int, nan: bool = False) -> dict:
    """What the train stage leaves in models/candidate/ (as flows.stages.train.publish_candidate writes it),
    for a freshly initialised G, with its own MLflow run; `nan` sets G_ema's weights to NaN (data)."""
    from flows.stages.records import write_record
    from flows.registry.tracking import client, experiment_id
    from gan_core.checkpoint import rng_state, save_checkpoint, to_checkpoint
    from gan_core.data import load_manifest
    from gan_core.train import build_state

    torch.manual_seed(seed)
    state = build_state(cfg)
    if nan:
        with torch.no_grad():
            for p in state.G_ema.parameters():
                p.fill_(float("nan"))
    manifest = load_manifest(settings.prepared_dir(cfg.data.name))
    meta = {"dataset_sha256": manifest["content_sha256"], "params_sha256": cfg.params_hash(),
            "git_commit": "test", "dataset_version": "unversioned"}
    c = client(settings.mlflow_uri)
    exp = experiment_id(c, "ganpipe-test", str(settings.mlflow_artifacts))
    run_id = c.create_run(exp, run_name=f"cand-{seed}").info.run_id
    dest = settings.candidate_dir
    sha = save_checkpoint(dest / "checkpoint.pt", to_checkpoint(state, cfg, [rng_state()], meta))
    info = {"run_name": f"cand-{seed}", "mlflow_run_id": run_id, "step": 0, "images_seen": 0,
            "checkpoint_sha256": sha, "ray_result_path": "none", "meta": meta}
    write_record(dest / "train.json", info)
    return info


def _client(settings):
    from flows.registry.tracking import client

    return client(settings.mlflow_uri)


def test_non_finite_generator_is_registered_refused_and_champion_kept(settings):
    from flows.stages.evaluate import evaluate
    from flows.stages.register import register
    from flows.registry.tracking import model_name

    cfg = _cfg()
    name = model_name(cfg)
    make_candidate(settings, cfg, seed=1)
    good = evaluate(settings, cfg)
    assert math.isfinite(good["fid"]) and "error" not in good
    first = register(settings, cfg, {})
    assert first["champion"] and first["version"] == "1"

    bad_train = make_candidate(settings, cfg, seed=2, nan=True)
    ev = evaluate(settings, cfg)  # the run goes on: no exception for a generator's NaN output
    assert math.isnan(ev["fid"]) and "NaN/Inf" in ev["error"]
    record = _strict_json(settings.reports_dir / "evaluation.json")  # still valid JSON: null, not NaN
    assert record["fid"] is None and record["metrics"] == {ev["metric"]: None} and record["error"] == ev["error"]
    assert record["fingerprint"]["id"] == good["fingerprint"]["id"]
    metrics = _strict_json(settings.reports_dir / "metrics.json")
    assert metrics[ev["metric"]] is None and metrics["step"] == 0
    assert (settings.reports_dir / "samples.png").is_file()
    c = _client(settings)
    assert c.get_run(bad_train["mlflow_run_id"]).data.tags["eval.error"] == ev["error"]

    reg = register(settings, cfg, {})
    assert reg["version"] == "2" and not reg["champion"] and math.isnan(reg["fid"])
    assert str(c.get_registered_model(name).aliases["champion"]) == "1"  # the alias did not move
    tags = c.get_model_version(name, "2").tags
    assert tags["promotion.decision"] == "refused" and tags["eval.fid"] == "nan"
    assert tags["promotion.reason"] == f"{ev['metric']} is not finite (nan: {ev['error']}); never promoted" == reg["reason"]
    assert tags["eval.error"] == ev["error"] and tags["mlflow.run_id"] == bad_train["mlflow_run_id"]
    saved = _strict_json(settings.reports_dir / "registration.json")
    assert saved["fid"] is None and saved["champion"] is False and saved["version"] == "2"


def test_an_evaluator_failure_on_finite_images_still_raises(settings):
    """16x16 images against 8x8 reference statistics: the evaluator cannot score them, and that
    is a failure of the run, not a non-finite FID."""
    from flows.stages.evaluate import evaluate
    from gan_core.metrics.frechet import MetricError

    cfg = _cfg(resolution=16)
    make_candidate(settings, cfg, seed=3)
    with pytest.raises(MetricError, match="reference statistics are for 8x8"):
        evaluate(settings, cfg)
    assert not (settings.reports_dir / "evaluation.json").exists()


def test_registering_the_same_training_run_twice_returns_the_existing_version(settings, monkeypatch):
    import mlflow.pytorch

    from flows.stages.evaluate import evaluate
    from flows.stages.register import register
    from flows.registry.tracking import model_name

    cfg = _cfg()
    name = model_name(cfg)
    train = make_candidate(settings, cfg, seed=4)
    evaluate(settings, cfg)
    logged = []
    real_log_model = mlflow.pytorch.log_model
    monkeypatch.setattr(mlflow.pytorch, "log_model", lambda *a, **k: logged.append(1) or real_log_model(*a, **k))

    first = register(settings, cfg, {})
    again = register(settings, cfg, {})
    c = _client(settings)
    assert len(logged) == 1  # the model was not logged a second time
    assert again["version"] == first["version"] == "1" and again["champion"]
    assert "already registered as v1" in again["reason"] and first["reason"] in again["reason"]
    assert [str(v.version) for v in c.search_model_versions(f"name='{name}'")] == ["1"]
    assert c.get_model_version(name, "1").tags["checkpoint.sha256"] == train["checkpoint_sha256"]

    # a crash between registering and promoting: the retry finishes the promotion, still no new version
    c.delete_model_version_tag(name, "1", "promotion.decision")
    c.delete_registered_model_alias(name, "champion")
    retried = register(settings, cfg, {})
    assert retried["version"] == "1" and retried["champion"] and len(logged) == 1
    assert str(c.get_registered_model(name).aliases["champion"]) == "1"
    assert c.get_model_version(name, "1").tags["promotion.decision"] == "promoted"


# ---- the promotion race ---------------------------------------------------------------------------
def _race_registry(uri: str, name: str) -> dict[float, str]:
    """A registered model whose champion has FID 15, and two candidates (FID 10, 12), same fingerprint.
    Returns {fid: version}."""
    from flows.registry.tracking import CHAMPION, client

    c = client(uri)
    c.create_registered_model(name)
    versions = {}
    for fid in (15.0, 10.0, 12.0):
        v = c.create_model_version(name, source=f"file:///nonexistent/{name}/{fid}",
                                   tags={"eval.fid": repr(fid), "eval.fingerprint_id": "fp"})
        versions[fid] = str(v.version)
    c.set_registered_model_alias(name, CHAMPION, versions[15.0])
    return versions


def _promote(uri: str, name: str, version: str, fid: float, lock_path: str, go=None) -> None:
    """One promoter (a thread, or the target of a spawned process); with `go`, it waits for that event."""
    from flows.stages.register import promote
    from flows.registry.tracking import client

    c = client(uri)
    if go is not None and not go.wait(120):
        raise TimeoutError("never told to go")
    promote(c, name, version, Scored(fid, "fp", version), 0.0, Path(lock_path))


def _wait_for_holder(lock_path: Path, version: str, timeout: float = 60.0) -> None:
    """Until the first promoter holds the lock (flows.ops.locks writes the holder note once it has it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lock_path.is_file() and lock_path.read_text().endswith(f" v{version}"):
            return
        time.sleep(0.02)
    raise AssertionError(f"{lock_path}: the first promoter never took the lock")


def _check_outcome(uri: str, name: str, versions: dict[float, str], first: float) -> None:
    from flows.registry.tracking import client

    c = client(uri)
    assert str(c.get_registered_model(name).aliases["champion"]) == versions[10.0]
    winner = c.get_model_version(name, versions[10.0]).tags
    assert winner["promotion.decision"] == "promoted"
    loser = c.get_model_version(name, versions[12.0]).tags
    if first == 10.0:  # decided against the FID-10 champion it waited for
        assert loser["promotion.decision"] == "not promoted"
        assert f"does not beat champion v{versions[10.0]} (10.0000)" in loser["promotion.reason"]
    else:  # it beat 15 first, then the FID-10 candidate (which re-read it as the champion) replaced it
        assert loser["promotion.decision"] == "promoted"
        assert winner["promotion.reason"].startswith(f"FID 10.0000 beats champion v{versions[12.0]} (12.0000)")
        assert loser["promotion.superseded_by"] == f"v{versions[10.0]} (FID 10.0000)"


def _race(settings, name, first, second, kind) -> float:
    """Promote `first` (an FID), then, once it holds the lock, `second`: both promoters are started
    (processes: imported) before either is told to go."""
    versions = _race_registry(settings.mlflow_uri, name)
    lock = settings.home / "locks" / f"promote-{name}.lock"
    errors = []
    if kind == "threads":
        Event = threading.Event

        def target(*args):
            try:
                _promote(*args)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        def start(*args):
            return threading.Thread(target=target, args=args)
    else:
        ctx = multiprocessing.get_context("spawn")
        Event = ctx.Event

        def start(*args):
            return ctx.Process(target=_promote, args=args)
    go_a, go_b = Event(), Event()
    a = start(settings.mlflow_uri, name, versions[first], first, str(lock), go_a)
    b = start(settings.mlflow_uri, name, versions[second], second, str(lock), go_b)
    a.start(), b.start()
    t0 = time.monotonic()
    go_a.set()
    _wait_for_holder(lock, versions[first])
    go_b.set()
    for p in (a, b):
        p.join(180)
        assert not p.is_alive() and getattr(p, "exitcode", 0) == 0
    assert not errors, errors
    elapsed = time.monotonic() - t0
    _check_outcome(settings.mlflow_uri, name, versions, first)
    return elapsed


@pytest.mark.parametrize("order", [(10.0, 12.0), (12.0, 10.0)], ids=["10-first", "12-first"])
@pytest.mark.parametrize("kind", ["threads", "processes"])
def test_concurrent_promotions_end_on_the_best_candidate(settings, monkeypatch, order, kind):
    monkeypatch.setenv("GANPIPE_FAULT_PROMOTE_DELAY", str(DELAY))
    name = f"race-{kind}-{int(order[0])}"
    elapsed = _race(settings, name, *order, kind)
    assert elapsed >= 2 * DELAY  # the second promoter waited for the first: serialised, not interleaved


def test_without_the_lock_the_race_loses_the_update(settings, monkeypatch):
    """The control: the seam's window is wide enough for a lost update when nothing serialises."""
    import flows.stages.register as register_mod

    monkeypatch.setenv("GANPIPE_FAULT_PROMOTE_DELAY", str(DELAY))
    monkeypatch.setattr(register_mod, "file_lock", lambda *a, **k: nullcontext())
    name = "race-unlocked"
    versions = _race_registry(settings.mlflow_uri, name)
    lock = str(settings.home / "locks" / f"promote-{name}.lock")
    a = threading.Thread(target=_promote, args=(settings.mlflow_uri, name, versions[10.0], 10.0, lock))
    b = threading.Thread(target=_promote, args=(settings.mlflow_uri, name, versions[12.0], 12.0, lock))
    a.start()
    time.sleep(DELAY / 3)  # inside the first promoter's window
    b.start()
    a.join(60), b.join(60)
    c = _client(settings)
    assert str(c.get_registered_model(name).aliases["champion"]) == versions[12.0]  # FID 10 was overwritten


def test_bad_delay_seam_value_is_refused(settings, monkeypatch):
    from flows.stages.register import promote

    monkeypatch.setenv("GANPIPE_FAULT_PROMOTE_DELAY", "soon")
    versions = _race_registry(settings.mlflow_uri, "seam")
    with pytest.raises(ValueError, match="GANPIPE_FAULT_PROMOTE_DELAY"):
        promote(_client(settings), "seam", versions[10.0], Scored(10.0, "fp"), 0.0, settings.home / "l.lock")


# ---- the pure decisions (flows/registry/gate.py) -----------------------------------------------------------
def test_non_finite_reason_names_the_evaluator_error():
    ok, why = decide(Scored(math.nan, "fp", "2", "generated images contain NaN/Inf"), Scored(9.0, "fp", "1"), 0.0)
    assert not ok and why == "FID is not finite (nan: generated images contain NaN/Inf); never promoted"
    assert decision_label(Scored(math.nan, "fp"), False) == "refused"
    assert decision_label(Scored(3.0, "fp"), False) == "not promoted"
    assert decision_label(Scored(3.0, "fp"), True) == "promoted"


def test_the_champion_re_gated_stays_champion():
    ok, why = decide(Scored(10.0, "fp", "4"), Scored(10.0, "fp", "4"), 0.0)
    assert ok and "already the champion" in why


def test_fid_from_record_reads_null_and_strings():
    assert math.isnan(fid_from_record(None)) and math.isnan(fid_from_record("nan"))
    assert math.isnan(fid_from_record("garbage")) and fid_from_record(12.5) == fid_from_record("12.5") == 12.5
    assert math.isinf(fid_from_record("inf"))


def test_same_registration_matches_run_and_checkpoint():
    versions = [("3", {"mlflow.run_id": "r1", "checkpoint.sha256": "a"}),
                ("1", {"mlflow.run_id": "r1", "checkpoint.sha256": "b"}),  # same run, other checkpoint (resumed)
                ("2", {"mlflow.run_id": "r2", "checkpoint.sha256": "a"}),
                ("5", {"mlflow.run_id": "r1", "checkpoint.sha256": "a"})]
    assert same_registration(versions, "r1", "a") == "3"
    assert same_registration(versions, "r1", "c") is None and same_registration([], "r1", "a") is None


def test_recorded_decision_only_for_completed_promotions():
    assert recorded_decision({"promotion.decision": "refused", "promotion.reason": "x"}) == "x"
    assert recorded_decision({"eval.fid": "1.0"}) is None
