"""Stage 2, train: Ray Train TorchTrainer, DDP over G and D, checkpoints through ray.train.report.

The driver starts (or joins) Ray, runs `train_loop_per_worker` on `num_workers` workers and copies
the final checkpoint into models/candidate/, which DVC versions. A worker failure restarts the
worker group from the last reported checkpoint (FailureConfig.max_failures).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from flows.records import write_record
from flows.settings import Settings
from gan_core.checkpoint import (gather_rng_states, load_checkpoint, restore, save_checkpoint,
                                 to_checkpoint)
from gan_core.config import PipelineConfig
from gan_core.data import ShardedBatches, load_manifest, load_prepared
from gan_core.files import replace_dir
from gan_core.train import Callback, TrainState, batch_position, build_state, distribute, train

CKPT_NAME = "checkpoint.pt"


class TrainingError(RuntimeError):
    pass


class InjectedFault(RuntimeError):
    """Raised on purpose by the GANPIPE_FAULT_AT seam (tests and drills)."""


class FaultAt(Callback):
    """GANPIPE_FAULT_AT=STEP[:RANK]: that rank raises at the first log point at or past STEP, once
    per run: a marker file written before raising disarms the restarted worker group, so
    FailureConfig's restart-from-checkpoint path can be exercised end to end."""

    def __init__(self, spec: str, rank: int, marker: str):
        step, _, fault_rank = spec.partition(":")
        self.step, self.rank, self.marker = int(step), int(fault_rank or 0), Path(marker)
        self.armed = rank == self.rank and not self.marker.exists()

    def on_log(self, state: TrainState, metrics: dict[str, float]) -> None:
        if self.armed and state.step >= self.step:
            self.marker.parent.mkdir(parents=True, exist_ok=True)
            self.marker.write_text(str(state.step))
            raise InjectedFault(f"injected fault at step {state.step} on rank {self.rank} (GANPIPE_FAULT_AT)")


class RayCheckpoints(Callback):
    """Reports a checkpoint to Ray every checkpoint_every steps. Every rank must call report;
    only rank 0 writes the file. Per-rank RNG states are gathered first (a collective)."""

    def __init__(self, cfg: PipelineConfig, rank: int, meta: dict):
        self.cfg, self.rank, self.meta = cfg, rank, meta

    def on_checkpoint(self, state: TrainState) -> None:
        import ray.train

        rng = gather_rng_states()
        metrics = {"step": state.step, "images_seen": state.images_seen}
        if self.rank != 0:
            ray.train.report(metrics, checkpoint=None)
            return
        with tempfile.TemporaryDirectory() as d:
            save_checkpoint(Path(d) / CKPT_NAME, to_checkpoint(state, self.cfg, rng, self.meta))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


def ship_dataset(data_dir: Path):
    """On a cluster, workers may run on machines without the workspace: the prepared folder (a few
    files, hash-checked on arrival) travels through Ray's object store instead."""
    import ray

    return ray.put({str(f.relative_to(data_dir)): f.read_bytes() for f in sorted(data_dir.rglob("*")) if f.is_file()})


def local_dataset(config: dict) -> Path:
    """The prepared folder on this node: the workspace's own when it is here (same machine or
    shared storage), else the shipped copy written once per content hash under the temp dir."""
    here, sha = Path(config["data_dir"]), config["data_sha256"]
    if (here / "manifest.json").is_file() and load_manifest(here)["content_sha256"] == sha:
        return here
    if config.get("data_ref") is None:
        raise TrainingError(f"{here}: not on this node and no shipped copy (dataset {sha[:12]})")
    import ray

    dest = Path(tempfile.gettempdir()) / "ganpipe-data" / sha
    if not (dest / "manifest.json").is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{sha[:12]}.", dir=dest.parent))
        for rel, blob in ray.get(config["data_ref"]).items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(blob)
        replace_dir(tmp, dest)
    return dest  # load_prepared verifies every file against the manifest


def node_ids(world: int) -> list[str]:
    """The Ray node of every rank (a collective): proof of where training ran, tagged on the run."""
    import ray
    import torch.distributed as dist

    me = ray.get_runtime_context().get_node_id()
    if world == 1:
        return [me]
    out: list = [None] * world
    dist.all_gather_object(out, me)
    return out


