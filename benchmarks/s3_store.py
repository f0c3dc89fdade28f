"""The local S3 store of `ganpipe services` (s3rver on disk, infra/s3store/) beside moto_server (in memory):
seconds from start to a created bucket, resident memory idle and after the run, and boto3 put/get
throughput for small (64 KiB) and multipart-sized (8 MiB) objects. Medians over REPEATS fresh starts.
    .venv/bin/python benchmarks/s3_store.py [REPEATS [SCALE]]   (SCALE: fraction of the object counts, default 1)
writes benchmarks/results/s3_store.{json,md}
"""
from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
from botocore.config import Config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.report import table, write_report  # noqa: E402

BIN = Path(sys.executable).parent
SIZES = (("64KiB", 64 << 10, 300), ("8MiB", 8 << 20, 12))  # (label, bytes, objects)
ENV = {**os.environ, "AWS_ACCESS_KEY_ID": "bench-key", "AWS_SECRET_ACCESS_KEY": "bench-secret-not-a-secret"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(argv: list[str], port: int, scale: float = 1.0) -> dict[str, float]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                      aws_access_key_id=ENV["AWS_ACCESS_KEY_ID"], aws_secret_access_key=ENV["AWS_SECRET_ACCESS_KEY"],
                      config=Config(retries={"max_attempts": 1}, connect_timeout=1))
    try:
        while True:  # polled: the first answered CreateBucket is "started"
            try:
                s3.create_bucket(Bucket="bench")
                break
            except Exception:
                assert proc.poll() is None and time.perf_counter() - t0 < 60, f"{argv[0]} did not start"
                time.sleep(0.02)
        out = {"start_s": time.perf_counter() - t0, "rss_idle_mb": rss_mb(proc.pid)}
        for label, size, n in SIZES:
            n = max(1, round(n * scale))
            body = os.urandom(size)
            t = time.perf_counter()
            for i in range(n):
                s3.put_object(Bucket="bench", Key=f"{label}/{i}", Body=body)
            out[f"put_{label}_MiBps"] = n * size / 2**20 / (time.perf_counter() - t)
            t = time.perf_counter()
            for i in range(n):
                assert s3.get_object(Bucket="bench", Key=f"{label}/{i}")["Body"].read() == body
            out[f"get_{label}_MiBps"] = n * size / 2**20 / (time.perf_counter() - t)
        out["rss_after_mb"] = rss_mb(proc.pid)
        return out
    finally:
        proc.terminate()
        proc.wait(30)


def main(repeats: int, scale: float = 1.0, out: Path | None = None) -> dict:
    stores = {
        "moto_server (memory)": lambda port, _: [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        "s3rver (disk, ganpipe)": lambda port, data: ["node", "--openssl-legacy-provider",
                                                      str(ROOT / "infra" / "s3store" / "server.js"), data,
                                                      "127.0.0.1", str(port)],
    }
    runs: dict[str, list[dict]] = {name: [] for name in stores}
    for _ in range(repeats):
        for name, argv in stores.items():  # interleaved: both see the same background load
            data = tempfile.mkdtemp(prefix="s3bench-")
            try:
                port = free_port()
                runs[name].append(measure(argv(port, data), port, scale))
            finally:
                shutil.rmtree(data, ignore_errors=True)
    result = {name: {k: round(statistics.median(r[k] for r in rs), 2) for k in rs[0]} for name, rs in runs.items()}
    cols = list(next(iter(result.values())))
    md = ["# Local S3 store: s3rver (disk) vs moto_server (memory), medians", ""]
    md += table(["store"] + cols, [[name] + [v[c] for c in cols] for name, v in result.items()])
    write_report("s3_store", result, md, out or ROOT / "benchmarks" / "results")
    return result


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3, float(sys.argv[2]) if len(sys.argv) > 2 else 1.0)
