"""`ganpipe run`, `serve` and `stage`: the pipeline as a Prefect flow, as served deployments, or one stage
at a time (what dvc.yaml runs)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from flows.cli.app import app, cli_settings, fail
from flows.ops.console import STAGES  # stdlib only: cheap before Prefect is imported
from gan_core.config import ConfigError


@app.command()
def run(overrides: Optional[List[str]] = typer.Argument(None, help="section.field=value, e.g. train.steps=500"),
        verbose: bool = typer.Option(False, "--verbose", "-v", help="Prefect's, Ray's and DVC's own lines on the "
                                                                     "console instead of the log file")):
    """Run the whole pipeline (Prefect flow) on the configured services (embedded by default). Shows each
    stage and a training progress bar; everything else goes to GANPIPE_HOME/logs/run-<time>.log."""
    s = cli_settings()
    from flows.ops.params import load_config

    try:
        load_config(s.params_file, overrides or [], write=False)  # fail before Prefect starts
    except ConfigError as e:
        fail(str(e))
    from flows.ops.console import open_console

    con = open_console(s.home, verbose)  # before Prefect is imported: its handlers write to the log
    from flows.ops.startup import starting_shared_state

    try:
        # runs started together in one home create its databases one at a time; the stages are
        # imported while Prefect's server process boots
        with starting_shared_state(s, lambda who: con.note(f"waiting for another start-up in {s.home}: {who}")):
            from flows.stages.pipeline import pipeline
        out = pipeline(overrides=overrides or [])
    except Exception as e:  # Prefect has logged the traceback; end with the cause on one line
        con.error(f"error: pipeline failed: {type(e).__name__}: {e}{see_log(con)}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:  # Python's own report would go to the log file only
        con.error(f"error: interrupted{see_log(con)}")
        raise typer.Exit(130) from None
    summary(con, out)


def see_log(con) -> str:
    return f" (see {con.log})" if con.log else ""


def summary(con, out: dict) -> None:
    ev, reg = out["evaluation"], out["registration"]
    verdict = "yes" if reg["champion"] else "no"
    con.echo("")
    better = "higher" if ev.get("higher_is_better") else "lower"
    con.echo(f"{ev['metric']} ({ev['fingerprint']['backbone']}, {better} is better): {ev['value']:.4f}")
    others = {k: v for k, v in ev["metrics"].items() if k != ev["metric"] and not k.endswith("_std")}
    con.echo("also:           " + ", ".join(f"{k}={v:.4f}" for k, v in others.items()))
    con.echo(f"model version:  {reg['model_name']} v{reg['version']}  ({reg['model_uri']})")
    con.echo(f"champion:       {verdict}: {reg['reason']}")
    con.echo(f"sample grid:    {ev['samples']}")
    con.echo(f"prepare:        {'skipped (unchanged)' if out['prepared']['skipped'] else 'ran'}")


@app.command()
def serve(config: Optional[Path] = typer.Option(None, help="deployments file (schedule, names); default "
                                                            "infra/deployments.yaml, or built-in defaults without it"),
          cron: Optional[str] = typer.Option(None, help="override the retraining schedule, e.g. '*/30 * * * *'")):
    """Publish the scheduled-retrain and on-demand deployments to the Prefect server and run their
    flow runs here until stopped (Ctrl-C). Needs PREFECT_API_URL (e.g. from `ganpipe services up`)."""
    import os

    s = cli_settings()
    if not os.environ.get("PREFECT_API_URL"):
        fail("serve: PREFECT_API_URL is not set; start the services (`ganpipe services up`) and "
              "export GANPIPE_ENV_FILE, or point PREFECT_API_URL at a Prefect server")
    from flows.ops.deployments import DeployConfig, serve as serve_deployments
    from flows.ops.startup import start_shared_state

    # beside a `ganpipe run` in the same home: MLflow's SQLite is created once
    start_shared_state(s, lambda who: typer.echo(f"waiting for another start-up in {s.home}: {who}", err=True))

    default = s.workspace / "infra" / "deployments.yaml"
    try:
        if config is None and not default.is_file():
            cfg = DeployConfig(**({"cron": cron} if cron else {}))
            cfg.validate(default)
        else:
            cfg = DeployConfig.load(default if config is None else config if config.is_absolute()
                                    else s.workspace / config, cron)
    except ConfigError as e:
        fail(str(e))
    serve_deployments(cfg)


@app.command()
def stage(name: str = typer.Argument(..., help="|".join(STAGES))):
    """Run one stage outside Prefect: the `cmd` of each dvc.yaml stage."""
    if name not in STAGES:
        fail(f"stage: unknown stage {name!r} (known: {', '.join(STAGES)})")
    s = cli_settings()
    from flows.ops.params import load_config

    try:
        cfg = load_config(s.params_file)
    except ConfigError as e:
        fail(str(e))
    lineage = {"prefect.flow_run_id": "none (dvc repro)"}
    if name == "prepare":
        from flows.stages.prepare import prepare

        ref = prepare(s, cfg)
        typer.echo(f"prepared {ref['count']} images, content {ref['content_sha256'][:12]}")
    elif name == "train":
        from flows.stages.train import train_stage

        ref = train_stage(s, cfg, lineage)
        typer.echo(f"trained {ref['run_name']} to step {ref['step']}")
    elif name == "evaluate":
        from flows.stages.evaluate import evaluate

        ev = evaluate(s, cfg)
        typer.echo(f"{ev['metric']} = {ev['value']:.4f}")
    else:
        from flows.stages.register import register
        from flows.registry.tracking import client

        reg = register(s, cfg, lineage)
        if reg.get("mlflow_run_id"):
            client(s.mlflow_uri).set_terminated(reg["mlflow_run_id"], "FINISHED")
        typer.echo(f"{reg['model_name']} v{reg['version']} champion={reg['champion']}: {reg['reason']}")
