"""Figures of process trees from /proc for the soak (drills/soak.py): processes, open file descriptors,
listening TCP ports and resident memory per tree, and a reading taken once the counts hold still."""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field

TCP_LISTEN = "0A"  # the state column of /proc/net/tcp{,6} for a listening socket


@dataclass
class Proc:
    pid: int
    ppid: int
    sid: int
    cmd: str


def read_proc(path: str, mode: str = "r") -> str | bytes | None:
    try:
        with open(path, mode) as f:
            return f.read()
    except OSError:  # gone, or not ours to read
        return None


def processes() -> dict[int, Proc]:
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        stat, cmd = read_proc(f"/proc/{d}/stat"), read_proc(f"/proc/{d}/cmdline", "rb")
        if stat is None or cmd is None:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "(comm)", which may hold spaces
        out[int(d)] = Proc(int(d), int(fields[1]), int(fields[3]),
                           cmd.replace(b"\0", b" ").decode(errors="replace").strip() or stat.split()[1])
    return out


def tree(procs: dict[int, Proc], root: int) -> set[int]:
    """The root, its descendants, and whatever else runs in its session (start_new_session made each
    service a session leader; a daemon that re-parented itself to init stays in the session)."""
    pids = {p.pid for p in procs.values() if p.sid == root} | ({root} if root in procs else set())
    grew = True
    while grew:
        kids = {p.pid for p in procs.values() if p.ppid in pids} - pids
        pids |= kids
        grew = bool(kids)
    return pids


def _fd_links(pid: int) -> list[str]:
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return []
    links = []
    for n in names:
        try:
            links.append(os.readlink(f"/proc/{pid}/fd/{n}"))
        except OSError:
            pass
    return links


def listening() -> dict[str, int]:
    """Socket inode -> port, for every listening TCP socket on the machine."""
    out = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in (read_proc(table) or "").splitlines()[1:]:
            cols = line.split()
            if cols[3] == TCP_LISTEN:
                out[cols[9]] = int(cols[1].rsplit(":", 1)[1], 16)
    return out


def rss_kb(pid: int) -> int:
    m = re.search(r"^VmRSS:\s+(\d+) kB", read_proc(f"/proc/{pid}/status") or "", re.M)
    return int(m.group(1)) if m else 0


@dataclass
class Figures:
    processes: int = 0
    fds: int = 0
    ports: set[int] = field(default_factory=set)
    rss_kb: int = 0
    ray_logs: int = 0  # log files held open by Ray's log monitors
    log_monitors: int = 0


def measure(groups: dict[str, int]) -> dict[str, Figures]:
    """Per group (service name or serve -> its root pid): processes, fds, listening ports, RSS."""
    procs, socks = processes(), listening()
    out = {}
    for name, root in groups.items():
        f = Figures()
        for pid in tree(procs, root):
            links = _fd_links(pid)
            f.processes += 1
            if "ray/_private/log_monitor.py" in procs[pid].cmd:
                logs = sum(1 for x in links if "/logs/" in x and x.endswith((".out", ".err", ".log")))
                f.ray_logs += logs
                f.log_monitors += 1
                links = [x for x in links if not ("/logs/" in x and x.endswith((".out", ".err", ".log")))]
            f.fds += len(links)
            f.ports |= {socks[m.group(1)] for m in map(re.compile(r"socket:\[(\d+)\]").match, links)
                        if m and m.group(1) in socks}
            f.rss_kb += rss_kb(pid)
        out[name] = f
    return out


def settled(groups: dict[str, int], samples: int = 3, every_s: float = 2.0, limit_s: float = 120) -> dict[str, Figures]:
    """Measure once serve is alone in its tree (the last flow run's process can outlive its Completed
    state by many seconds: seen holding 750 MiB in a baseline) and the process counts hold still for
    `samples` readings (Ray reaps idle workers a moment after a run); the last reading if never."""
    history, t0 = [], time.time()
    while True:
        m = measure(groups)
        history.append({k: v.processes for k, v in m.items()})
        if (history[-1].get("serve", 1) == 1 and len(history) >= samples
                and all(h == history[-1] for h in history[-samples:])):
            return m
        if time.time() - t0 > limit_s:
            print(f"  (process counts still moving after {limit_s:.0f} s: {history[-samples:]})")
            return m
        time.sleep(every_s)
