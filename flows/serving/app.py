"""The Serve application: an ingress deployment answering HTTP (/healthz, /v1/models,
/v1/models/{name}:generate) and one ModelHolder deployment per served registered model, each
replica following that model's champion alias (rollout.py). Requests are parsed and validated by
api.py; errors are JSON naming the field, and no bad request takes a replica down."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from dataclasses import dataclass

from ray import serve

from flows.serving import api

log = logging.getLogger("ganpipe.serving")
APP_NAME = "ganpipe"
DESCRIBE_TIMEOUT_S = 5.0  # /healthz and /v1/models answer 503 rather than wait on a replica longer


@dataclass(frozen=True)
class ServeConfig:
    names: tuple[str, ...]
    tracking_uri: str
    port: int = 8000
    replicas: int = 1
    min_replicas: int | None = None  # both set: autoscaling between them instead of `replicas`
    max_replicas: int | None = None
    max_n: int = api.MAX_N
    max_body: int = api.MAX_BODY
    poll_s: float = 2.0
    cpus: float = 1.0  # per model replica (torch runs one thread: see __init__)
    gpus: float = 0.0  # per model replica: 1 gives one replica per GPU, and batches requests
    max_batch: int = 8  # requests per forward pass on a GPU replica
    batch_wait_s: float = 0.01

    def __post_init__(self):
        def check(ok, name, why):
            if not ok:
                raise ValueError(f"{name}: {why}")
        check(self.names, "--name", "give at least one registered model name")
        check(1 <= self.port <= 65535, "--port", f"must be 1..65535, got {self.port}")
        check(self.replicas >= 1, "--replicas", f"must be >= 1, got {self.replicas}")
        check((self.min_replicas is None) == (self.max_replicas is None), "--min-replicas/--max-replicas",
              "give both (autoscaling bounds) or neither")
        if self.min_replicas is not None:
            check(0 <= self.min_replicas <= self.max_replicas and self.max_replicas >= 1,
                  "--min-replicas/--max-replicas", f"need 0 <= min <= max, max >= 1; got {self.min_replicas}, "
                  f"{self.max_replicas}")
        check(1 <= self.max_n <= 1024, "--max-n", f"must be 1..1024, got {self.max_n}")
        check(self.max_body >= 1024, "--max-body", f"must be >= 1024 bytes, got {self.max_body}")
        check(self.poll_s > 0, "--poll-s", f"must be > 0, got {self.poll_s}")


def deployment_name(model: str) -> str:
    return "model-" + re.sub(r"[^A-Za-z0-9_-]", "_", model)


# a replica whose constructor fails (no champion, a refused one) is retried twice, not for minutes
@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=8, health_check_period_s=5,
                  max_constructor_retry_count=2)
class ModelHolder:
    """Serves one registered model's champion; each replica loads and follows it on its own."""

    def __init__(self, name: str, tracking_uri: str, poll_s: float, limits: api.Limits, gpus: float = 0.0,
                 max_batch: int = 8, batch_wait_s: float = 0.01):
        import torch

        from flows.serving.rollout import Follower, Rollout

        torch.set_num_threads(1)  # replicas share the machine's cores: one thread each, no oversubscription
        self.name, self.limits = name, limits
        self.device = "cuda" if gpus > 0 and torch.cuda.is_available() else "cpu"
        self._batched.set_max_batch_size(max_batch)
        self._batched.set_batch_wait_timeout_s(batch_wait_s)
        self.rollout = Rollout(name, tracking_uri)
        log.warning("%s: %s", name, self.rollout.poll())  # no champion or a broken one: the replica fails to start
        self.follower = Follower(self.rollout, poll_s)

    def check_health(self) -> None:
        if self.rollout.current is None:
            raise RuntimeError(f"{self.name}: no version loaded")

    def describe(self) -> dict:
        return self.rollout.current.describe()

    async def generate(self, payload: dict) -> tuple[int, dict, bytes]:
        """(status, headers, body) for a generate request's JSON body."""
        served = self.rollout.current  # the version this request runs on, whatever a rollout does meanwhile
        try:
            req = api.parse_generate(payload, served.inputs, self.limits)
        except api.ApiError as e:
            return e.status, {"content-type": "application/json"}, e.to_json()
        if self.device == "cuda" and served.inputs["kind"] == "noise":
            images = await self._batched((served, req))
            return 200, *await asyncio.to_thread(encode, served, req, images)
        from flows.serving.model import generate

        # in a thread: the replica's loop keeps answering health checks and describe calls meanwhile
        return 200, *await asyncio.to_thread(lambda: encode(served, req, generate(served, req)))

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _batched(self, items: list[tuple]) -> list:
        """GPU replicas: concurrent requests for the same version share one forward pass."""
        from flows.serving.model import generate_many

        out: list = [None] * len(items)
        by_version: dict[str, list[int]] = {}
        for i, (served, _) in enumerate(items):
            by_version.setdefault(served.version, []).append(i)
        for idx in by_version.values():
            served = items[idx[0]][0]
            results = await asyncio.to_thread(generate_many, served, [items[i][1] for i in idx], self.device)
            for i, images in zip(idx, results):
                out[i] = images
        return out


