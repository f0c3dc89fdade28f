"""The soak: N pipeline runs triggered back to back through the Prefect server (`ganpipe serve` on the
`ganpipe services` stack, in a scratch workspace with its own GANPIPE_HOME and free ports). Measured
after a warm-up run and again after the N runs: processes, open file descriptors, listening TCP ports
and resident memory of every service's process tree and of serve's; every run must complete; the
growth must stay within BOUND; after serve is stopped and `ganpipe services down`, no process of this
stack (Ray, MLflow, the S3 store, Prefect) may remain and none of its ports may still listen.

    .venv/bin/python drills/soak.py [N] [--minutes M]   # default 20 runs; tests/test_soak.py runs N=1

--minutes: trigger no new run after M minutes of runs (a loaded machine); fewer than N runs is a failure,
but the measurements, teardown and orphan check still happen. SIGTERM tears the stack down the same way.

Prints each run and each check, a before/after table and a closing `N passed, N failed` line; exits
non-zero on any failure. The scratch folder is removed after a clean pass and kept (and named) otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from s3server import free_port  # noqa: E402  (the tests' helpers: the same workspace, env and ports)
from workspace import BIN, env_for, make_workspace  # noqa: E402
from proc_figures import Figures, Proc, listening, processes, read_proc, settled  # noqa: E402  (this folder)

DEPLOYMENT = "ganpipe-pipeline/on-demand"
RUN = {"steps": 20, "fid_n": 200}  # test size; each run gets its own train.seed, so each one trains
# Growth allowed from the baseline (after one warm-up run, the stack settled) to after the N runs. A leak
# grows with the number of runs; these bounds do not, so 20 runs leaking one of anything per run fail.
BOUND = {"processes": 0, "fds": 16, "ports": 0, "rss_pct": 20.0}
# Ray's log monitor (one per node) keeps each worker's .out/.err open, dead workers' too, until it holds
# RAY_LOG_MONITOR_MAX_OPEN_FILES of them, then closes them all and moves the dead ones to logs/old/:
# every run's new workers add files up to that cap. Counted apart from the fds above, bounded by the cap.
RAY_LOG_CAP = int(os.environ.get("RAY_LOG_MONITOR_MAX_OPEN_FILES", "200"))
# a process of the stack by name, wherever it runs (Ray's workers are named ray::...)
STACK_CMD = re.compile(r"ray|raylet|gcs_server|mlflow|moto|prefect|s3store|uvicorn|gunicorn", re.I)
FINAL = {"Completed", "Failed", "Crashed", "Cancelled"}
RUN_LIMIT_S = 3600


class Stack:
    """`ganpipe services up` + `ganpipe serve` in a scratch workspace, as tests/test_services.py runs them."""

    def __init__(self, scratch: Path):
        self.ws = make_workspace(scratch)
        self.home = self.ws / ".ganpipe"
        self.ports = {f"GANPIPE_{n}_PORT": str(free_port())
                      for n in ("PREFECT", "MLFLOW", "S3", "RAY", "RAY_DASHBOARD", "RAY_CLIENT")}
        self.base = env_for(self.ws, **self.ports, GANPIPE_RAY_NODE_CPUS="1")
        self.env = {**self.base, "GANPIPE_ENV_FILE": str(self.home / "services" / "ganpipe.env")}
        self.serve: subprocess.Popen | None = None

    def ganpipe(self, *args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "ganpipe"), *args], cwd=self.ws, env=env or self.base, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def up(self) -> None:
        r = self.ganpipe("services", "up")
        if r.returncode != 0:
            raise RuntimeError(f"services up failed:\n{r.stdout[-3000:]}{r.stderr[-3000:]}")
        print(r.stdout.rstrip())
        from flows.ops.settings import read_env_file

        self.values = read_env_file(Path(self.env["GANPIPE_ENV_FILE"]))

    def prefect_api(self, *args: str, timeout: int = 900) -> dict:
        # a plain Prefect client reads PREFECT_API_URL, not ganpipe's env file
        r = subprocess.run([sys.executable, str(ROOT / "tests" / "prefect_api.py"), *args], cwd=self.ws,
                           env={**self.env, **self.values}, capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"prefect_api {args[0]} failed:\n{r.stderr[-3000:]}")
        return json.loads(r.stdout.strip().splitlines()[-1])

    def start_serve(self) -> None:
        self.serve_log = open(self.ws / "serve.log", "w")
        self.serve = subprocess.Popen([str(BIN / "ganpipe"), "serve"], cwd=self.ws, env=self.env,
                                      stdout=self.serve_log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 180
        while len(self.prefect_api("deployments")["deployments"]) < 2:
            if self.serve.poll() is not None or time.time() > deadline:
                raise RuntimeError("serve did not publish its deployments:\n"
                                   + (self.ws / "serve.log").read_text()[-3000:])
            time.sleep(2)

    def stop_serve(self) -> None:
        if self.serve is None or self.serve.poll() is not None:
            return
        os.killpg(self.serve.pid, signal.SIGTERM)
        try:
            self.serve.wait(30)
        except subprocess.TimeoutExpired:  # measured: serve can sit on SIGTERM for over 20 s
            os.killpg(self.serve.pid, signal.SIGKILL)
            self.serve.wait(30)
        self.serve_log.close()

    def down(self) -> subprocess.CompletedProcess:
        return self.ganpipe("services", "down", timeout=300)

    def groups(self) -> dict[str, int]:
        out = {f.stem: int(f.read_text()) for f in sorted((self.home / "services").glob("*.pid"))}
        return {**out, "serve": self.serve.pid}

    def trigger(self, seed: int) -> dict:
        params = {**RUN, "overrides": [f"train.seed={seed}"]}
        out = self.prefect_api("trigger", DEPLOYMENT, json.dumps(params))
        run, t0 = out["runs"][0], time.time()
        # prefect_api waits 600 s at most; a first run (prepare) on a loaded machine takes longer
        while run["state"] not in FINAL and time.time() - t0 < RUN_LIMIT_S:
            time.sleep(5)
            run = self.prefect_api("run", run["id"])
        versions = re.findall(r"ganpipe-digits-dcgan v(\d+)", " ".join(a["data"] or "" for a in run["artifacts"]))
        return {**run, "seconds": round(out["seconds"] + time.time() - t0, 1),
                "version": versions[0] if versions else None}

    def ours(self, procs: dict[int, Proc], by_port: bool = True) -> set[int]:
        """Processes of this stack anywhere on the machine: its GANPIPE_HOME in their environment (every
        service and everything they start inherits it), its scratch path in their command line, or (unless
        by_port is off) one of its ports there. Other people's instances on this machine match none."""
        marker = f"GANPIPE_HOME={self.home}".encode()
        ports = set(self.ports.values())
        mine = set()
        for p in procs.values():
            if p.pid == os.getpid():
                continue
            if (str(self.ws) in p.cmd
                    or (by_port and any(w.rsplit(":", 1)[-1].rsplit("=", 1)[-1] in ports for w in p.cmd.split()))
                    or marker in (read_proc(f"/proc/{p.pid}/environ", "rb") or b"").split(b"\0")):
                mine.add(p.pid)
        return mine


