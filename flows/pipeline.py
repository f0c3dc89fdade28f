"""The Prefect flow: prepare -> train (Ray) -> evaluate -> register, each stage DVC-committed.

Tasks call the same stage functions that `dvc repro` runs through `ganpipe stage <name>`, pass
references (paths, hashes, run ids) and never tensors. Prepare is skipped when DVC reports the
stage unchanged; train always produces a new candidate.
"""
from __future__ import annotations

from typing import Literal, Optional

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE
from prefect.runtime import flow_run

from flows import versioning
from flows.evaluate import evaluate
from flows.params import load_config
from flows.prepare import prepare
from flows.register import register
from flows.settings import load_settings
from flows.tracking import client
from flows.train import train_stage
from gan_core.config import ConfigError, PipelineConfig
from gan_core.data import DataError, load_manifest
from gan_core.models import ARCHS
from gan_core.train import DivergedError


def _transient(task, task_run, state) -> bool:
    """Retry only what may succeed on a second try: never bad config/data or divergence."""
    try:
        state.result()
    except (ConfigError, DataError, ValueError, FileNotFoundError, DivergedError):
        return False
    except Exception:
        return True
    return False


@task(name="prepare", cache_policy=NONE)
def prepare_task(cfg: dict) -> dict:
    log, s, c = get_run_logger(), load_settings(), PipelineConfig.from_dict(cfg)
    if versioning.stage_up_to_date(s, "prepare"):
        m = load_manifest(s.prepared_dir(c.data.name))
        log.info("prepare: inputs unchanged since dvc.lock; skipped (dataset %s)", m["content_sha256"][:12])
        return {"path": str(s.prepared_dir(c.data.name)), "content_sha256": m["content_sha256"],
                "count": m["count"], "skipped": True}
    ref = prepare(s, c)
    versioning.commit(s, "prepare")
    versioning.push(s, "prepare")
    log.info("prepare: %d images, content %s", ref["count"], ref["content_sha256"][:12])
    return {**ref, "skipped": False}


@task(name="train", cache_policy=NONE)
def train_task(cfg: dict, lineage: dict) -> dict:
    s = load_settings()
    ref = train_stage(s, PipelineConfig.from_dict(cfg), lineage)
    versioning.commit(s, "train")
    versioning.push(s, "train")  # the checkpoint reaches the remote before anything can fail later
    get_run_logger().info("train: %s finished at step %d", ref["run_name"], ref["step"])
    return ref


@task(name="evaluate", cache_policy=NONE, retries=2, retry_delay_seconds=5, retry_condition_fn=_transient)
def evaluate_task(cfg: dict) -> dict:
    s = load_settings()
    ev = evaluate(s, PipelineConfig.from_dict(cfg))
    versioning.commit(s, "evaluate")
    get_run_logger().info("evaluate: %s = %.4f (fingerprint %s)", ev["metric"], ev["fid"], ev["fingerprint"]["id"])
    return ev


@task(name="register", cache_policy=NONE)
def register_task(cfg: dict, lineage: dict) -> dict:
    s = load_settings()
    reg = register(s, PipelineConfig.from_dict(cfg), lineage)
    versioning.commit(s, "register")
    versioning.push(s)  # whatever is still local: evaluate's sample grid
    get_run_logger().info("register: %s v%s, champion=%s (%s)", reg["model_name"], reg["version"],
                          reg["champion"], reg["reason"])
    return reg


Arch = Literal[tuple(ARCHS)]  # a drop-down of the family names in the Prefect UI's run form


@flow(name="ganpipe-pipeline", log_prints=True)
def pipeline(overrides: list[str] | None = None, arch: Optional[Arch] = None, dataset: Optional[str] = None) -> dict:
    """Run prepare -> train -> evaluate -> register. `overrides` are `section.field=value` strings;
    `arch` picks the GAN family, `dataset` NAME or NAME@vN (the same as model.arch=... / data.name=...,
    and validated the same way: an unknown dataset or version fails before any work)."""
    s = load_settings()
    picks = [f"model.arch={arch}"] if arch else []
    picks += [f"data.name={dataset}"] if dataset else []
    overrides = picks + list(overrides or [])
    cfg = load_config(s.params_file, overrides)
    versioning.ensure_repo(s)
    lineage = {"prefect.flow_run_id": str(flow_run.id or "none")}
    d = cfg.to_dict()
    prepared = prepare_task(d)
    training = train_task(d, lineage)
    mlflow_run = client(s.mlflow_uri)
    try:
        evaluation = evaluate_task(d)
        registration = register_task(d, lineage)
    except BaseException:
        mlflow_run.set_terminated(training["mlflow_run_id"], "FAILED")
        raise
    mlflow_run.set_terminated(training["mlflow_run_id"], "FINISHED")
    return {"prepared": prepared, "training": training, "evaluation": evaluation, "registration": registration}
