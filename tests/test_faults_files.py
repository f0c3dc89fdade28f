"""Fault tolerance of files.

A. A checkpoint is complete: everything a resumed run needs (nets, optimizers, grad scaler, step,
   images seen, sampler position, every rank's RNG, dataset and config hashes) round-trips exactly
   into a fresh state, the resumed run is bit-identical, and an edited config is refused.
B. Untrusted files: a pickle payload in a checkpoint (even with a correct hash sidecar) or a
   registered model saved in MLflow's pickle format is refused, and the payload never runs.
"""
import builtins
import copy
import hashlib
import json
import os
import random
import types

import numpy as np
import pytest
import torch

from conftest import blobs, tiny_config
from gan_core.checkpoint import (FORMAT, CheckpointError, load_checkpoint, rebuild, restore, rng_state,
                                 save_checkpoint, sidecar_path, to_checkpoint)
from gan_core.batches import ShardedBatches
from gan_core.train import batch_position, build_state, train

FULL = {"steps": 8, "log_every": 4, "checkpoint_every": 4}
HALF = {**FULL, "steps": 4}


def _batches(cfg):
    return ShardedBatches({"images": torch.from_numpy(blobs(64)[0])}, cfg.train.per_worker_batch, 0, 1, cfg.train.seed)


def _scaler(**kw):
    return torch.amp.GradScaler("cpu", **kw)


def _saved(tmp_path):
    """A state trained 4 of 8 steps with a (non-default) grad scaler and extra state, saved to a file.
    Returns (state, cfg, path, the RNG state at the save)."""
    cfg = tiny_config(train=FULL)
    s = build_state(cfg)
    train(s, _batches(cfg).from_step(0), tiny_config(train=HALF))
    s.scaler = _scaler(init_scale=1234.0, growth_interval=7)
    s.extra = {"resumed_at": [2], "note": torch.arange(3)}
    rng = rng_state()
    path = tmp_path / "c.pt"
    save_checkpoint(path, to_checkpoint(s, cfg, [rng], {"dataset_sha256": "d" * 64}))
    return s, cfg, path, rng