def attribution(stack: Stack) -> tuple[int, int]:
    """Processes on the machine that look like Ray/MLflow/Prefect/S3: (this stack's, everyone else's)."""
    procs = processes()
    named = {p.pid for p in procs.values() if STACK_CMD.search(p.cmd)}
    mine = stack.ours(procs)
    return len(named & mine), len(named - mine)


def table(before: dict[str, Figures], after: dict[str, Figures]) -> None:
    print(f"  {'group':<11} {'procs':>11} {'fds':>11} {'ray logs':>11} {'ports':>11} {'RSS MiB':>15}")
    for name in before:
        b, a = before[name], after.get(name, Figures())
        print(f"  {name:<11} {b.processes:>5} ->{a.processes:>3} {b.fds:>5} ->{a.fds:>4} {b.ray_logs:>5} ->"
              f"{a.ray_logs:>4} {len(b.ports):>5} ->{len(a.ports):>3} {b.rss_kb / 1024:>7.0f} ->{a.rss_kb / 1024:>5.0f}")


def totals(m: dict[str, Figures]) -> Figures:
    return Figures(sum(f.processes for f in m.values()), sum(f.fds for f in m.values()),
                   set().union(*(f.ports for f in m.values())), sum(f.rss_kb for f in m.values()),
                   sum(f.ray_logs for f in m.values()), sum(f.log_monitors for f in m.values()))


def bounds(before: Figures, after: Figures) -> list[tuple[bool, str]]:
    rss_pct = 100.0 * (after.rss_kb - before.rss_kb) / before.rss_kb
    new_ports = sorted(after.ports - before.ports)
    return [
        (after.processes - before.processes <= BOUND["processes"],
         f"processes {before.processes} -> {after.processes} (bound +{BOUND['processes']})"),
        (after.fds - before.fds <= BOUND["fds"],
         f"open fds {before.fds} -> {after.fds} (bound +{BOUND['fds']}; Ray's log monitors' logs apart)"),
        (after.ray_logs <= RAY_LOG_CAP * max(after.log_monitors, 1),
         f"log files held by Ray's {after.log_monitors} log monitors {before.ray_logs} -> {after.ray_logs} "
         f"(bound {RAY_LOG_CAP} each, RAY_LOG_MONITOR_MAX_OPEN_FILES)"),
        (len(new_ports) <= BOUND["ports"],
         f"listening ports {len(before.ports)} -> {len(after.ports)}, new {new_ports} (bound +{BOUND['ports']})"),
        (rss_pct <= BOUND["rss_pct"], f"RSS {before.rss_kb / 1024:.0f} -> {after.rss_kb / 1024:.0f} MiB "
                                      f"({rss_pct:+.1f}%, bound +{BOUND['rss_pct']:.0f}%)"),
    ]


