"""The Prefect flows: prepare -> train (Ray) -> evaluate -> register, each stage DVC-committed.

Tasks call the same stage functions that `dvc repro` runs through `ganpipe stage <name>`, pass
references (paths, hashes, run ids) and never tensors. Prepare is skipped when DVC reports the
stage unchanged; train always produces a new candidate. `pipeline` is the on-demand flow (its typed
parameters are the Prefect UI's run form); `retrain` is the scheduled one, which skips when nothing
it would train from changed since the champion.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Annotated, Literal, Optional

from mlflow.entities import Metric
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE
from prefect.runtime import deployment, flow_run
from pydantic import Field

from flows.data import versioning
from flows.stages.evaluate import evaluate
from flows.ops.faults import eval_fault
from flows.ops.console import stage_hooks
from flows.ops.locks import file_lock
from flows.ops.params import Setting, load_config, typed_settings
from flows.stages.prepare import prepare
from flows.stages.records import reset_timings, timed, timings
from flows.stages.register import register
from flows.ops.settings import Settings, load_settings
from flows.stages.summary import mlflow_links, run_summary, skip_summary
from flows.registry import history
from flows.registry.tracking import SAME_INPUTS, client, model_name, trained_from_same_inputs
from flows.serving.tags import served_version
from flows.stages.train import train_stage
from gan_core.config import ConfigError, PipelineConfig
from gan_core.data import DataError, load_manifest
from gan_core.files import write_text_atomic
from gan_core.models import ARCHS
from gan_core.train import DivergedError

# run-form field -> params.yaml setting it overrides (None in the form: params.yaml's value)
FORM = {"dataset": "data.name", "arch": "model.arch", "steps": "train.steps", "batch_size": "train.batch_size",
        "workers": "train.num_workers", "use_gpu": "train.use_gpu", "fid_n": "eval.n_fake",
        "promotion_margin": "register.promotion_margin"}
ARTIFACT_KEY = "ganpipe-run-summary"


def _transient(task, task_run, state) -> bool:
    """Retry only what may succeed on a second try: never bad config/data or divergence."""
    try:
        state.result()
    except (ConfigError, DataError, ValueError, FileNotFoundError, DivergedError):
        return False
    except Exception:
        return True
    return False


@task(name="prepare", cache_policy=NONE, **stage_hooks("prepare"))
def prepare_task(cfg: PipelineConfig) -> dict:
    log, s = get_run_logger(), load_settings()
    if versioning.stage_up_to_date(s, "prepare"):
        m = load_manifest(s.prepared_dir(cfg.data.name))
        log.info("prepare: inputs unchanged since dvc.lock; skipped (dataset %s)", m["content_sha256"][:12])
        return {"path": str(s.prepared_dir(cfg.data.name)), "content_sha256": m["content_sha256"],
                "count": m["count"], "skipped": True}
    with timed("prepare"):
        ref = prepare(s, cfg)
    with timed("dvc"):
        versioning.commit(s, "prepare")
        versioning.push(s, "prepare")
    log.info("prepare: %d images, content %s", ref["count"], ref["content_sha256"][:12])
    return {**ref, "skipped": False}


@task(name="train", cache_policy=NONE, **stage_hooks("train"))
def train_task(cfg: PipelineConfig, lineage: dict) -> dict:
    s = load_settings()
    ref = train_stage(s, cfg, lineage)  # the Ray boundary: each worker gets cfg.to_dict() and parses it once
    with timed("dvc"):
        versioning.commit(s, "train")
        versioning.push(s, "train")  # the checkpoint reaches the remote before anything can fail later
    get_run_logger().info("train: %s finished at step %d", ref["run_name"], ref["step"])
    return ref


@task(name="evaluate", cache_policy=NONE, retries=2, retry_delay_seconds=5, retry_condition_fn=_transient,
      **stage_hooks("evaluate"))
def evaluate_task(cfg: PipelineConfig) -> dict:
    s = load_settings()
    eval_fault(s.home / "faults" / f"evaluate-{flow_run.id}.count")  # a no-op unless GANPIPE_FAULT_EVAL is set
    with timed("evaluation"):
        ev = evaluate(s, cfg)
    with timed("dvc"):
        versioning.commit(s, "evaluate")
    get_run_logger().info("evaluate: %s = %.4f (fingerprint %s)", ev["metric"], ev["value"], ev["fingerprint"]["id"])
    return ev


@task(name="register", cache_policy=NONE, **stage_hooks("register"))
def register_task(cfg: PipelineConfig, lineage: dict) -> dict:
    s = load_settings()
    with timed("register_mlflow"):
        reg = register(s, cfg, lineage)
    with timed("dvc"):
        versioning.commit(s, "register")
        versioning.push(s)  # whatever is still local: evaluate's sample grid
    get_run_logger().info("register: %s v%s, champion=%s (%s)", reg["model_name"], reg["version"],
                          reg["champion"], reg["reason"])
    return reg


def form_settings(values: dict) -> list[Setting]:
    """The form's fields as typed settings, ints and bools as they came (the free-form overrides are
    applied after them, and win)."""
    return typed_settings({FORM[k]: v for k, v in values.items()})


def unchanged_since(s: Settings, cfg: PipelineConfig, prepared: dict) -> str | None:
    """Why retraining would be pointless, or None: a version trained on the same dataset content,
    params hash and code exists (the champion, or one that lost to it)."""
    inputs = dict(zip(SAME_INPUTS, (prepared["content_sha256"], cfg.params_hash(), versioning.git_commit(s))))
    if inputs["git.commit"].endswith("+dirty"):
        return None  # uncommitted code is never "the same code"
    found = trained_from_same_inputs(client(s.mlflow_uri), model_name(cfg), inputs)
    if found is None:
        return None
    version, is_champion = found
    what = "the champion" if is_champion else f"a non-champion ({version.tags.get('promotion.reason', '?')})"
    return (f"dataset {inputs['dataset.content_sha256'][:12]}, params {inputs['params.sha256'][:12]} and code "
            f"{inputs['git.commit'][:12]} are unchanged since v{version.version}, {what}")


def _publish(markdown: str, description: str) -> None:
    create_markdown_artifact(markdown=markdown, key=ARTIFACT_KEY, description=description)


@contextmanager
def params_kept(s: Settings):
    """Runs from a deployment (a schedule, a click in the UI) are one-offs: their overrides are
    written to params.yaml for the stages (and dvc.lock records them), then params.yaml is put back,
    so a custom run never changes what the next scheduled run trains."""
    if not deployment.id:
        yield
        return
    before = s.params_file.read_text()
    try:
        yield
    finally:
        write_text_atomic(s.params_file, before)


def _run(values: list[Setting], overrides: list[str], skip_unchanged: bool) -> dict:
    reset_timings()
    with timed("flow_body"):
        out = _run_timed(values, overrides, skip_unchanged)
    if not out["skipped"]:  # the orchestration breakdown, beside the run's training metrics
        spent = timings()
        client(load_settings().mlflow_uri).log_batch(out["training"]["mlflow_run_id"], metrics=[
            Metric(f"timing/{k}_s", v, int(time.time() * 1000), 0) for k, v in sorted(spent.items())])
    return {**out, "timings": timings()}


def _run_timed(values: list[Setting], overrides: list[str], skip_unchanged: bool) -> dict:
    s = load_settings()
    # bad values fail now, not after waiting for the lock; parsed once: the load under the lock (and this
    # one, after the CLI's check) returns the same config unless params.yaml changed in between
    load_config(s.params_file, overrides, write=False, values=values)
    log = get_run_logger()
    run_id = str(flow_run.id or "none")
    # one pipeline at a time per workspace: a scheduled run and a click share data/, models/ and reports/
    with file_lock(s.workspace / ".ganpipe-run.lock", holder=f"flow run {run_id}",
                   on_wait=lambda who: log.info("waiting for the workspace: held by %s", who)), params_kept(s):
        cfg = load_config(s.params_file, overrides, values=values)
        with timed("dvc"):
            versioning.ensure_repo(s)
        lineage = {"prefect.flow_run_id": run_id}
        # in-process tasks take the frozen config itself: with cache_policy=NONE Prefect neither hashes
        # nor serialises task parameters, and it hands an unchanged dataclass over as the same object
        prepared = prepare_task(cfg)
        if skip_unchanged and (why := unchanged_since(s, cfg, prepared)):
            log.info("retraining skipped: %s", why)
            _publish(skip_summary(model_name(cfg), why), "retraining skipped: inputs unchanged")
            return {"prepared": prepared, "skipped": True, "reason": why}
        training = train_task(cfg, lineage)
        mlflow_run = client(s.mlflow_uri)
        try:
            evaluation = evaluate_task(cfg)
            registration = register_task(cfg, lineage)
        except BaseException:
            mlflow_run.set_terminated(training["mlflow_run_id"], "FAILED")
            raise
        mlflow_run.set_terminated(training["mlflow_run_id"], "FINISHED")
    exp = mlflow_run.get_run(training["mlflow_run_id"]).info.experiment_id
    links = mlflow_links(s.mlflow_uri, exp, training["mlflow_run_id"], registration["model_name"],
                         registration["version"])
    _publish(run_summary(cfg.to_dict(), training, evaluation, registration, links,
                         history.read_quietly(mlflow_run, registration["model_name"]),
                         served=served_version(mlflow_run, registration["model_name"]), timings=timings()),
             f"{registration['model_name']} v{registration['version']}: {registration['metric']} "
             f"{registration['value']:.4f}")
    return {"prepared": prepared, "training": training, "evaluation": evaluation, "registration": registration,
            "skipped": False}


Arch = Literal[tuple(ARCHS)]  # a drop-down of the family names in the Prefect UI's run form
Positive = Annotated[int, Field(gt=0)]


@flow(name="ganpipe-pipeline", log_prints=True)
def pipeline(dataset: Optional[str] = None, arch: Optional[Arch] = None, steps: Optional[Positive] = None,
             batch_size: Optional[Positive] = None, workers: Optional[Positive] = None,
             use_gpu: Optional[bool] = None, fid_n: Optional[Annotated[int, Field(ge=2)]] = None,
             promotion_margin: Optional[Annotated[float, Field(ge=0)]] = None,
             overrides: Optional[list[str]] = None) -> dict:
    """Train, evaluate and register one model. Every value is validated before any work: an unknown
    dataset or version, or a batch that does not split over the workers, fails naming the field.

    Args:
        dataset: NAME or NAME@vN from data/catalog.yaml, or a built-in (digits, blobs, shapes); empty: params.yaml
        arch: the GAN family; empty: params.yaml's model.arch
        steps: training steps (train.steps)
        batch_size: global batch, a multiple of workers (train.batch_size)
        workers: Ray Train workers (train.num_workers)
        use_gpu: one worker per GPU, NCCL (train.use_gpu)
        fid_n: generated samples for the FID (eval.n_fake)
        promotion_margin: FID a candidate must beat the champion by (register.promotion_margin)
        overrides: extra section.field=value settings, applied last
    """
    form = dict(dataset=dataset, arch=arch, steps=steps, batch_size=batch_size, workers=workers, use_gpu=use_gpu,
                fid_n=fid_n, promotion_margin=promotion_margin)
    return _run(form_settings(form), list(overrides or []), skip_unchanged=False)


@flow(name="ganpipe-retrain", log_prints=True)
def retrain(dataset: Optional[str] = None, arch: Optional[Arch] = None, force: bool = False,
            overrides: Optional[list[str]] = None) -> dict:
    """Scheduled retraining: prepare (DVC skips it when the data is unchanged), then train, evaluate
    and register, unless the dataset hash, params hash and code are all unchanged since the model
    they produced.

    Args:
        dataset: NAME or NAME@vN; empty: params.yaml's data.name
        arch: the GAN family; empty: params.yaml's model.arch
        force: run even when nothing changed (the same inputs give back the same model; change train.seed for another)
        overrides: extra section.field=value settings
    """
    return _run(form_settings(dict(dataset=dataset, arch=arch)), list(overrides or []), skip_unchanged=not force)
