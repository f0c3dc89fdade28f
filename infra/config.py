"""Settings of the local service stack, read once from the environment at the edge."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServicesConfig:
    home: Path  # GANPIPE_HOME; everything lives under home/services
    prefect_port: int = 4200
    mlflow_port: int = 5000
    s3_port: int = 9000
    ray_port: int = 6379
    ray_dashboard_port: int = 8265
    ray_client_port: int = 10001
    ray_node_cpus: int = 1  # per raylet: a head and one worker node share this machine
    bucket: str = "ganpipe"
    mlflow_backend_uri: str = ""  # empty: SQLite under services/mlflow; postgresql://... supported
    s3_endpoint: str = ""  # empty: start the local store (services/s3-data); else use this one (MinIO, S3) as is
    mlflow_sqlite: str = "warn"  # GANPIPE_MLFLOW_SQLITE: warn | refuse when the MLflow backend is SQLite

    @property
    def root(self) -> Path:
        return self.home / "services"

    @property
    def s3_data(self) -> Path:
        """The local S3 store's objects, one file each: they outlive the store process."""
        return self.root / "s3-data"

    @property
    def env_file(self) -> Path:
        return self.root / "ganpipe.env"

    @property
    def backend_uri(self) -> str:
        return self.mlflow_backend_uri or f"sqlite:///{self.root / 'mlflow' / 'mlflow.db'}"

    @property
    def endpoint(self) -> str:
        return self.s3_endpoint or f"http://127.0.0.1:{self.s3_port}"

    @classmethod
    def from_env(cls, home: Path, env: dict[str, str] | None = None) -> "ServicesConfig":
        env = dict(os.environ if env is None else env)

        def port(name: str, default: int) -> int:
            raw = env.get(name, str(default))
            if not raw.isdigit() or not 0 < int(raw) < 65536:
                raise ValueError(f"{name}: expected a TCP port (1-65535), got {raw!r}")
            return int(raw)

        cpus = env.get("GANPIPE_RAY_NODE_CPUS", str(max(1, (os.cpu_count() or 2) // 2)))
        if not cpus.isdigit() or int(cpus) < 1:
            raise ValueError(f"GANPIPE_RAY_NODE_CPUS: expected a positive integer, got {cpus!r}")
        sqlite = env.get("GANPIPE_MLFLOW_SQLITE", "warn")
        if sqlite not in ("warn", "refuse"):
            raise ValueError(f"GANPIPE_MLFLOW_SQLITE: expected warn or refuse, got {sqlite!r}")
        return cls(home=home, prefect_port=port("GANPIPE_PREFECT_PORT", 4200),
                   mlflow_port=port("GANPIPE_MLFLOW_PORT", 5000), s3_port=port("GANPIPE_S3_PORT", 9000),
                   ray_port=port("GANPIPE_RAY_PORT", 6379), ray_dashboard_port=port("GANPIPE_RAY_DASHBOARD_PORT", 8265),
                   ray_client_port=port("GANPIPE_RAY_CLIENT_PORT", 10001), ray_node_cpus=int(cpus),
                   bucket=env.get("GANPIPE_BUCKET", "ganpipe"),
                   mlflow_backend_uri=env.get("GANPIPE_MLFLOW_BACKEND_URI", ""),
                   s3_endpoint=env.get("GANPIPE_S3_ENDPOINT", ""), mlflow_sqlite=sqlite)
