"""Ray Train for real: 2 workers, DDP over G and D, checkpoints via ray.train.report, and a
worker failure that FailureConfig recovers from the last checkpoint."""
import os
from pathlib import Path

import pytest

from conftest import tiny_config
from flows.stages.prepare import prepare
from flows.ops.settings import Settings, configure_environment
from flows.stages.train import run_training
from gan_core.checkpoint import load_checkpoint
from gan_core.data import load_prepared, training_arrays

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray")
    s = Settings(workspace=root, home=root / "home", mlflow_uri=f"sqlite:///{root}/m.db", ray_address=None,
                 dvc_remote="none", dvc_remote_url=None, ray_storage=str(root / "home" / "ray_results"))
    configure_environment(s)
    cfg = tiny_config(data={"resolution": 8}, train={"steps": 20, "batch_size": 16, "num_workers": 2,
                                                     "log_every": 5, "checkpoint_every": 10})
    data = prepare(s, cfg)
    import ray

    ray.init(address="local", num_cpus=2, runtime_env={"env_vars": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1"}},
             logging_level="WARNING")
    yield s, cfg, data
    ray.shutdown()


def test_two_workers_train_with_ddp_and_report_checkpoints(setup):
    s, cfg, data = setup
    ref = run_training(s, cfg, data["path"], "two-workers", None, {"dataset_sha256": data["content_sha256"]})
    ckpt = load_checkpoint(ref["checkpoint"])
    assert ckpt["step"] == 20 and ckpt["world"] == 2
    assert ckpt["images_seen"] == 20 * 16  # global batch 16 = 2 workers x 8
    assert len(ckpt["rng"]) == 2  # one RNG state per rank
    assert "resumed_at" not in ckpt["extra"]
    assert not (ckpt["rng"][0]["torch"] == ckpt["rng"][1]["torch"]).all()  # distinct latent streams
    assert ckpt["meta"]["dataset_sha256"] == data["content_sha256"]
    assert ckpt["config"]["train"]["num_workers"] == 2
    run_dir = Path(s.ray_storage) / "two-workers"
    assert len([p for p in run_dir.iterdir() if p.is_dir() and p.name.startswith("checkpoint_")]) == 2  # steps 10 and 20


def test_a_failed_worker_resumes_from_the_last_checkpoint(setup):
    s, cfg, data = setup
    os.environ["GANPIPE_FAULT_AT"] = "15:1"  # rank 1 dies at step 15, after the step-10 checkpoint
    try:
        ref = run_training(s, cfg, data["path"], "with-fault", None, {})
    finally:
        del os.environ["GANPIPE_FAULT_AT"]
    ckpt = load_checkpoint(ref["checkpoint"])
    assert (s.home / "faults" / "with-fault.fired").read_text() == "15"  # the fault did fire
    assert ckpt["extra"]["resumed_at"] == [10]  # restarted once, from the step-10 checkpoint
    assert ckpt["step"] == 20 and ckpt["images_seen"] == 20 * 16  # completed the configured total exactly


def test_failure_budget_exhausted_fails_with_the_root_cause(setup):
    s, cfg, data = setup
    strict = tiny_config(data={"resolution": 8}, train={"steps": 20, "batch_size": 16, "num_workers": 2,
                                                        "log_every": 5, "checkpoint_every": 10, "max_failures": 0})
    os.environ["GANPIPE_FAULT_AT"] = "5:0"
    try:
        with pytest.raises(Exception, match=r"injected fault \(raise\) at step 5"):
            run_training(s, strict, data["path"], "no-budget", None, {})
    finally:
        del os.environ["GANPIPE_FAULT_AT"]


@pytest.mark.parametrize("arch", ["wgan_gp", "biggan", "infogan"])
def test_families_train_under_ddp_on_two_workers(setup, arch):
    """The paths DDP is touchy about: a gradient penalty's double backward (wgan_gp), spectral
    norm and a class-conditional D (biggan), D returning a tuple with the Q head (infogan)."""
    s, _, data = setup
    cfg = tiny_config(data={"resolution": 8}, model={"arch": arch},
                      train={"steps": 4, "batch_size": 16, "num_workers": 2, "log_every": 2, "checkpoint_every": 4,
                             "n_critic": 2})
    ref = run_training(s, cfg, data["path"], f"ddp-{arch}", None, {})
    ckpt = load_checkpoint(ref["checkpoint"])
    assert ckpt["step"] == 4 and ckpt["world"] == 2 and ckpt["images_seen"] == 4 * 2 * 16
    assert ckpt["n_classes"] == (10 if arch == "biggan" else 0)  # digits' classes reach a conditional family


def test_dp_sgd_trains_under_ddp_on_two_workers(setup):
    """Opacus' distributed optimizer inside Ray Train's process group: D outside DDP, its clipped sums
    reduced by the optimizer; the accountant's rate is the global batch."""
    s, _, data = setup
    cfg = tiny_config(data={"resolution": 8}, model={"arch": "dcgan"},
                      train={"steps": 4, "batch_size": 16, "num_workers": 2, "log_every": 2, "checkpoint_every": 4},
                      privacy={"enabled": True, "noise_multiplier": 1.0})
    ref = run_training(s, cfg, data["path"], "ddp-dp", None, {})
    ckpt = load_checkpoint(ref["checkpoint"])
    n_train = len(training_arrays(load_prepared(data["path"]))[0]["images"])
    assert ckpt["step"] == 4 and ckpt["world"] == 2
    assert ckpt["extra"]["privacy"]["history"] == [[1.0, 16 / n_train, 4]]


@pytest.mark.parametrize("arch, family", [
    ("progan", {"progan": {"start_resolution": 4, "fade_images": 32, "stable_images": 16, "phase_batch": "4:2"}}),
    ("stylegan", {"stylegan": {"mapping_layers": 2, "r1_every": 2}})])
def test_growing_and_style_families_train_under_ddp_on_two_workers(setup, arch, family):
    """A graph that changes with the stage (progan grows 4 -> 8 px, reading two batches a step at 4 px:
    DDP must expect unused layers) and stylegan's lazy R1 (a double backward through D's plain module
    inside a DDP step) and style mixing. Both ranks end with the same weights."""
    s, _, data = setup
    cfg = tiny_config(data={"resolution": 8}, model={"arch": arch}, family=family,
                      train={"steps": 4, "batch_size": 16, "num_workers": 2, "log_every": 1, "checkpoint_every": 4})
    ref = run_training(s, cfg, data["path"], f"ddp-{arch}", None, {})
    ckpt = load_checkpoint(ref["checkpoint"])
    assert ckpt["step"] == 4 and ckpt["world"] == 2
    if arch == "progan":  # 4 px stable (1 step of 2 x 16), 8 px fade (2 steps), then 8 px stable
        assert ckpt["images_seen"] == 2 * 16 + 3 * 16 and ckpt["extra"]["growth"] == {"resolution": 8, "alpha": 1.0}
        assert ckpt["sampler"]["position"] == 2 + 3


def _mlflow_run(s, name):
    from flows.registry.tracking import client, experiment_id

    c = client(s.mlflow_uri)
    exp = experiment_id(c, "faults", (s.home / "mlartifacts").as_uri())
    return c, c.create_run(exp, run_name=name).info.run_id


def _same_state(a: dict, b: dict) -> bool:
    """G, D, G_ema and both optimizers, tensor for tensor."""
    def flat(x, prefix=""):
        if isinstance(x, dict):
            for k, v in x.items():
                yield from flat(v, f"{prefix}/{k}")
        elif isinstance(x, (list, tuple)):
            for i, v in enumerate(x):
                yield from flat(v, f"{prefix}/{i}")
        else:
            yield prefix, x

    left = dict(flat({k: a[k] for k in ("models", "optimizers")}))
    right = dict(flat({k: b[k] for k in ("models", "optimizers")}))
    import torch

    return left.keys() == right.keys() and all(
        torch.equal(v, right[k]) if isinstance(v, torch.Tensor) else v == right[k] for k, v in left.items())


@pytest.fixture(scope="module")
def straight(setup):
    """The uninterrupted reference run (checkpoints at 10 and 20) and its MLflow run."""
    s, cfg, data = setup
    c, run_id = _mlflow_run(s, "straight")
    return c, run_id, load_checkpoint(run_training(s, cfg, data["path"], "det-straight", run_id, {})["checkpoint"])


# CI: rank 0 killed right after the step-10 report returned (the controller may not have polled it
# yet: the race that once restarted from step 0) and rank 1 killed mid-interval. The resume drill
# (drills/resume_drill.py) repeats every offset GANPIPE_RESUME_DRILL_REPEATS times beside a CPU hog.
DRILL_REPEATS = int(os.environ.get("GANPIPE_RESUME_DRILL_REPEATS", "0"))
KILLS = ["10:0:kill", "15:1:kill"] if not DRILL_REPEATS else [
    f"{spec}#{i}" for i in range(DRILL_REPEATS) for spec in ("10:0:kill", "10:1:kill", "11:0:kill", "15:1:kill", "19:1:kill")]


@pytest.mark.parametrize("case", KILLS)
def test_a_sigkilled_worker_resumes_exactly_and_logs_each_step_once(setup, straight, case):
    """SIGKILL of one rank after a checkpoint (checkpoints at 10, 20; max_failures=1): one restart from
    step 10, whether or not Ray's controller recorded that checkpoint before the group died; the
    configured 20 steps exactly, the same G, D, G_ema and optimizer state as a run without the kill,
    and an MLflow curve where each step appears once with the uninterrupted run's values."""
    s, cfg, data = setup
    c, straight_run, a = straight
    fault = case.partition("#")[0]
    name = f"det-killed-{case.replace(':', '-').replace('#', '-')}"
    _, killed_run = _mlflow_run(s, name)
    os.environ["GANPIPE_FAULT_AT"] = fault
    try:
        killed = run_training(s, cfg, data["path"], name, killed_run, {})
    finally:
        del os.environ["GANPIPE_FAULT_AT"]
    assert (s.home / "faults" / f"{name}.fired").read_text() == fault.split(":")[0]
    b = load_checkpoint(killed["checkpoint"])
    assert b["extra"].get("resumed_at") == [10] and b["step"] == a["step"] == 20
    assert b["images_seen"] == a["images_seen"] == 20 * 16
    assert _same_state(a, b)
    curve = [(m.step, m.value) for m in c.get_metric_history(killed_run, "train/loss_d")]
    assert [st for st, _ in curve] == [5, 10, 15, 20]  # logged before the kill and not again
    assert curve == [(m.step, m.value) for m in c.get_metric_history(straight_run, "train/loss_d")]


def test_replicas_that_drift_apart_are_caught_at_the_next_checkpoint(setup):
    """The replica check fails if DDP stops keeping the ranks equal: one weight of rank 1's G nudged
    after step 12 is reported at the step-20 checkpoint, naming the network and rank, and that
    checkpoint is never written (the step-10 one stays the newest)."""
    s, _, data = setup
    cfg = tiny_config(data={"resolution": 8}, train={"steps": 20, "batch_size": 16, "num_workers": 2,
                                                     "log_every": 5, "checkpoint_every": 10, "max_failures": 0})
    os.environ["GANPIPE_FAULT_AT"] = "12:1:desync"
    try:
        with pytest.raises(Exception, match=r"DDP replicas differ from rank 0 at step 20: G on rank 1, G_ema on rank 1"):
            run_training(s, cfg, data["path"], "desync", None, {})
    finally:
        del os.environ["GANPIPE_FAULT_AT"]
    run_dir = Path(s.ray_storage) / "desync"
    steps = [load_checkpoint(p / "checkpoint.pt")["step"] for p in run_dir.iterdir()
             if p.is_dir() and p.name.startswith("checkpoint_")]
    assert steps == [10]


def test_a_torn_newest_checkpoint_is_skipped_for_the_previous_valid_one(setup):
    s, cfg, data = setup
    run_training(s, cfg, data["path"], "torn", None, {})
    run_dir = Path(s.ray_storage) / "torn"
    newest = sorted(p for p in run_dir.iterdir() if p.is_dir() and p.name.startswith("checkpoint_"))[-1]
    f = newest / "checkpoint.pt"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])  # killed mid-write
    longer = tiny_config(data={"resolution": 8}, train={"steps": 30, "batch_size": 16, "num_workers": 2,
                                                        "log_every": 5, "checkpoint_every": 10})
    c, run_id = _mlflow_run(s, "torn")
    ref = run_training(s, longer, data["path"], "torn", run_id, {})  # the same run, re-triggered
    ckpt = load_checkpoint(ref["checkpoint"])
    assert ckpt["extra"]["resumed_at"] == [10] and ckpt["step"] == 30  # from step 10, not the torn 20
    skipped = c.get_run(run_id).data.tags["resume.skipped"]
    assert newest.name in skipped and "sha256 differs" in skipped