def _assert_same(a, b, where="ckpt"):
    """Exact equality through nested dicts/lists/tuples of tensors and primitives."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: {a.keys()} != {b.keys()}"
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _pieces(s):
    """Every piece of a state a checkpoint must carry, as state dicts."""
    return {"G": s.G.state_dict(), "D": s.D.state_dict(), "G_ema": s.G_ema.state_dict(),
            "opt_g": s.opt_g.state_dict(), "opt_d": s.opt_d.state_dict(), "scaler": s.scaler.state_dict(),
            "step": s.step, "images_seen": s.images_seen, "extra": s.extra}


# ---- A. completeness ---------------------------------------------------------------------------
def test_checkpoint_holds_every_piece(tmp_path):
    s, cfg, path, _ = _saved(tmp_path)
    c = load_checkpoint(path)
    assert c["format"] == FORMAT and c["config"] == cfg.to_dict()
    assert c["config_sha256"] == cfg.params_hash() and len(c["config_sha256"]) == 64
    assert c["step"] == 4 and c["images_seen"] == 4 * 8 and c["world"] == 1
    for name in ("G", "D", "G_ema"):
        assert len(c["models"][name]) > 0 and all(v.numel() for v in c["models"][name].values())
    for name in ("G", "D"):  # Adam moments exist for every parameter after training
        st = c["optimizers"][name]["state"]
        assert len(st) == len(c["optimizers"][name]["param_groups"][0]["params"]) > 0
        assert all(v["exp_avg"].abs().sum() > 0 for v in st.values())
    assert c["scaler"]["scale"] == 1234.0 and c["scaler"]["growth_interval"] == 7
    assert c["sampler"] == {"seed": cfg.train.seed, "position": batch_position(4, cfg),
                            "per_worker_batch": 8, "world": 1} and c["sampler"]["position"] > 0
    rng = c["rng"]
    assert len(rng) == 1 and rng[0]["torch"].numel() > 0 and rng[0]["numpy"]["keys"].numel() == 624
    assert c["meta"]["dataset_sha256"] == "d" * 64
    _assert_same(c["extra"], s.extra)


def test_restore_into_fresh_state_is_exact_and_resumes_bit_identically(tmp_path):
    s, cfg, path, rng = _saved(tmp_path)
    saved = copy.deepcopy(_pieces(s))  # state dicts share storage with the live tensors
    train(s, _batches(cfg).from_step(4), cfg)  # the original run goes on from the RNG state at the save

    torch.manual_seed(123)  # a restarted process: other weights, other RNG state, default scaler
    np.random.seed(123)
    random.seed(123)
    fresh = build_state(cfg)
    fresh.scaler = _scaler()
    assert any(not torch.equal(a, b) for a, b in zip(fresh.G.state_dict().values(), saved["G"].values()))
    restore(fresh, load_checkpoint(path), rank=0)
    _assert_same(saved, _pieces(fresh), "state")
    assert torch.equal(torch.get_rng_state(), rng["torch"])
    assert np.array_equal(np.random.get_state()[1], rng["numpy"]["keys"].numpy().astype(np.uint32))
    assert random.getstate()[1] == tuple(rng["python"][1])

    train(fresh, _batches(cfg).from_step(batch_position(fresh.step, cfg)), cfg)
    assert fresh.step == s.step == 8
    _assert_same(_pieces(s), _pieces(fresh), "resumed")


def test_edited_config_is_refused_even_with_a_valid_sidecar(tmp_path, cfg):
    _, _, path, _ = _saved(tmp_path)
    c = load_checkpoint(path)
    c["config"]["train"]["lr_g"] *= 10
    save_checkpoint(path, c)  # a fresh, correct sha256 sidecar: the file hash alone passes
    with pytest.raises(CheckpointError, match="config edited"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="config edited"):
        rebuild(c)
    with pytest.raises(CheckpointError, match="config edited"):
        restore(build_state(cfg), c)


def test_sampler_position_that_disagrees_with_the_step_is_refused(tmp_path):
    _, cfg, path, _ = _saved(tmp_path)
    c = load_checkpoint(path)
    c["sampler"]["position"] += 1
    with pytest.raises(CheckpointError, match=r"sampler position 5 .* step 4 starts at batch 4"):
        restore(build_state(cfg), c)


def test_scaler_state_without_a_scaler_and_old_formats_are_refused(tmp_path, cfg):
    _, _, path, _ = _saved(tmp_path)
    with pytest.raises(CheckpointError, match="grad scaler mismatch"):
        restore(build_state(cfg), load_checkpoint(path))  # CPU state: no scaler to take the scale
    plain = to_checkpoint(build_state(cfg), cfg, [rng_state()])
    assert plain["scaler"] == {}
    restore(build_state(cfg), plain)  # no scaler on either side is fine
    save_checkpoint(tmp_path / "old.pt", {**plain, "format": "ganpipe-checkpoint/1"})
    with pytest.raises(CheckpointError, match="older ganpipe"):
        load_checkpoint(tmp_path / "old.pt")


# ---- B. untrusted files ------------------------------------------------------------------------
class _Payload:
    """Unpickling this calls builtins.exec, which creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.exec, (f"open({self.marker!r}, 'w').close()",)


