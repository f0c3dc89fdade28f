"""Stage 2, train: Ray Train TorchTrainer, DDP over G and D, checkpoints through ray.train.report.

The driver starts (or joins) Ray, runs `train_loop_per_worker` (flows/stages/worker.py) on
`num_workers` workers and copies the final checkpoint into models/candidate/, which DVC versions.
A worker failure restarts the worker group from the newest valid checkpoint on storage
(FailureConfig.max_failures).
"""
from __future__ import annotations

import json
import os
import posixpath
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


from flows.ops.faults import seam
from flows.ops.progress import BoardReader, create_board
from flows.ops import console
from flows.ops.console import Progress
from flows.stages.records import timed, write_record
from flows.stages.resume import CKPT_NAME
from flows.ops.settings import Settings, without_password
from flows.stages.verdict import divergence_verdict
from gan_core import determinism
from gan_core.checkpoint import load_checkpoint
from gan_core.config import PipelineConfig
from gan_core.data import load_manifest
from gan_core.files import replace_dir
from gan_core.train import DivergedError
from flows.stages.worker import TrainingError, train_loop_per_worker



def ship_dataset(data_dir: Path):
    """On a cluster, workers may run on machines without the workspace: the prepared folder (a few
    files, hash-checked on arrival) travels through Ray's object store instead."""
    import ray

    return ray.put({str(f.relative_to(data_dir)): f.read_bytes() for f in sorted(data_dir.rglob("*")) if f.is_file()})


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
    so no secret travels with the run. Every S3 request is retried with bounded exponential backoff
    inside the AWS SDK (standard strategy, PYARROW_S3_MAX_ATTEMPTS, connect/request timeouts); a
    checkpoint upload that still fails fails the worker, and Ray Train resumes from the last
    registered checkpoint (FailureConfig) or fails the run with it as the restore point."""
    if not uri.startswith("s3://"):
        return uri, None
    from urllib.parse import urlparse

    from flows.ops.retry import s3_filesystem

    endpoint = urlparse(os.environ.get("AWS_ENDPOINT_URL", ""))
    kw = {"endpoint_override": endpoint.netloc, "scheme": endpoint.scheme or "https"} if endpoint.netloc else {}
    # a pyarrow S3FileSystem whose retry strategy survives the pickling that ships it to every
    # worker (pyarrow's own drops it back to the default): endpoint and region only, no credentials
    fs = s3_filesystem(region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"), **kw)
    return uri.removeprefix("s3://").rstrip("/"), fs


def cluster_lost(e: BaseException) -> bool:
    """True when the driver lost the Ray cluster itself (head or GCS gone), not a worker's own error:
    measured with the head's process group SIGKILLed mid-run, fit() raised ActorUnavailableError
    ("Socket closed") within ~20 s."""
    from ray.exceptions import ActorUnavailableError, LocalRayletDiedError, RaySystemError

    return isinstance(e, (ActorUnavailableError, LocalRayletDiedError, RaySystemError, ConnectionError))


def failure_message(e: BaseException, run_name: str, ray_address: str | None, storage: str) -> str:
    why = f"{type(e).__name__}: {e}"
    if ray_address and cluster_lost(e):
        return (f"Ray Train run {run_name!r} failed: the Ray cluster at {ray_address} stopped answering (head node "
                f"lost?): {why}. Its checkpoints are kept in {storage}/{run_name}: once the cluster is back, "
                "trigger the same run again and it resumes from the newest one")
    return f"Ray Train run {run_name!r} failed: {why}"


def run_training(settings: Settings, cfg: PipelineConfig, data_dir: str, run_name: str,
                 mlflow_run_id: str | None, meta: dict) -> dict:
    """Train on Ray, then place the final checkpoint in models/candidate/. Returns a reference."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    started = False
    if not ray.is_initialized():
        env_vars = {k: os.environ[k] for k in ("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S",) if k in os.environ}
        with timed("ray_start"):
            if settings.ray_address:
                ray.init(address=settings.ray_address, runtime_env={"env_vars": env_vars})
            else:
                # address="local": always a fresh instance, never whatever cluster /tmp/ray last recorded;
                # no dashboard: it lives only as long as the run, and starting it took 1-1.8 s (measured)
                ray.init(address="local", num_cpus=os.cpu_count(), runtime_env={"env_vars": env_vars},
                         logging_level="WARNING", include_dashboard=False)
        started = True
    board = None
    try:
        board = create_board() if console.active() is not None else None  # the console's progress feed
        cpus = _cpus_per_worker(cfg)
        storage_path, storage_fs = run_storage(settings.ray_storage)
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"pipeline": cfg.to_dict(), "data_dir": data_dir, "threads": cpus, "meta": meta,
                               "data_sha256": load_manifest(data_dir)["content_sha256"],
                               "data_ref": ship_dataset(Path(data_dir)) if settings.ray_address else None,
                               "mlflow_uri": without_password(settings.mlflow_uri), "mlflow_run_id": mlflow_run_id,
                               "fault_at": seam("GANPIPE_FAULT_AT"),
                               "fault_marker": str(settings.home / "faults" / f"{run_name}.fired"),
                               "progress_board": board},
            scaling_config=ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=cfg.train.use_gpu,
                                         resources_per_worker=None if cfg.train.use_gpu else {"CPU": cpus}),
            torch_config=TorchConfig(backend="nccl" if cfg.train.use_gpu else "gloo"),
            run_config=RunConfig(name=run_name, storage_path=storage_path, storage_filesystem=storage_fs,
                                 failure_config=FailureConfig(max_failures=cfg.train.max_failures),
                                 checkpoint_config=CheckpointConfig(num_to_keep=2)),
        )
        verdict = divergence_verdict(storage_path, storage_fs, run_name)
        verdict.delete()  # a re-triggered run is judged on its own steps
        try:
            with progress_shown(board), timed("ray_train_fit"):
                result = trainer.fit()
        except Exception as e:
            raise TrainingError(failure_message(e, run_name, settings.ray_address, settings.ray_storage)) from e
        if reason := verdict.read():  # before the checkpoint: it predates the divergence
            raise DivergedError(f"Ray Train run {run_name!r} {reason}; no checkpoint after it was kept, "
                                "nothing is registered, no retry")
        final = final_checkpoint(result, storage_path, storage_fs, run_name, cfg.train.steps)
        with final.as_directory() as d:
            ckpt_file = Path(d) / CKPT_NAME
            ckpt = load_checkpoint(ckpt_file)  # verifies the hash before it becomes the candidate
            return publish_candidate(settings, ckpt_file, ckpt, run_name, mlflow_run_id, result.path)
    finally:
        if started:
            with timed("ray_stop"):
                ray.shutdown()


