"""Federated training: the pure parts (shards, FedAvg) against hand-computed values, then the rounds
for real on Ray actors: a client's images never reach the driver, a client killed mid-round is
survived, min_clients is enforced, and `ganpipe run federated.enabled=true` goes through evaluate,
gate and registry."""
import json
import os
import pickle

import numpy as np
import pytest
import torch

from conftest import blobs, tiny_config
from gan_core.config import ConfigError, PipelineConfig
from gan_core.federated import fedavg, shard_classes, shard_rows, weighted_mean
from gan_core.sections import FederatedConfig


# ---- config ------------------------------------------------------------------------------------
@pytest.mark.parametrize("values, field", [
    ({"clients": 0}, "federated.clients"), ({"min_clients": 4}, "federated.min_clients"),
    ({"split": "dirichlet"}, "federated.split"), ({"aggregate": "G"}, "federated.aggregate"),
    ({"client_timeout_s": 0}, "federated.client_timeout_s"), ({"local_steps": 0}, "federated.local_steps"),
    ({"enabled": True, "rounds": 3, "local_steps": 7}, "federated.rounds"),  # 21 != train.steps
    ({"enabled": 1}, "federated.enabled")])
def test_bad_federated_settings_name_their_field(values, field):
    with pytest.raises(ConfigError) as e:
        PipelineConfig.from_dict({"federated": values, "train": {"steps": 20}})
    assert e.value.field == field


def test_the_section_leaves_older_params_hashes_alone():
    assert "federated" not in PipelineConfig().to_dict()
    on = PipelineConfig.from_dict({"federated": {"enabled": True, "rounds": 2, "local_steps": 10},
                                   "train": {"steps": 20}})
    assert on.to_dict()["federated"]["enabled"] and on.params_hash() != PipelineConfig().params_hash()
    assert PipelineConfig.from_dict(on.to_dict()) == on


# ---- shards ------------------------------------------------------------------------------------
def test_iid_shards_are_disjoint_cover_everything_and_follow_the_seed():
    f = FederatedConfig(clients=3, min_clients=1)
    shards = shard_rows(100, None, f, seed=0)
    assert sorted(len(s) for s in shards) == [33, 33, 34]
    assert np.array_equal(np.sort(np.concatenate(shards)), np.arange(100))
    assert all(np.array_equal(a, b) for a, b in zip(shards, shard_rows(100, None, f, seed=0)))
    assert not np.array_equal(shards[0], shard_rows(100, None, f, seed=1)[0])
    labels = np.arange(100) % 10  # iid ignores labels: each shard has (almost) every class
    assert all(len(set(labels[s])) >= 9 for s in shards)


def test_class_shards_hold_only_their_classes_and_divide_shared_ones():
    labels = np.repeat(np.arange(10), 30)  # 10 classes x 30 rows
    f = FederatedConfig(clients=3, split="classes", classes_per_client=4, min_clients=1)
    shards, held = shard_rows(300, labels, f, seed=5), shard_classes(f, range(10), seed=5)
    assert [len(h) for h in held] == [4, 4, 4] and len(set().union(*map(set, held))) == 10  # 12 slots cover 10
    for rows, classes in zip(shards, held):
        assert set(labels[rows]) == set(classes)
    flat = np.concatenate(shards)
    assert len(flat) == len(set(flat.tolist())) == 300  # disjoint, and every row is someone's
    # a class two clients hold is split 15/15 between them
    both = set(held[0]) & set(held[2]) or set(held[0]) & set(held[1])
    c = next(iter(both))
    assert sorted(int((labels[s] == c).sum()) for s in shards if (labels[s] == c).any()) == [15, 15]


def test_class_split_refuses_unlabelled_data_and_too_many_classes():
    with pytest.raises(ConfigError, match="federated.split"):
        shard_rows(50, None, FederatedConfig(split="classes"), 0)
    with pytest.raises(ConfigError, match="federated.classes_per_client"):
        shard_rows(50, np.arange(50) % 3, FederatedConfig(split="classes", classes_per_client=4), 0)