def train_loop_per_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg = PipelineConfig.from_dict(config["pipeline"])
    torch.set_num_threads(config["threads"])  # one worker per core: no oversubscription
    device = ray.train.torch.get_device() if cfg.train.use_gpu else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL collectives (the RNG gather) use the current device

    data_dir = local_dataset(config)
    data = load_prepared(data_dir)
    nodes = node_ids(world)
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    state = build_state(cfg, device, data.num_classes)
    torch.manual_seed(cfg.train.seed * 1_000_003 + rank + 1)  # then a distinct latent stream per rank
    resumed = ray.train.get_checkpoint()
    if resumed is not None:
        with resumed.as_directory() as d:
            state.world = world
            restore(state, load_checkpoint(Path(d) / CKPT_NAME), rank)
        # the step of every resume travels in the checkpoint: lineage, and proof a restart resumed
        state.extra["resumed_at"] = [*state.extra.get("resumed_at", []), state.step]
    if world > 1:
        distribute(state, world)

    images = torch.from_numpy(data.images).to(device)
    labels = torch.from_numpy(data.labels).to(device) if data.labels is not None else None
    batches = ShardedBatches(images, labels, cfg.train.per_worker_batch, rank, world, cfg.train.seed)

    callbacks: list[Callback] = [RayCheckpoints(cfg, rank, config["meta"])]
    if config.get("fault_at"):
        callbacks.insert(0, FaultAt(config["fault_at"], rank, config["fault_marker"]))
    if rank == 0 and config.get("mlflow_run_id"):
        from flows.tracking import MlflowMetrics, client, mlflow_monitor

        client(config["mlflow_uri"]).set_tag(config["mlflow_run_id"], "ray.node_ids", ",".join(nodes))
        callbacks.append(MlflowMetrics(config["mlflow_uri"], config["mlflow_run_id"]))
        monitor = mlflow_monitor(cfg, data_dir, data.manifest, config["mlflow_uri"], config["mlflow_run_id"])
        if monitor is not None:
            callbacks.append(monitor)
    train(state, batches.from_step(batch_position(state.step, cfg.train)), cfg, callbacks)


