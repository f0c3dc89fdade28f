"""`ganpipe models list|compare`: the registry's versions, champion and lineage."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from flows.cli.app import fail, cli_settings, models_app


@models_app.command("list")
def models_list(name: Optional[str] = typer.Argument(None, help="registered model name (default: all)")):
    """Versions with FID, fingerprint, champion mark and lineage."""
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
                       f"steps={t.get('checkpoint.step', '?')} {t.get('promotion.decision', '')}")


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