# ---- FedAvg ------------------------------------------------------------------------------------
def test_fedavg_weights_by_examples_and_keeps_counters_counts():
    a = {"w": torch.tensor([0.0, 4.0]), "bn.running_var": torch.tensor([1.0]), "bn.num_batches_tracked": torch.tensor(7)}
    b = {"w": torch.tensor([4.0, 0.0]), "bn.running_var": torch.tensor([5.0]), "bn.num_batches_tracked": torch.tensor(9)}
    out = fedavg([a, b], [1, 3])  # (1*a + 3*b) / 4
    assert torch.equal(out["w"], torch.tensor([3.0, 1.0]))
    assert torch.equal(out["bn.running_var"], torch.tensor([4.0]))
    assert out["bn.num_batches_tracked"].dtype == torch.int64 and int(out["bn.num_batches_tracked"]) == 9
    half = {"w": torch.tensor([1.0], dtype=torch.float16)}
    assert fedavg([half, {"w": torch.tensor([3.0], dtype=torch.float16)}], [1, 1])["w"].dtype == torch.float16
    assert weighted_mean([{"loss": 1.0}, {"loss": 3.0, "r1": 2.0}], [1, 3]) == {"loss": 2.5, "r1": 2.0}
    with pytest.raises(ValueError, match="other keys"):
        fedavg([a, {"w": a["w"]}], [1, 1])
    with pytest.raises(ValueError, match="positive sum"):
        fedavg([a, b], [0, 0])


def test_fedavg_of_real_networks_equals_the_average_of_their_weights():
    from gan_core.train import build_state

    cfg = tiny_config()
    g1, g2 = build_state(cfg).G, build_state(cfg).G  # different initial weights (the RNG moved)
    avg = fedavg([g1.state_dict(), g2.state_dict()], [300, 100])
    name = next(n for n, p in g1.named_parameters())
    expected = 0.75 * g1.state_dict()[name] + 0.25 * g2.state_dict()[name]
    assert torch.allclose(avg[name], expected, atol=1e-7)
    g1.load_state_dict(avg)  # the average is a loadable state dict of the same network


# ---- what crosses the wire -------------------------------------------------------------------
def leaked_rows(messages: list, images: np.ndarray) -> list[int]:
    """Training rows whose pixels appear in any message, as uint8 bytes or as the float32 [-1, 1]
    tensors the loop trains on. Rows with fewer than 4 distinct values are skipped (a run of zero
    bytes is no evidence); the caller checks how many were tested."""
    blob = b"".join(pickle.dumps(m, protocol=5) for m in messages)
    found = []
    for i, row in enumerate(images):
        if len(np.unique(row)) < 4:
            continue
        as_float = (torch.from_numpy(row).float() / 127.5 - 1.0).numpy().tobytes()
        if row.tobytes() in blob or as_float in blob:
            found.append(i)
    return found


def image_shaped(messages: list, shape: tuple) -> list[str]:
    """Paths of tensors in the messages whose trailing dims are an image's (C, R, R)."""
    out = []

    def walk(x, path):
        if isinstance(x, dict):
            for k, v in x.items():
                walk(v, f"{path}.{k}")
        elif isinstance(x, (list, tuple)):
            for i, v in enumerate(x):
                walk(v, f"{path}[{i}]")
        elif isinstance(x, (torch.Tensor, np.ndarray)) and tuple(x.shape[-3:]) == shape:
            out.append(path)

    for i, m in enumerate(messages):
        walk(m, f"msg{i}")
    return out


def test_the_wire_check_catches_a_message_that_carries_images():
    images = np.random.default_rng(0).integers(0, 255, (20, 1, 8, 8), dtype=np.uint8)
    clean = [{"weights": {"w": torch.randn(8, 1, 4, 4)}}]
    assert leaked_rows(clean, images) == [] and image_shaped(clean, (1, 8, 8)) == []
    leaky = clean + [{"metrics": {}, "batch": torch.from_numpy(images[3:5]).float() / 127.5 - 1.0}]
    assert leaked_rows(leaky, images) == [3, 4] and image_shaped(leaky, (1, 8, 8)) == ["msg1.batch"]
    assert leaked_rows([{"raw": images[7].copy()}], images) == [7]


