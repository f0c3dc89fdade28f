"""`ganpipe models list|compare`: the registry's versions, champion and lineage."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from flows.cli.app import fail, cli_settings, models_app


@models_app.command("list")
def models_list(name: Optional[str] = typer.Argument(None, help="registered model name (default: all)")):
    """Versions with FID, fingerprint, champion mark (*), lineage and manual moves."""
    s = cli_settings()
    from flows.registry.tracking import CHAMPION, client

    c = client(s.mlflow_uri)
    names = [name] if name else [m.name for m in c.search_registered_models()]
    for n_ in names:
        champ = c.get_registered_model(n_).aliases.get(CHAMPION)
        typer.echo(n_)
        for v in sorted(c.search_model_versions(f"name='{n_}'"), key=lambda v: int(v.version)):
            t = v.tags
            mark = "*" if str(v.version) == str(champ) else " "
            typer.echo(f" {mark} v{v.version:<4} {t.get('eval.metric', '?')}={float(t.get('eval.value', t.get('eval.fid', 'nan'))):9.4f} "
                       f"fp={t.get('eval.fingerprint_id', '?')} data={t.get('dataset.content_sha256', '?')[:12]} "
                       f"steps={t.get('checkpoint.step', '?')} {t.get('promotion.decision', '')}{_manual(t)}")


def _manual(tags) -> str:
    """The last manual move onto a version, as `models list` shows it beside the gate's decision."""
    kind = tags.get("promotion.manual.kind")
    return f"; {kind} by {tags.get('promotion.manual.by', '?')} at {tags.get('promotion.manual.at', '?')}" if kind else ""


@models_app.command("compare")
def models_compare(name: Optional[str] = typer.Argument(None, help="registered model name (default: all)"),
                   chart: Path = typer.Option(Path("reports/compare.png"), help="where to write the PNG chart")):
    """Versions side by side: FID + fingerprint, dataset version, arch, key params, steps, images/s,
    champion; plus a PNG chart of FID (and throughput) per version."""
    s = cli_settings()
    from flows.registry.compare import collect, render_table, write_chart
    from flows.registry.tracking import client

    try:
        rows = collect(client(s.mlflow_uri), name)
    except ValueError as e:
        fail(f"models compare: {e}")
    typer.echo(render_table(rows))
    if rows:
        out = write_chart(rows, chart if chart.is_absolute() else s.workspace / chart)
        typer.echo(f"chart: {out}")


def _move(name: str, version: str | None, reason: str, force: bool, allow_non_private: bool = False) -> None:
    s = cli_settings()
    from flows.registry.promotion import PromotionError, move_champion
    from flows.registry.tracking import client
    from flows.stages.register import promote_lock_path

    what = "rollback" if version is None else "promote"
    try:
        move = move_champion(client(s.mlflow_uri), name, version, reason, force, promote_lock_path(s, name),
                             rollback=version is None, allow_non_private=allow_non_private)
    except PromotionError as e:
        fail(f"models {what}: {e}")
    forced = " (forced)" if move.forced else ""
    typer.echo(f"{name}: champion v{move.previous or '-'} -> v{move.version}{forced}, {move.kind} by {move.by} "
               f"at {move.at}: {move.why}")


@models_app.command("promote")
def models_promote(name: str = typer.Argument(..., help="registered model name"),
                   version: str = typer.Argument(..., help="version to make champion (2 or v2)"),
                   reason: str = typer.Option(..., "--reason", help="why; recorded on the version and in the history"),
                   force: bool = typer.Option(False, "--force", help="promote a version the gate refused or one "
                                                                     "scored under another evaluator fingerprint"),
                   allow_non_private: bool = typer.Option(False, "--allow-non-private",
                                                          help="let a model trained without differential privacy "
                                                               "replace a DP champion")):
    """Make VERSION the champion by hand, under the promotion lock; recorded (who, when, why).
    A version whose privacy epsilon exceeds GANPIPE_MAX_EPSILON is refused, even with --force."""
    _move(name, version.removeprefix("v"), reason, force, allow_non_private)


@models_app.command("rollback")
def models_rollback(name: str = typer.Argument(..., help="registered model name"),
                    reason: str = typer.Option(..., "--reason", help="why; recorded on the version and in the history"),
                    force: bool = typer.Option(False, "--force", help="roll back even to a version the checks refuse")):
    """Make the champion before the current one champion again (from the champion history)."""
    _move(name, None, reason, force)