def encode(served, req: api.GenerateRequest, images) -> tuple[dict, bytes]:
    """(headers, body): a PNG grid (or npz) with the same provenance chunk as every generated PNG."""
    provenance = {"model": f"models:/{served.name}/{served.version}", "served_version": served.version,
                  "model_name": served.name, "model_version": served.version, **served.lineage,
                  "fingerprint": served.fingerprint, **req.provenance()}
    headers = {"x-model-version": served.version}
    if req.format == "npz":
        return {**headers, "content-type": "application/octet-stream"}, api.encode_npz(images.numpy(), provenance)
    from gan_core.images import make_grid

    columns = 1 if served.inputs["kind"] == "image" else api.grid_columns(len(images))
    scale = 1 if served.inputs["kind"] == "image" else 4
    array = make_grid(images, columns, pad=0 if scale == 1 else 1, scale=scale)
    from flows.ops.signing import serving_key
    from gan_core.images import grid_fields

    provenance.update(grid_fields(len(images), columns))
    return {**headers, "content-type": "image/png"}, api.encode_png(array, provenance, serving_key())


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=64)
class Ingress:
    def __init__(self, holders: dict, max_body: int):
        self.holders, self.max_body = holders, max_body

    async def __call__(self, request):
        from starlette.responses import Response

        try:
            status, headers, body = await self._answer(request)
        except api.ApiError as e:
            status, headers, body = e.status, {"content-type": "application/json"}, e.to_json()
        except Exception as e:  # a replica lost mid-request, a model error: the server stays up
            log.exception("request failed")
            status, headers = 503, {"content-type": "application/json"}
            body = api.ApiError(503, "model", f"{type(e).__name__}: {e}").to_json()
        media = headers.pop("content-type")
        return Response(body, status_code=status, headers=headers, media_type=media)

    async def _answer(self, request) -> tuple[int, dict, bytes]:
        endpoint, name = api.route(request.method, request.url.path)
        if endpoint == "/healthz":
            return await self._health()
        if endpoint == "/v1/models":
            models = await self._describe_all()
            return 200, {"content-type": "application/json"}, json.dumps({"models": models}, sort_keys=True).encode()
        if name not in self.holders:
            raise api.ApiError(404, "model", f"{name!r} is not served (served: {', '.join(sorted(self.holders))})")
        api.check_length(request.headers.get("content-length"), self.max_body)
        payload = api.parse_json(await self._body(request), self.max_body)
        status, headers, body = await self.holders[name].generate.remote(payload)
        return status, dict(headers), body

    async def _body(self, request) -> bytes:
        """The body, refused as soon as it passes the limit (a chunked upload declares no length)."""
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body:
                raise api.ApiError(413, "body", f"over the limit of {self.max_body} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _describe_all(self) -> list[dict]:
        calls = [asyncio.wait_for(h.describe.remote(), DESCRIBE_TIMEOUT_S) for h in self.holders.values()]
        return list(await asyncio.gather(*calls))

    async def _health(self) -> tuple[int, dict, bytes]:
        try:
            models = await self._describe_all()
        except Exception as e:
            body = {"status": "unavailable", "error": f"{type(e).__name__}: {e}"}
            return 503, {"content-type": "application/json"}, json.dumps(body, sort_keys=True).encode()
        body = {"status": "ok", "models": {m["name"]: m["version"] for m in models}}
        return 200, {"content-type": "application/json"}, json.dumps(body, sort_keys=True).encode()


def build(cfg: ServeConfig):
    """The application: one ModelHolder deployment per name, bound into the ingress."""
    limits = api.Limits(max_n=cfg.max_n, max_body=cfg.max_body)
    holders = {}
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": cfg.tracking_uri,
           **{k: os.environ[k] for k in ("MLFLOW_DISABLE_TELEMETRY", "GANPIPE_HOME", "GANPIPE_PROVENANCE_KEY_FILE")
              if k in os.environ}}  # the key file's path, never the key itself: runtime_env shows in the dashboard
    for name in cfg.names:
        scale = ({"autoscaling_config": {"min_replicas": cfg.min_replicas, "max_replicas": cfg.max_replicas,
                                         "target_ongoing_requests": 2}}
                 if cfg.min_replicas is not None else {"num_replicas": cfg.replicas})
        holder = ModelHolder.options(
            name=deployment_name(name), **scale,
            ray_actor_options={"num_cpus": cfg.cpus, "num_gpus": cfg.gpus, "runtime_env": {"env_vars": env}})
        holders[name] = holder.bind(name, cfg.tracking_uri, cfg.poll_s, limits, cfg.gpus, cfg.max_batch,
                                    cfg.batch_wait_s)
    return Ingress.bind(holders, cfg.max_body)


def app_builder(args: dict):
    """The application from a Serve config file (`import_path: flows.serving.app:app_builder` with
    `args`): how KubeRay's RayService (infra/kuberay/rayservice.yaml) deploys it. The args are
    ServeConfig's fields; the registry is MLFLOW_TRACKING_URI of the pods."""
    fields = {k: v for k, v in dict(args).items() if k in ServeConfig.__dataclass_fields__}
    fields["names"] = tuple(fields.get("names") or ())
    fields.setdefault("tracking_uri", os.environ.get("MLFLOW_TRACKING_URI", ""))
    cfg = ServeConfig(**fields)
    if not cfg.tracking_uri:
        raise ValueError("tracking_uri: set MLFLOW_TRACKING_URI on the pods (or pass tracking_uri in args)")
    return build(cfg)
