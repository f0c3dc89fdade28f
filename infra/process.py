"""Long-running server processes: started detached in their own process group, with a pid file and a
log under the services folder, health-checked, and stopped by signalling the whole group (a Ray node
or a multi-worker server is a tree of processes; killing only the parent would orphan the rest)."""
from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Callable


class ServiceError(RuntimeError):
    pass


def pid_of(pid_file: Path) -> int | None:
    """The pid in the file if that process is still alive, else None (a stale file is not a service)."""
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    if _reap(pid):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def start(argv: list[str], env: dict[str, str], log: Path, pid_file: Path, cwd: Path) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {argv[0]}\n".encode())
        out.flush()
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    pid_file.write_text(str(proc.pid))
    return proc.pid


def stop(pid_file: Path, grace_s: float = 20.0) -> bool:
    """SIGTERM the group, wait, then SIGKILL what is left. False when nothing was running."""
    return stop_all([(pid_file, grace_s)])[0]


def stop_all(services: list[tuple[Path, float]]) -> list[bool]:
    """stop() for several groups at once, (pid file, grace) each: all are sent SIGTERM first, so their
    shutdowns (~2 s each, measured) overlap. One bool per group: False when nothing was running."""
    pids = [pid_of(pid_file) for pid_file, _ in services]
    t0 = time.time()
    for pid in pids:
        if pid is not None:
            _signal_group(pid, signal.SIGTERM)
    for pid, (pid_file, grace_s) in zip(pids, services):
        if pid is not None:
            while time.time() < t0 + grace_s and _group_alive(pid):
                time.sleep(0.2)
            if _group_alive(pid):
                _signal_group(pid, signal.SIGKILL)
                killed = time.time()  # delivered asynchronously: gone (and reaped, if ours) soon after
                while time.time() < killed + 5 and _group_alive(pid):
                    time.sleep(0.05)
            _reap(pid)
        pid_file.unlink(missing_ok=True)
    return [pid is not None for pid in pids]


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # start_new_session made the service its own group leader
    except ProcessLookupError:
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    _reap(pgid)
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _reap(pid: int) -> bool:
    """Collect a child this process started if it has exited (else it lingers as a zombie that
    still answers signals). True when it was reaped, i.e. it is dead."""
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    except ChildProcessError:
        return False


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return 200 <= r.status < 300
    except OSError:
        return False


def wait_healthy(name: str, check: Callable[[], bool], pid_file: Path, log: Path, timeout_s: float,
                 since: float | None = None) -> float:
    """Poll `check` until it passes; fail fast if the process died. Returns the seconds it took since
    `since` (its start, default now)."""
    t0 = time.time() if since is None else since
    while time.time() - t0 < timeout_s:
        if check():
            return time.time() - t0
        if pid_of(pid_file) is None:
            raise ServiceError(f"{name}: exited while starting; last lines of {log}:\n{tail(log)}")
        time.sleep(0.5)
    raise ServiceError(f"{name}: not healthy after {timeout_s:.0f} s; see {log}:\n{tail(log)}")


def tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"
