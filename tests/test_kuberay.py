"""infra/kuberay: the manifests parse and agree with each other, the image and the pipeline's own config.
No cluster here: these checks are the only validation the manifests get."""
import re
import shlex
from pathlib import Path

import pytest
import ray
import yaml

from flows.ops.params import load_config

ROOT = Path(__file__).resolve().parents[1]
KUBERAY = ROOT / "infra" / "kuberay"
ENV_NAMES = {"MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "GANPIPE_RAY_STORAGE",
             "GANPIPE_WORKSPACE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
SECRET_ENV = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
SECRETISH = re.compile(r"SECRET|PASSWORD|TOKEN|KEY|CREDENTIAL", re.I)


def docs(name: str) -> dict[str, dict]:
    """kind -> document (one of each kind per file)."""
    loaded = [d for d in yaml.safe_load_all((KUBERAY / name).read_text()) if d]
    by_kind = {d["kind"]: d for d in loaded}
    assert len(by_kind) == len(loaded), f"{name}: one document per kind expected"
    return by_kind


def cluster_specs() -> dict[str, dict]:
    return {"raycluster.yaml": docs("raycluster.yaml")["RayCluster"]["spec"],
            "rayjob.yaml": docs("rayjob.yaml")["RayJob"]["spec"]["rayClusterSpec"]}


def pods(spec: dict) -> list[dict]:
    return [spec["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in spec["workerGroupSpecs"]]


def gpu_group(spec: dict) -> dict:
    (group,) = [g for g in spec["workerGroupSpecs"] if g["groupName"] == "gpu"]
    return group


SPECS = pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])


def test_kinds_and_api_versions():
    assert {k: d["apiVersion"] for k, d in docs("raycluster.yaml").items()} == {"RayCluster": "ray.io/v1"}
    assert {k: d["apiVersion"] for k, d in docs("rayjob.yaml").items()} == {"RayJob": "ray.io/v1"}
    assert docs("raycluster.yaml")["RayCluster"]["metadata"]["name"] == "ganpipe"
    job = docs("rayjob.yaml")["RayJob"]
    assert job["metadata"]["name"] == "ganpipe-train"
    assert job["spec"]["submissionMode"] == "K8sJobMode" and job["spec"]["shutdownAfterJobFinishes"] is True
    assert job["spec"]["ttlSecondsAfterFinished"] > 0 and job["spec"]["activeDeadlineSeconds"] > 0


def test_job_is_the_cluster_spec():
    # the self-contained job must not drift from the long-lived cluster (image, env, GPUs, mounts)
    specs = cluster_specs()
    assert specs["rayjob.yaml"] == specs["raycluster.yaml"]


@SPECS
def test_ray_version_is_the_installed_one(name):
    assert cluster_specs()[name]["rayVersion"] == ray.__version__


@SPECS
def test_head_takes_no_training(name):
    head = cluster_specs()[name]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    for c in head["template"]["spec"]["containers"]:
        assert not any("gpu" in r for part in c["resources"].values() for r in part)


@SPECS
def test_env_wiring_in_every_container(name):
    for pod in pods(cluster_specs()[name]):
        for c in pod["containers"]:
            env = {e["name"]: e for e in c["env"]}
            assert ENV_NAMES <= set(env), f"{name}/{c['name']}: missing {ENV_NAMES - set(env)}"
            for key in SECRET_ENV:
                assert "value" not in env[key], f"{name}/{c['name']}: {key} has a literal value"
                assert env[key]["valueFrom"]["secretKeyRef"] == {"name": "ganpipe-s3", "key": key}
            # S3, not a pod-local folder: workers on every node write and restore the checkpoints there
            assert env["GANPIPE_RAY_STORAGE"]["value"] == "s3://ganpipe/ray"
            assert env["GANPIPE_WORKSPACE"]["value"] == "/workspace"


@SPECS
def test_no_literal_secret_anywhere(name):
    def walk(node):
        if isinstance(node, dict):
            if "name" in node and "value" in node and SECRETISH.search(str(node["name"])):
                pytest.fail(f"{name}: {node['name']} has a literal value; use valueFrom.secretKeyRef")
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    for d in yaml.safe_load_all((KUBERAY / name).read_text()):
        walk(d)


@SPECS
def test_gpu_workers(name):
    group = gpu_group(cluster_specs()[name])
    pod = group["template"]["spec"]
    (c,) = pod["containers"]
    gpus = c["resources"]["limits"]["nvidia.com/gpu"]
    assert gpus == c["resources"]["requests"]["nvidia.com/gpu"] == int(group["rayStartParams"]["num-gpus"]) > 0
    for kind in ("cpu", "memory"):
        assert c["resources"]["requests"][kind] == c["resources"]["limits"][kind]
    volumes = {v["name"]: v for v in pod["volumes"]}
    (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == "/dev/shm"]
    assert volumes[mount["name"]]["emptyDir"]["medium"] == "Memory"  # NCCL's shared-memory transport
    assert pod["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])


def test_one_image_everywhere():
    images = {c["image"] for spec in cluster_specs().values() for pod in pods(spec) for c in pod["containers"]}
    assert len(images) == 1 and not images.pop().endswith(":latest")


def test_job_entrypoint_matches_the_gpus_and_the_params():
    job = docs("rayjob.yaml")["RayJob"]["spec"]
    argv = shlex.split(job["entrypoint"])
    assert argv[:2] == ["ganpipe", "run"]
    overrides = argv[2:]
    assert "train.use_gpu=true" in overrides
    group = gpu_group(job["rayClusterSpec"])
    gpus = group["replicas"] * int(group["rayStartParams"]["num-gpus"])
    assert group["minReplicas"] == group["replicas"] == group["maxReplicas"]  # DDP wants a fixed world size
    # the project's own parser: an unknown key (train.num_worker=8) or a batch size that does not split
    # over the workers fails here, as it would on the cluster, before any GPU is held
    cfg = load_config(ROOT / "params.yaml", overrides, write=False)
    assert cfg.train.num_workers == gpus and cfg.train.use_gpu
    assert cfg.train.batch_size % cfg.train.num_workers == 0


def test_dockerfile_pins_torch_and_uses_the_constraints():
    text = (KUBERAY / "Dockerfile").read_text()
    assert re.search(r"pip install [^\n]*torch==2\.13\.0[^\n]*--index-url \$\{?TORCH_INDEX_URL", text)
    assert re.search(r"^ARG TORCH_INDEX_URL=", text, re.M)
    assert re.search(r"pip install [^\n]*-c constraints-cpu\.txt \.", text)
    assert re.search(r"^WORKDIR /workspace$", text, re.M)
    assert "torch==2.13.0" in (ROOT / "constraints-cpu.txt").read_text()  # what the pin must agree with
