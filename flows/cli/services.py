"""`ganpipe services up|down|status`: the real service stack on 127.0.0.1."""
from __future__ import annotations

import json

import typer

from flows.cli.app import fail, services_app
from flows.ops.settings import SettingsError, load_settings


def _services_config():
    from infra.config import ServicesConfig

    try:
        s = load_settings()
        return ServicesConfig.from_env(s.home)
    except (SettingsError, ValueError) as e:
        fail(f"services: {e}")


@services_app.command("up")
def services_up():
    """Start (or keep) every service, each health-checked; write GANPIPE_HOME/services/ganpipe.env."""
    from infra.process import ServiceError
    from infra.services import up

    cfg = _services_config()
    try:
        env_file = up(cfg, typer.echo)
    except ServiceError as e:
        fail(f"services up: {e}")
    typer.echo(f"\nsettings: {env_file}\nuse them:  export GANPIPE_ENV_FILE={env_file}")


@services_app.command("down")
def services_down():
    """Stop every service (SIGTERM to its process group, SIGKILL after a grace period)."""
    from infra.services import down

    down(_services_config(), typer.echo)


@services_app.command("status")
def services_status(json_out: bool = typer.Option(False, "--json", help="machine-readable")):
    """Each service: healthy | unhealthy | stopped, with pid, endpoint and log. Exit 1 unless all healthy."""
    from infra.services import status

    rows = status(_services_config())
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
    else:
        for r in rows:
            typer.echo(f"{r['name']:<11} {r['state']:<9} pid={r['pid'] or '-':<8} {r['endpoint']}  log {r['log']}")
    if not all(r["state"] == "healthy" for r in rows):
        raise typer.Exit(1)