@contextmanager
def progress_shown(board):
    """While training: rank 0's reports drawn on the run's console (nothing without one)."""
    if board is None:
        yield
        return
    shown = Progress()

    def render(item: dict) -> None:
        shown.update(item)
        if (c := console.active()) is not None:
            c.training(shown)

    try:
        with BoardReader(board, render):
            yield
    finally:
        import ray

        try:
            ray.kill(board)
        except Exception:  # the cluster went first: its failure is the one reported
            pass


def final_checkpoint(result, storage_path: str, storage_fs, run_name: str, steps: int):
    """The finished run's last checkpoint: the newest on storage that verifies (the same rule as a
    resume, so the candidate never depends on whether Ray's controller polled the last report),
    which must be at the configured step count; Ray's result is the fallback record."""
    import pyarrow.fs
    import ray.train

    from flows.stages.resume import newest_valid

    fs = storage_fs or pyarrow.fs.LocalFileSystem()
    recorded = result.checkpoint.path if result.checkpoint is not None else None
    point = newest_valid(fs, f"{storage_path.rstrip('/')}/{run_name}", recorded)
    if point.checkpoint is None:
        raise TrainingError(f"Ray Train run {run_name!r} finished without a checkpoint")
    spent = (point.checkpoint.get("extra") or {}).get("privacy", {}).get("stopped_at")  # a DP budget ran out there
    if int(point.checkpoint["step"]) != steps and int(point.checkpoint["step"]) != spent:
        raise TrainingError(f"Ray Train run {run_name!r} finished, but its newest valid checkpoint "
                            f"({posixpath.basename(point.path)}) is at step {point.checkpoint['step']}, not {steps}")
    return ray.train.Checkpoint(point.path, filesystem=fs)