def test_a_nan_loss_stops_the_run_as_diverged_with_no_retry(setup):
    from gan_core.train import DivergedError

    s, _, data = setup
    cfg = tiny_config(data={"resolution": 8}, train={"steps": 20, "batch_size": 16, "num_workers": 2,
                                                     "log_every": 5, "checkpoint_every": 5, "max_failures": 1})
    os.environ["GANPIPE_FAULT_AT"] = "12:1:nan"  # rank 1's D turns NaN after step 12
    try:
        # rank 1's losses turn NaN at step 13; the check (log and checkpoint steps) stops every rank at 15
        with pytest.raises(DivergedError, match=r"diverged at or before step 15 \(first non-finite: .* at step 13\)"):
            run_training(s, cfg, data["path"], "nan", None, {})
    finally:
        del os.environ["GANPIPE_FAULT_AT"]
    run_dir = Path(s.ray_storage) / "nan"
    ckpts = [load_checkpoint(p / "checkpoint.pt") for p in run_dir.iterdir()
             if p.is_dir() and p.name.startswith("checkpoint_")]
    assert sorted(c["step"] for c in ckpts) == [5, 10]  # nothing after the poisoning became a checkpoint
    assert not any("resumed_at" in c["extra"] for c in ckpts)  # and no restart was attempted


