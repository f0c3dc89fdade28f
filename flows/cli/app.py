"""The `ganpipe` command tree and what every command shares: settings read (and the environment
configured) before any of Prefect, MLflow or Ray is imported, so imports stay inside the commands."""
from __future__ import annotations

import typer

from flows.ops.settings import SettingsError, configure_environment, load_settings

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Train, evaluate and deploy GANs: Prefect + Ray Train + FID + MLflow + DVC.")
models_app = typer.Typer(no_args_is_help=True, help="Registered models.")
app.add_typer(models_app, name="models")
dataset_app = typer.Typer(no_args_is_help=True, help="Datasets: add (validated, DVC-versioned, catalogued), list, show.")
app.add_typer(dataset_app, name="dataset")
services_app = typer.Typer(no_args_is_help=True, help="The real service stack on 127.0.0.1: Prefect server, MLflow "
                                                      "server, S3-compatible store, Ray head + worker.")
app.add_typer(services_app, name="services")


def cli_settings():
    try:
        s = load_settings()
    except SettingsError as e:
        raise typer.BadParameter(str(e)) from e
    configure_environment(s)
    return s


def fail(msg: str) -> None:
    typer.secho(f"error: {msg}", fg="red", err=True)
    raise typer.Exit(2)