def publish_candidate(settings: Settings, ckpt_file: Path, ckpt: dict, run_name: str,
                      mlflow_run_id: str | None, ray_path: str) -> dict:
    """Copy the verified final checkpoint into models/candidate/ (atomic folder swap). A full disk
    raises DiskFullError naming models/candidate; the previous candidate stays, no temporaries."""
    from gan_core.files import room_for

    dest = settings.candidate_dir
    with room_for(dest):
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".candidate.", dir=dest.parent))
        try:
            shutil.copy2(ckpt_file, tmp / CKPT_NAME)
            shutil.copy2(ckpt_file.with_name(CKPT_NAME + ".json"), tmp / (CKPT_NAME + ".json"))
            sha = json.loads((tmp / (CKPT_NAME + ".json")).read_text())["sha256"]
            info = {"run_name": run_name, "mlflow_run_id": mlflow_run_id, "step": int(ckpt["step"]),
                    "images_seen": int(ckpt["images_seen"]), "checkpoint_sha256": sha,
                    "ray_result_path": ray_path, "meta": ckpt["meta"]}
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


def run_name_for(settings: Settings, cfg: PipelineConfig, manifest: dict) -> str:
    """A training run is named by what it trains from: params hash, dataset content and code
    version. A re-triggered run (after a driver crash, or simply again) therefore finds its own
    checkpoints in Ray's storage and resumes instead of starting over."""
    import hashlib

    from flows.data import versioning
    from flows.registry.tracking import model_name

    inputs = f"{cfg.params_hash()}|{manifest['content_sha256']}|{versioning.code_version(settings)}"
    return f"{model_name(cfg)}-{hashlib.sha256(inputs.encode()).hexdigest()[:12]}"


def open_mlflow_run(c, exp: str, run_name: str, cfg: PipelineConfig, tags: dict) -> str:
    """The MLflow run of this training run: the one a crashed or earlier attempt opened (same
    run name), reopened, so one training run has one MLflow run and one curve; else a new one."""
    from flows.registry.tracking import start_run

    found = c.search_runs([exp], filter_string=f"tags.`ray.run_name` = '{run_name}'", max_results=1,
                          order_by=["attributes.start_time DESC"])
    if not found:
        return start_run(c, exp, run_name, cfg, tags)
    run_id = found[0].info.run_id
    c.update_run(run_id, status="RUNNING")
    for k, v in tags.items():
        c.set_tag(run_id, k, v)
    return run_id


def train_stage(settings: Settings, cfg: PipelineConfig, lineage: dict) -> dict:
    """The train stage: open the MLflow run with its lineage tags, then train on Ray."""
    from flows.data import versioning
    from flows.registry.tracking import client, experiment_id

    prepared = settings.prepared_dir(cfg.data.name)
    manifest = load_manifest(prepared)
    check_dataset_fits(cfg, manifest, prepared)
    meta = {"dataset_name": cfg.data.dataset, "dataset_version": str(manifest.get("version", "unversioned")),
            "dataset_sha256": manifest["content_sha256"],
            "params_sha256": cfg.params_hash(), "git_commit": versioning.git_commit(settings),
            "prefect_flow_run_id": lineage.get("prefect.flow_run_id", "none"),
            "determinism": determinism.statement(cfg.train.deterministic, cfg.train.use_gpu)}
    run_name = run_name_for(settings, cfg, manifest)
    c = client(settings.mlflow_uri)
    exp = experiment_id(c, f"{cfg.register.model_prefix}-{cfg.data.dataset}", settings.mlflow_artifact_root)
    tags = {"ray.run_name": run_name, "dataset.name": cfg.data.name, "model.arch": cfg.model.arch,
            **{f"lineage.{k}": str(v) for k, v in meta.items()}}
    with timed("mlflow_run"):
        run_id = open_mlflow_run(c, exp, run_name, cfg, tags)
    try:
        if cfg.federated.enabled:  # clients as Ray actors, each with its own shard (flows/stages/federated.py)
            from flows.stages.federated import run_federated
            return run_federated(settings, cfg, str(prepared), run_name, run_id, meta)
        return run_training(settings, cfg, str(prepared), run_name, run_id, meta)
    except BaseException:
        c.set_terminated(run_id, "FAILED")
        raise