def leftovers(stack: Stack, limit_s: float = 30) -> tuple[list[str], list[int], float]:
    """After down: this stack's processes and listening ports still there, polled until none or limit_s."""
    t0 = time.time()
    while True:
        procs = processes()
        left = [f"{p} {procs[p].cmd[:120]}" for p in sorted(stack.ours(procs))]
        ports = sorted({p for p in listening().values() if str(p) in stack.ports.values()})
        if (not left and not ports) or time.time() - t0 > limit_s:
            return left, ports, time.time() - t0
        time.sleep(1)


def kill_leftovers(stack: Stack) -> None:
    """Never leave this stack's processes running on a shared machine, whatever failed."""
    for pid in stack.ours(processes(), by_port=False):  # the sure signs only: never someone else's
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


class Stopped(BaseException):
    pass


def _stop(signum, frame):  # SIGTERM (`timeout`, a CI runner): raise, so the stack is torn down
    signal.signal(signum, signal.SIG_IGN)  # once: a second one must not cut the teardown short
    raise Stopped(f"signal {signum}")


def soak(stack: Stack, n: int, minutes: float | None, results: list[tuple[bool, str]]) -> None:
    stack.up()
    stack.start_serve()
    warm = stack.trigger(seed=1000)  # first run: imports, compiled code, the first model version
    print(f"warm-up run: {warm['state']} in {warm['seconds']} s (v{warm['version']})")
    results.append((warm["state"] == "Completed", f"warm-up run {warm['state']}"))
    before = settled(stack.groups())
    mine, others = attribution(stack)
    print(f"baseline: {mine} stack-named processes are this stack's, {others} are other people's (not counted)")
    table(before, before)
    t0, done = time.time(), 0
    for i in range(1, n + 1):
        if minutes is not None and time.time() - t0 > 60 * minutes:
            break
        r = stack.trigger(seed=i)
        ok = r["state"] == "Completed" and r["version"] is not None
        results.append((ok, f"run {i:>2}/{n} seed={i:<3} {r['state']:<10} {r['seconds']:>6.1f} s  v{r['version']}  "
                            f"{'>'.join(s for s in r['history'])}"))
        print(f"{'PASSED' if ok else 'FAILED':7s} {results[-1][1]}", flush=True)
        done = i
    print(f"{done} runs in {time.time() - t0:.0f} s")
    if done < n:
        results.append((False, f"only {done} of {n} runs within --minutes {minutes}"))
        print(f"FAILED  {results[-1][1]}")
    after = settled(stack.groups())
    table(before, after)
    mine_after, others_after = attribution(stack)
    print(f"after: {mine_after} stack-named processes are this stack's ({mine} before), {others_after} others'")
    for ok, what in bounds(totals(before), totals(after)):
        results.append((ok, what))
        print(f"{'PASSED' if ok else 'FAILED':7s} {what}")


def main(n: int, minutes: float | None = None) -> int:
    sys.stdout.reconfigure(line_buffering=True)  # progress shows as it happens when piped to a file
    signal.signal(signal.SIGTERM, _stop)
    scratch = Path(tempfile.mkdtemp(prefix="ganpipe-soak-"))
    stack, results, t0 = Stack(scratch), [], time.time()
    print(f"scratch workspace {stack.ws}; {n} runs of {RUN} on {DEPLOYMENT}")
    try:
        soak(stack, n, minutes, results)
    except (Exception, Stopped) as e:  # a failure to start is a failed soak, reported like the rest
        results.append((False, f"soak stopped: {e}"))
        print(f"FAILED  {results[-1][1]}")
    finally:
        stack.stop_serve()
        down = stack.down()
        results.append((down.returncode == 0, f"services down: rc {down.returncode} {down.stderr[-500:]}".strip()))
        left, ports, waited = leftovers(stack)
        results.append((not left, f"no process of this stack left after down ({len(left)} left, "
                                  f"checked for {waited:.0f} s)" + "".join(f"\n    {x}" for x in left)))
        results.append((not ports, f"none of this stack's ports listening after down {ports}"))
        for ok, what in results[-3:]:
            print(f"{'PASSED' if ok else 'FAILED':7s} {what}")
        kill_leftovers(stack)
    failed = sum(not ok for ok, _ in results)
    print(f"{time.time() - t0:.0f} s in all")
    if failed:
        print(f"kept for inspection: {scratch} (serve.log, .ganpipe/services/*.log)")
    else:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="N pipeline runs back to back through `ganpipe serve`, measured")
    ap.add_argument("n", nargs="?", type=int, default=20)
    ap.add_argument("--minutes", type=float, default=None, help="trigger no new run after this many minutes")
    args = ap.parse_args()
    sys.exit(main(args.n, args.minutes))