# ---- end to end, as a user runs it (before the module's own Ray instance starts) ----------------------
@pytest.mark.slow
def test_ganpipe_run_federated_goes_through_evaluate_gate_and_registry(tmp_path):
    from mlflow.tracking import MlflowClient

    from workspace import ganpipe, make_workspace

    ws = make_workspace(tmp_path, {"data": {"resolution": 8},
                                   "model": {"z_dim": 8, "g_channels": 8, "d_channels": 8},
                                   "train": {"steps": 10, "batch_size": 16, "log_every": 5, "checkpoint_every": 5},
                                   "eval": {"n_fake": 100, "batch_size": 100, "every": 0}})
    r = ganpipe(ws, "run", "federated.enabled=true", "federated.rounds=2", "federated.local_steps=5", timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    train = json.loads((ws / "models" / "candidate" / "train.json").read_text())
    reg = json.loads((ws / "reports" / "registration.json").read_text())
    assert train["step"] == 10 and reg["version"] == "1" and reg["champion"]
    c = MlflowClient(tracking_uri=f"sqlite:///{ws / '.ganpipe' / 'mlflow.db'}")
    run = c.get_run(train["mlflow_run_id"])
    assert run.data.tags["federated.engine"] == "ray-actors" and run.data.tags["federated.clients"] == "3"
    assert [(m.step, m.value) for m in c.get_metric_history(run.info.run_id, "federated/survivors")] == [(5, 3), (10, 3)]
    assert [m.step for m in c.get_metric_history(run.info.run_id, "train/loss_d")] == [5, 10]
    version = c.get_model_version(reg["model_name"], "1")
    assert version.tags["checkpoint.sha256"] == train["checkpoint_sha256"]


# ---- rounds on Ray actors -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    from flows.ops.settings import Settings, configure_environment
    from gan_core.data import write_prepared

    root = tmp_path_factory.mktemp("fed")
    s = Settings(workspace=root, home=root / "home", mlflow_uri=f"sqlite:///{root}/m.db", ray_address=None,
                 dvc_remote="none", dvc_remote_url=None, ray_storage=str(root / "home" / "ray_results"))
    configure_environment(s)
    images, labels = blobs(240)  # 4 classes; written directly: training needs no evaluator files
    manifest = write_prepared(root / "blobs", images, labels, {"name": "blobs"})
    data = {"path": str(root / "blobs"), "content_sha256": manifest["content_sha256"]}
    import ray

    ray.init(address="local", num_cpus=2, logging_level="WARNING")
    yield s, data
    ray.shutdown()


def fed_config(**federated) -> PipelineConfig:
    f = {"enabled": True, "clients": 3, "rounds": 2, "local_steps": 3, "min_clients": 2, **federated}
    return tiny_config(train={"steps": f["rounds"] * f["local_steps"]}, federated=f)


@pytest.mark.slow
def test_client_images_never_reach_the_driver(fed):
    from flows.stages.federated import run_federated
    from gan_core.checkpoint import load_checkpoint
    from gan_core.data import load_prepared

    s, data = fed
    wire: list[tuple[str, int, object]] = []
    cfg = fed_config(split="classes", classes_per_client=2)
    ref = run_federated(s, cfg, data["path"], "fed-wire", None, {"dataset_sha256": data["content_sha256"]},
                        tap=lambda d, k, m: wire.append((d, k, m)))
    ckpt = load_checkpoint(ref["checkpoint"])
    assert ckpt["step"] == 6 and ckpt["config"]["federated"]["clients"] == 3
    # every message: a spec and two rounds out to each client, two rounds back from each
    assert sorted((d, k) for d, k, _ in wire) == sorted([("to", k) for k in range(3)] * 3 + [("from", k) for k in range(3)] * 2)
    spec = next(m for d, k, m in wire if d == "to" and "data_dir" in m)
    assert set(spec) == {"pipeline", "data_dir", "data_sha256", "num_classes", "fault", "fault_marker", "client",
                         "threads", "privacy"}  # a path and settings: no rows, no indices, no labels
    images = load_prepared(data["path"]).images
    messages = [m for _, _, m in wire]
    tested = sum(len(np.unique(r)) >= 4 for r in images)
    assert tested > 0.9 * len(images)
    assert leaked_rows(messages, images) == [] and image_shaped(messages, images.shape[1:]) == []
    back = [m for d, _, m in wire if d == "from"]
    assert all(set(m) == {"client", "round", "examples", "images", "metrics", "privacy", "weights"} for m in back)
    assert sum(m["examples"] for m in back if m["round"] == 1) == len(images) - load_prepared(data["path"]).heldout
    # the candidate is the example-weighted average of the last round's clients
    last = [m for m in back if m["round"] == 2]
    avg = fedavg([m["weights"]["G"] for m in last], [m["examples"] for m in last])
    assert all(torch.allclose(avg[k], v) for k, v in ckpt["models"]["G"].items())


@pytest.mark.slow
def test_a_client_killed_mid_round_is_survived(fed):
    from flows.stages.federated import run_federated
    from gan_core.checkpoint import load_checkpoint

    s, data = fed
    wire: list = []
    os.environ["GANPIPE_FAULT_CLIENT"] = "1:1"  # client 1 SIGKILLs itself halfway through round 1
    try:
        ref = run_federated(s, fed_config(aggregate="generator"), data["path"], "fed-kill", None, {},
                            tap=lambda d, k, m: wire.append((d, k, m)))
    finally:
        del os.environ["GANPIPE_FAULT_CLIENT"]
    assert (s.home / "faults" / "fed-kill.client.fired").read_text() == "round 1 client 1"
    answered = {r: sorted(k for d, k, m in wire if d == "from" and m["round"] == r) for r in (1, 2)}
    assert answered == {1: [0, 2], 2: [0, 2]}  # the lost client is dropped; the rounds go on without it
    sent = {r: [sorted(m["weights"]) for d, k, m in wire if d == "to" and m.get("round") == r] for r in (1, 2)}
    assert sent == {1: [["D", "G", "G_ema"]] * 3, 2: [["G", "G_ema"]] * 2}  # aggregate=generator: D stays local
    assert load_checkpoint(ref["checkpoint"])["step"] == 6


@pytest.mark.slow
def test_fewer_survivors_than_min_clients_fail_the_round_and_keep_the_last_checkpoint(fed):
    from flows.stages.federated import FederationError, run_federated

    s, data = fed
    os.environ["GANPIPE_FAULT_CLIENT"] = "2:0"
    try:
        with pytest.raises(FederationError, match=r"round 2/2: 1 of 2 clients survived.*federated.min_clients=2"):
            run_federated(s, fed_config(clients=2, min_clients=2), data["path"], "fed-min", None, {})
    finally:
        del os.environ["GANPIPE_FAULT_CLIENT"]
    kept = sorted(p.name for p in (s.home / "ray_results" / "fed-min").iterdir())
    assert kept == ["checkpoint_000000003"]  # round 1's; a rerun resumes from it
    ref = run_federated(s, fed_config(clients=2, min_clients=2), data["path"], "fed-min", None, {})  # marker: no fault
    assert json.loads((s.candidate_dir / "train.json").read_text())["step"] == ref["step"] == 6


@pytest.mark.slow
def test_dp_and_federation_combine_each_client_accounts_its_own_shard(fed):
    from flows.stages.federated import CLIENTS_DP, run_federated
    from gan_core.checkpoint import load_checkpoint
    from gan_core.privacy import epsilon

    s, data = fed
    cfg = fed_config(clients=2, min_clients=2)
    cfg = PipelineConfig.from_dict({**cfg.to_dict(), "privacy": {"enabled": True, "noise_multiplier": 1.0}})
    ckpt = load_checkpoint(run_federated(s, cfg, data["path"], "fed-dp", None, {})["checkpoint"])
    clients = ckpt["extra"][CLIENTS_DP]
    assert sorted(clients) == ["0", "1"]
    for rec in clients.values():  # 6 noised D updates each, at q = batch / its 120-row shard
        assert rec["steps"] == 6 and rec["sample_rate"] == 8 / 120 and rec["noise_multiplier"] == 1.0
    worst = max(clients.values(), key=lambda r: r["epsilon"])
    assert ckpt["extra"]["privacy"] == worst
    assert epsilon(worst["history"], worst["delta"], worst["accountant"]) == pytest.approx(worst["epsilon"])
