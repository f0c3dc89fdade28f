"""`ganpipe serve`: the scheduled retraining and the on-demand pipeline as Prefect deployments,
served by this process (runs execute here, in the workspace, against the configured services)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from gan_core.config import ConfigError

CONCURRENCY = 1  # per deployment: a second trigger waits (AwaitingConcurrencySlot), never runs alongside


@dataclass(frozen=True)
class DeployConfig:
    retrain_name: str = "scheduled-retrain"
    cron: str = "0 3 * * *"
    timezone: str = "UTC"
    retrain_parameters: dict = field(default_factory=dict, hash=False)
    on_demand_name: str = "on-demand"

    @classmethod
    def load(cls, path: Path, cron: str | None = None) -> "DeployConfig":
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(str(path), f"cannot read the deployments file: {e}") from e
        retrain, on_demand = data.get("retrain") or {}, data.get("on_demand") or {}
        out = cls(retrain_name=str(retrain.get("name", cls.retrain_name)), cron=cron or str(retrain.get("cron", cls.cron)),
                  timezone=str(retrain.get("timezone", cls.timezone)),
                  retrain_parameters=dict(retrain.get("parameters") or {}),
                  on_demand_name=str(on_demand.get("name", cls.on_demand_name)))
        out.validate(path)
        return out

    def validate(self, path: Path) -> None:
        from prefect.schedules import validate_cron_string

        from flows.stages.pipeline import retrain

        try:
            validate_cron_string(self.cron)
        except ValueError as e:
            raise ConfigError("retrain.cron", f"{path}: {e}") from e
        unknown = set(self.retrain_parameters) - set(retrain.parameters.properties)
        if unknown:
            raise ConfigError("retrain.parameters", f"{path}: unknown {sorted(unknown)}; the retrain flow takes "
                                                    f"{sorted(retrain.parameters.properties)}")


def deployments(cfg: DeployConfig) -> list:
    from prefect.schedules import Cron

    from flows.stages.pipeline import pipeline, retrain

    scheduled = retrain.to_deployment(
        name=cfg.retrain_name, schedule=Cron(cfg.cron, timezone=cfg.timezone), parameters=cfg.retrain_parameters,
        concurrency_limit=CONCURRENCY, tags=["ganpipe", "scheduled"],
        description="Scheduled retraining: skips when the dataset, params and code are unchanged since the "
                    "model they produced.")
    on_demand = pipeline.to_deployment(
        name=cfg.on_demand_name, concurrency_limit=CONCURRENCY, tags=["ganpipe", "on-demand"],
        description="Train, evaluate and register one model. Empty fields keep params.yaml's value.")
    return [scheduled, on_demand]


def serve(cfg: DeployConfig) -> None:
    from prefect import serve as prefect_serve

    prefect_serve(*deployments(cfg))
