"""The `ganpipe` command, one module per command group; importing each registers its commands."""
from __future__ import annotations

import gc
import sys

import typer

from flows.cli import pipeline  # noqa: F401  (first: run, serve and stage head the help)
from flows.cli import sampling, images, models, datasets, services  # noqa: F401  (register their commands)
from flows.cli import runs  # noqa: F401  (ganpipe runs)
from flows.cli import deploy  # noqa: F401  (ganpipe deploy)
from flows.cli import provenance  # noqa: F401  (ganpipe provenance)
from flows.cli import encode  # noqa: F401  (ganpipe encode)
from flows.cli.app import app
from gan_core.config import ConfigError


def main() -> None:
    try:
        app()
    except ConfigError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        sys.exit(2)
    finally:
        # The interpreter's last garbage collections, with torch, MLflow, Prefect and Ray loaded, took
        # 2.4 s after a `ganpipe run` (measured); frozen objects are skipped: 0.2 s. atexit handlers
        # still run and threads are still joined; only objects in reference cycles stay unfreed.
        gc.freeze()


if __name__ == "__main__":
    main()
