"""The worker side of the train stage: what each Ray Train worker runs (`train_loop_per_worker`): the
dataset on its node, the state built and resumed from the newest valid checkpoint on storage, DDP, the
callbacks (rank 0's MLflow streams and console feed, every rank's checkpoint reports), and the loop.
The driver side (starting Ray, the trainer, the candidate) is flows/stages/train.py."""
from __future__ import annotations

import posixpath
import tempfile
from pathlib import Path

import torch

from flows.ops.faults import FaultAt
from flows.ops.progress import ProgressFeed, tee_monitor
from flows.stages.resume import CKPT_NAME
from flows.stages.verdict import Verdict
from gan_core.checkpoint import gather, gather_rng_states, restore, save_checkpoint, to_checkpoint
from gan_core import determinism
from gan_core.config import PipelineConfig
from gan_core.batches import ShardedBatches
from gan_core.data import load_manifest, load_prepared, training_arrays
from gan_core.text import attach_vocabulary
from gan_core.files import replace_dir
from gan_core.replicas import check_replicas
from gan_core.state import Callback, TrainState
from gan_core.train import DivergedError, batch_position, build_state, distribute, train


class TrainingError(RuntimeError):
    pass


class RayCheckpoints(Callback):
    """Reports a checkpoint to Ray every checkpoint_every steps. Every rank must call report;
    only rank 0 writes the file. First the ranks check their replicas agree (rank 0's file stands
    for all of them) and gather their RNG states (both collectives)."""

    def __init__(self, cfg: PipelineConfig, rank: int, meta: dict):
        self.cfg, self.rank, self.meta = cfg, rank, meta

    def on_checkpoint(self, state: TrainState) -> None:
        import ray.train

        check_replicas({"G": state.G, "D": state.D, "G_ema": state.G_ema}, state.step)
        rng, extras = gather_rng_states(), gather(state.extra)  # each rank's stream and family state
        metrics = {"step": state.step, "images_seen": state.images_seen}
        if self.rank != 0:
            ray.train.report(metrics, checkpoint=None)
            return
        with tempfile.TemporaryDirectory() as d:
            save_checkpoint(Path(d) / CKPT_NAME, to_checkpoint(state, self.cfg, rng, self.meta, extras))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


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
    determinism.apply(cfg.train.deterministic)  # before the first CUDA work of this process
    torch.set_num_threads(config["threads"])  # one worker per core: no oversubscription
    device = ray.train.torch.get_device() if cfg.train.use_gpu else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL collectives (the RNG gather) use the current device

    data_dir = local_dataset(config)
    data = load_prepared(data_dir, mmap=True)  # a rank reads only its batches' rows (ShardedBatches)
    nodes = node_ids(world)
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    state = build_state(cfg, device, data.num_classes)
    attach_vocabulary(state, data.vocabulary)  # a text-conditioned G carries its data's vocabulary
    torch.manual_seed(cfg.train.seed * 1_000_003 + rank + 1)  # then a distinct latent stream per rank
    point = resume(state, world, rank)
    if cfg.privacy.enabled:  # after the restore: the accountant continues the checkpoint's history
        from gan_core.privacy import make_private
        make_private(state, cfg, len(training_arrays(data)[0]["images"]))
    if world > 1:
        distribute(state, world)

    aligned, independent = training_arrays(data)  # views of the files: no whole-array copy, on host or device
    batches = ShardedBatches(aligned, cfg.train.per_worker_batch, rank, world, cfg.train.seed, independent,
                             device=device)

    callbacks: list[Callback] = []
    if config.get("fault_at"):
        callbacks.append(FaultAt(config["fault_at"], rank, config["fault_marker"]))
    feed = ProgressFeed(config["progress_board"].push.remote, cfg.train.steps) \
        if rank == 0 and config.get("progress_board") is not None else None  # the driver's console
    if rank == 0 and config.get("mlflow_run_id"):  # ahead of the checkpoints: metrics are flushed before a report
        callbacks += mlflow_callbacks(config, cfg, data_dir, data.manifest, nodes, point.skipped, feed)
    if feed is not None:
        callbacks.append(feed)
    callbacks.append(RayCheckpoints(cfg, rank, config["meta"]))
    if state.step >= cfg.train.steps:  # a finished run re-triggered: hand back its final checkpoint,
        hand_back(rank, state, point)   # byte for byte, so registration sees the same candidate
        return
    try:
        train(state, batches.from_step(batch_position(state.step, cfg)), cfg, callbacks)
    except DivergedError as e:
        # every rank raises at the same step (the flag is all-reduced); ending normally keeps
        # FailureConfig from restarting a run that would only diverge again. The verdict goes next
        # to the checkpoints, where the driver reads it (Ray's result carries checkpoint metrics only).
        if rank == 0:
            storage = ray.train.get_context().get_storage()
            Verdict.of_run(storage.storage_filesystem, storage.experiment_fs_path).write(state.step, str(e))