def _evil_checkpoint(tmp_path):
    """A checkpoint-shaped file with a live pickle payload and a correct sha256 sidecar."""
    marker, path = tmp_path / "pwned", tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "step": 1, "x": _Payload(marker)}, path)
    sidecar_path(path).write_text(json.dumps({"format": FORMAT, "file": path.name, "step": 1,
                                              "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}))
    return path, marker


def test_pickle_payload_with_valid_sidecar_is_refused_and_never_runs(tmp_path):
    path, marker = _evil_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="weights-only"):
        load_checkpoint(path)  # the hash check passes: weights_only loading is what stops it
    assert not marker.exists()
    torch.load(path, weights_only=False)  # control: the payload is live when unpickled
    assert marker.exists()


@pytest.mark.slow
def test_cli_refuses_a_pickled_checkpoint(tmp_path, prepared_blobs):
    from workspace import ganpipe, make_workspace

    ws = make_workspace(tmp_path)
    path, marker = _evil_checkpoint(tmp_path)
    for args in (["sample", str(path), "--out", str(tmp_path / "g.png")],
                 ["evaluate", str(path), "--data", str(prepared_blobs)]):  # evaluate loads the data first
        r = ganpipe(ws, *args, timeout=300)
        assert r.returncode != 0, r.stdout
        assert "refused" in r.stderr and "weights-only" in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert not marker.exists()
    assert not (tmp_path / "g.png").exists()


class _EvilModule(torch.nn.Module):
    """A module whose pickle (MLflow's `serialization_format="pickle"`) creates the marker on load."""

    def __init__(self, marker):
        super().__init__()
        self.marker = str(marker)
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, z):
        return self.fc(z)

    def __reduce__(self):
        return builtins.exec, (f"open({self.marker!r}, 'w').close()",)


def _registry(tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    exp = mlflow.create_experiment("faults", artifact_location=(tmp_path / "artifacts").as_uri())
    return uri, exp


def _register(exp, name, model, **log_args):
    import mlflow.pytorch

    with mlflow.start_run(experiment_id=exp):
        info = mlflow.pytorch.log_model(model, name="generator", **log_args)
    version = mlflow.register_model(info.model_uri, name)
    return f"models:/{name}/{version.version}"


@pytest.mark.slow
def test_registered_pickle_model_is_refused_before_mlflow_unpickles_it(tmp_path, monkeypatch, capsys):
    import mlflow.pytorch
    import typer

    from flows.cli.loading import load_generator
    from workspace import ganpipe, make_workspace

    marker = tmp_path / "pwned"
    uri, exp = _registry(tmp_path)
    model = _register(exp, "evil", _EvilModule(marker), serialization_format="pickle", pip_requirements=["torch"])
    assert not marker.exists()
    # MLflow's own pickle guard stays off (as by default in 3.17): only our check stands in the way
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
    with pytest.raises(typer.Exit):
        load_generator(types.SimpleNamespace(mlflow_uri=uri), model)
    err = capsys.readouterr().err
    assert model in err and "model.pth" in err and "pt2" in err, err
    assert not marker.exists()

    ws = make_workspace(tmp_path)
    r = ganpipe(ws, "sample", model, "--out", str(tmp_path / "g.png"), timeout=300, MLFLOW_TRACKING_URI=uri,
                MLFLOW_ALLOW_PICKLE_DESERIALIZATION="true")
    assert r.returncode != 0 and model in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not marker.exists()

    with pytest.raises(Exception):  # control: loading it as MLflow would runs the payload
        mlflow.pytorch.load_model(model)
    assert marker.exists()


@pytest.mark.slow
def test_registered_pt2_generator_still_loads(tmp_path, monkeypatch):
    from flows.cli.loading import load_generator
    from flows.stages.register import export_args
    from gan_core.metrics.fid import draw

    uri, exp = _registry(tmp_path)
    cfg = tiny_config()
    G = build_state(cfg).G_ema.eval()
    model = _register(exp, "good", G, **export_args(cfg, G))
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")  # restored after the load
    loaded = load_generator(types.SimpleNamespace(mlflow_uri=uri), model)
    assert os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] == "true"
    assert loaded.latent == G.latent
    assert torch.allclose(draw(G, 5, seed=1, batch_size=5).images, draw(loaded, 5, seed=1, batch_size=5).images,
                          atol=1e-5)