def test_a_stray_fault_variable_without_drills_does_not_touch_real_training(setup, monkeypatch):
    """A production shell with GANPIPE_FAULT_AT left over and drills off: the run trains to the end."""
    s, cfg, data = setup
    monkeypatch.delenv("GANPIPE_DRILLS")
    monkeypatch.setenv("GANPIPE_FAULT_AT", "5:0:always")
    ckpt = load_checkpoint(run_training(s, cfg, data["path"], "stray-fault", None, {})["checkpoint"])
    assert ckpt["step"] == 20 and "resumed_at" not in ckpt["extra"]
    assert not (s.home / "faults" / "stray-fault.fired").exists()


def test_autoencoder_family_trains_under_ddp_on_two_workers(setup):
    """aae_mix: encoder and decoder in one DDP-wrapped G whose training forward returns codes and
    reconstructions, a label-reading D on codes; the loop's replica check at the checkpoint fails if
    the ranks' encoder, decoder or D drift apart."""
    s, _, data = setup
    cfg = tiny_config(data={"resolution": 8}, model={"arch": "aae_mix"},
                      train={"steps": 4, "batch_size": 16, "num_workers": 2, "log_every": 2, "checkpoint_every": 4})
    ckpt = load_checkpoint(run_training(s, cfg, data["path"], "ddp-aae_mix", None, {})["checkpoint"])
    assert ckpt["step"] == 4 and ckpt["world"] == 2 and ckpt["n_classes"] == 10
    assert {k.split(".")[0] for k in ckpt["models"]["G"]} == {"encoder", "decoder", "prior"}