def _cpus_per_worker(cfg: PipelineConfig) -> int:
    import ray

    if cfg.train.threads_per_worker:
        return cfg.train.threads_per_worker
    if cfg.train.use_gpu:
        return 1
    return max(1, int(ray.cluster_resources().get("CPU", 1)) // cfg.train.num_workers)


def run_storage(uri: str):
    """Ray Train's (storage_path, storage_filesystem) for a folder or s3://bucket/prefix. The S3
    filesystem carries only the endpoint: each node reads credentials from its own environment,
    so no secret travels with the run."""
    if not uri.startswith("s3://"):
        return uri, None
    from urllib.parse import urlparse

    import pyarrow.fs

    endpoint = urlparse(os.environ.get("AWS_ENDPOINT_URL", ""))
    kw = {"endpoint_override": endpoint.netloc, "scheme": endpoint.scheme or "https"} if endpoint.netloc else {}
    fs = pyarrow.fs.S3FileSystem(region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"), **kw)
    return uri.removeprefix("s3://").rstrip("/"), fs


def run_training(settings: Settings, cfg: PipelineConfig, data_dir: str, run_name: str,
                 mlflow_run_id: str | None, meta: dict) -> dict:
    """Train on Ray, then place the final checkpoint in models/candidate/. Returns a reference."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    started = False
    if not ray.is_initialized():
        env_vars = {k: os.environ[k] for k in ("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S",) if k in os.environ}
        if settings.ray_address:
            ray.init(address=settings.ray_address, runtime_env={"env_vars": env_vars})
        else:
            # the dashboard hosts the State API that Ray Train's placement-group cleaner polls;
            # without it every run logs a warning per second
            # address="local": always a fresh instance, never whatever cluster /tmp/ray last recorded
            ray.init(address="local", num_cpus=os.cpu_count(), runtime_env={"env_vars": env_vars},
                     logging_level="WARNING")
        started = True
    try:
        cpus = _cpus_per_worker(cfg)
        storage_path, storage_fs = run_storage(settings.ray_storage)
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"pipeline": cfg.to_dict(), "data_dir": data_dir, "threads": cpus, "meta": meta,
                               "data_sha256": load_manifest(data_dir)["content_sha256"],
                               "data_ref": ship_dataset(Path(data_dir)) if settings.ray_address else None,
                               "mlflow_uri": settings.mlflow_uri, "mlflow_run_id": mlflow_run_id,
                               "fault_at": os.environ.get("GANPIPE_FAULT_AT", ""),
                               "fault_marker": str(settings.home / "faults" / f"{run_name}.fired")},
            scaling_config=ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=cfg.train.use_gpu,
                                         resources_per_worker=None if cfg.train.use_gpu else {"CPU": cpus}),
            torch_config=TorchConfig(backend="nccl" if cfg.train.use_gpu else "gloo"),
            run_config=RunConfig(name=run_name, storage_path=storage_path, storage_filesystem=storage_fs,
                                 failure_config=FailureConfig(max_failures=cfg.train.max_failures),
                                 checkpoint_config=CheckpointConfig(num_to_keep=2)),
        )
        try:
            result = trainer.fit()
        except Exception as e:
            raise TrainingError(f"Ray Train run {run_name!r} failed: {type(e).__name__}: {e}") from e
        if result.checkpoint is None:
            raise TrainingError(f"Ray Train run {run_name!r} finished without a checkpoint")
        with result.checkpoint.as_directory() as d:
            ckpt_file = Path(d) / CKPT_NAME
            ckpt = load_checkpoint(ckpt_file)  # verifies the hash before it becomes the candidate
            return publish_candidate(settings, ckpt_file, ckpt, run_name, mlflow_run_id, result.path)
    finally:
        if started:
            ray.shutdown()


def publish_candidate(settings: Settings, ckpt_file: Path, ckpt: dict, run_name: str,
                      mlflow_run_id: str | None, ray_path: str) -> dict:
    """Copy the verified final checkpoint into models/candidate/ (atomic folder swap)."""
    dest = settings.candidate_dir
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".candidate.", dir=dest.parent))
    try:
        shutil.copy2(ckpt_file, tmp / CKPT_NAME)
        shutil.copy2(ckpt_file.with_name(CKPT_NAME + ".json"), tmp / (CKPT_NAME + ".json"))
        sha = json.loads((tmp / (CKPT_NAME + ".json")).read_text())["sha256"]
        info = {"run_name": run_name, "mlflow_run_id": mlflow_run_id, "step": int(ckpt["step"]),
                "images_seen": int(ckpt["images_seen"]), "checkpoint_sha256": sha, "ray_result_path": ray_path,
                "meta": ckpt["meta"]}
        write_record(tmp / "train.json", info)
        replace_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {**info, "checkpoint": str(dest / CKPT_NAME)}


def check_dataset_fits(cfg: PipelineConfig, manifest: dict, prepared: Path) -> None:
    """A class-conditional family needs labels: refuse before Ray or MLflow start, naming both."""
    from gan_core.config import ConfigError
    from gan_core.models import family_for

    family = family_for(cfg.model)
    classes = (manifest.get("labels") or {}).get("num_classes", 0)
    if family.conditional and classes < 2:
        raise ConfigError("model.arch", f"{family.name} is class-conditional, but {prepared / 'manifest.json'} "
                                        f"has {classes} classes; use a labelled dataset or an unconditional family")


def train_stage(settings: Settings, cfg: PipelineConfig, lineage: dict) -> dict:
    """The train stage: open the MLflow run with its lineage tags, then train on Ray."""
    import time

    from flows import versioning
    from flows.tracking import client, experiment_id, model_name, start_run

    prepared = settings.prepared_dir(cfg.data.name)
    manifest = load_manifest(prepared)
    check_dataset_fits(cfg, manifest, prepared)
    meta = {"dataset_name": cfg.data.dataset, "dataset_version": str(manifest.get("version", "unversioned")),
            "dataset_sha256": manifest["content_sha256"],
            "params_sha256": cfg.params_hash(), "git_commit": versioning.git_commit(settings),
            "prefect_flow_run_id": lineage.get("prefect.flow_run_id", "none")}
    run_name = f"{model_name(cfg)}-{time.strftime('%Y%m%d-%H%M%S')}"
    c = client(settings.mlflow_uri)
    embedded = settings.mlflow_uri.startswith(("sqlite:", "file:"))
    exp = experiment_id(c, f"{cfg.register.model_prefix}-{cfg.data.dataset}",
                        settings.mlflow_artifacts.as_uri() if embedded else None)
    tags = {"ray.run_name": run_name, "dataset.name": cfg.data.name, "model.arch": cfg.model.arch,
            **{f"lineage.{k}": str(v) for k, v in meta.items()}}
    run_id = start_run(c, exp, run_name, cfg, tags)
    try:
        return run_training(settings, cfg, str(prepared), run_name, run_id, meta)
    except BaseException:
        c.set_terminated(run_id, "FAILED")
        raise