def hand_back(rank: int, state: TrainState, point) -> None:
    """Report the checkpoint this run resumed from as its result (every rank reports; rank 0 with it)."""
    import ray.train

    metrics = {"step": state.step, "images_seen": state.images_seen}
    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    storage = ray.train.get_context().get_storage()
    with ray.train.Checkpoint(point.path, filesystem=storage.storage_filesystem).as_directory() as d:
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


def resume(state: TrainState, world: int, rank: int):
    """Restore the newest valid checkpoint of this run on storage, whether or not Ray's controller
    recorded it (see flows/stages/resume.py); returns the ResumePoint (what was restored, what was skipped)."""
    import ray.train

    from flows.stages.resume import agreed_resume_point

    storage = ray.train.get_context().get_storage()
    recorded = ray.train.get_checkpoint()
    point = agreed_resume_point(storage.storage_filesystem, storage.experiment_fs_path,
                                recorded.path if recorded is not None else None, rank, world)
    for why in point.skipped:
        print(f"resume: skipped {why}", flush=True)  # lands in the worker log Ray keeps
    if point.checkpoint is None:
        return point
    if recorded is None or recorded.path.rstrip("/") != point.path:
        print(f"resume: {posixpath.basename(point.path)} is newer than Ray's record "
              f"({'none' if recorded is None else posixpath.basename(recorded.path.rstrip('/'))})", flush=True)
    state.world = world
    restore(state, point.checkpoint, rank)
    # the step of every resume travels in the checkpoint: lineage, and proof a restart resumed
    state.extra["resumed_at"] = [*state.extra.get("resumed_at", []), state.step]
    return point


def mlflow_callbacks(config: dict, cfg: PipelineConfig, data_dir: Path, manifest: dict, nodes: list[str],
                     skipped: list[str], feed: ProgressFeed | None = None) -> list[Callback]:
    """Rank 0's MLflow side: where the ranks ran, what a resume skipped, metric and monitor streams.
    Steps already in the run's history (logged before a crash, replayed after the resume) are not
    logged twice: deterministic replay gives the same values, so the first copy stands."""
    from flows.registry.tracking import MlflowMetrics, client, last_logged_step, mlflow_monitor

    c, run_id = client(config["mlflow_uri"]), config["mlflow_run_id"]
    c.set_tag(run_id, "ray.node_ids", ",".join(nodes))
    if skipped:
        c.set_tag(run_id, "resume.skipped", " | ".join(skipped)[:4900])
    floor = last_logged_step(c, run_id)
    out: list[Callback] = [MlflowMetrics(config["mlflow_uri"], run_id, floor=floor)]
    monitor = mlflow_monitor(cfg, data_dir, manifest, config["mlflow_uri"], run_id, floor=floor)
    if monitor is not None and feed is not None:
        tee_monitor(monitor, feed)  # the console's bar shows the last monitor score too
    return out + ([monitor] if monitor is not None else [])
