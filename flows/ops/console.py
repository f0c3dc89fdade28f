"""What `ganpipe run` shows on the terminal: a line as each stage starts and ends, a progress bar while
training (and a count while evaluating), the final summary, errors with their cause. Everything else
(Prefect's and Ray's own lines, DVC's, warnings, C++ logs of Ray's core worker) goes to a log file under
GANPIPE_HOME/logs/: the process's stdout and stderr descriptors are pointed at that file, so even output
written below Python (and by child processes such as Ray's daemons) lands there, and the console writes
to duplicates of the original descriptors. Without a TTY (CI) there is no bar, only a plain progress line
every quarter, and the summary is printed all the same. Pure stdlib: no Ray or Prefect here.
"""
from __future__ import annotations

import datetime as dt
import os
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, TextIO

STAGES = ("prepare", "train", "evaluate", "register")
REDRAW_S = 0.2  # a TTY bar is redrawn at most this often (evaluation counts come per batch)
PLAIN_EVERY = 0.25  # without a TTY: one progress line per quarter of the work


def duration(seconds: float) -> str:
    """1m12s, 45s, 2h03m: short enough for a bar, exact enough for a stage line."""
    s = int(round(max(seconds, 0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


@dataclass
class Progress:
    """The newest training report from rank 0 (see flows/ops/progress.py for how it arrives)."""
    step: int = 0
    total: int = 0
    images_per_s: float = 0.0
    steps_per_s: float = 0.0
    losses: dict[str, float] = field(default_factory=dict)
    monitor: dict[str, float] = field(default_factory=dict)
    monitor_step: int = 0

    def update(self, item: dict) -> None:
        """Fold in one report: a training window (step, rates, losses) or a monitor score."""
        if "monitor" in item:
            self.monitor, self.monitor_step = item["monitor"], item["step"]
            return
        self.step, self.total = item["step"], item["total"]
        self.images_per_s, self.steps_per_s = item.get("images_per_s", 0.0), item.get("steps_per_s", 0.0)
        self.losses = {k: v for k, v in item.get("metrics", {}).items() if k.startswith("loss")}

    def eta(self) -> float | None:
        return (self.total - self.step) / self.steps_per_s if self.steps_per_s > 0 and self.total else None


def monitor_text(monitor: dict[str, float], step: int) -> str:
    """The monitor's headline number: its FID if it has one (fid_500), else its first metric."""
    if not monitor:
        return ""
    key = next((k for k in sorted(monitor) if k.startswith("fid") and not k.endswith("_std")), sorted(monitor)[0])
    return f"{key} {monitor[key]:.2f} @{step}"


def bar_line(p: Progress, width: int = 24) -> str:
    """One line: bar, step/total, images/s, ETA, last losses, last monitor score."""
    frac = p.step / p.total if p.total else 0.0
    filled = int(round(frac * width))
    eta = p.eta()
    parts = [f"[{'#' * filled}{'-' * (width - filled)}] {p.step}/{p.total} {frac:4.0%}",
             f"{p.images_per_s:,.0f} img/s", f"ETA {duration(eta) if eta is not None else '?'}"]
    if p.losses:
        parts.append(" ".join(f"{k} {v:.3f}" for k, v in sorted(p.losses.items())))
    if m := monitor_text(p.monitor, p.monitor_step):
        parts.append(m)
    return "  ".join(parts)


class Console:
    """Stage lines, one redrawn progress line on a TTY (plain quarterly lines without one), and the
    final output. `out` and `err` are where the user sees things; `log` names the log file, if any."""

    def __init__(self, out: TextIO, err: TextIO, tty: bool, log: Path | None = None, width: int = 100):
        self.out, self.err, self.tty, self.log, self.width = out, err, tty, log, width
        self.lock = threading.Lock()  # the progress thread and the stage hooks both write
        self.started: dict[str, float] = {}
        self.attempts: dict[str, int] = {}
        self.bar_shown = False
        self.drawn_at = 0.0
        self.key: str | None = None  # the work the plain (no TTY) lines count quarters of
        self.quarter = -1

    # ---- stage lines --------------------------------------------------------------------------
    def stage_started(self, name: str) -> None:
        retry = self.attempts.get(name, 0)  # a retried task (evaluate) starts again
        self.attempts[name] = retry + 1
        self.started[name] = time.monotonic()
        again = f" (retry {retry})" if retry else ""
        self._line(f"{self._tag(name)} {name}{again} ...")

    def stage_ended(self, name: str, ok: bool, why: str = "") -> None:
        took = duration(time.monotonic() - self.started.get(name, time.monotonic()))
        self._line(f"{self._tag(name)} {name} done in {took}" if ok else
                   f"{self._tag(name)} {name} failed after {took}{': ' + why if why else ''}")

    @staticmethod
    def _tag(name: str) -> str:
        return f"[{STAGES.index(name) + 1}/{len(STAGES)}]" if name in STAGES else f"[{name}]"

    # ---- progress -----------------------------------------------------------------------------
    def training(self, p: Progress) -> None:
        self._progress("train", bar_line(p), p.step, p.total)

    def count(self, what: str, done: int, total: int) -> None:
        """A count of items processed (evaluation samples, dataset images)."""
        self._progress(what, f"{what}: {done:,}/{total:,}", done, total)

    def _progress(self, key: str, text: str, done: int, total: int) -> None:
        """TTY: redraw the line in place (throttled; the last step always drawn; the next line printed
        ends it). No TTY: a line when another quarter of `key`'s work is done."""
        with self.lock:
            if self.tty:
                now = time.monotonic()
                if done < total and now - self.drawn_at < REDRAW_S:
                    return
                self.drawn_at = now
                self.err.write("\r\x1b[K  " + text[: self.width - 3])
                self.err.flush()
                self.bar_shown = True
                return
            if key != self.key:
                self.key, self.quarter = key, -1
            quarter = min(int(done / total / PLAIN_EVERY), int(1 / PLAIN_EVERY)) if total else 0
            if quarter > self.quarter:
                self.quarter = quarter
                self.err.write(f"  {text}\n")
                self.err.flush()

    def finish(self) -> None:
        """End a drawn bar's line (the next output starts on a fresh one)."""
        with self.lock:
            self._end_bar()

    def _end_bar(self) -> None:
        if self.bar_shown:
            self.err.write("\n")
            self.bar_shown = False

    # ---- everything else ----------------------------------------------------------------------
    def _line(self, text: str) -> None:
        with self.lock:
            self._end_bar()
            self.key = None
            self.err.write(text + "\n")
            self.err.flush()

    def note(self, text: str) -> None:
        """An informational line on the console (the log file's path, a wait)."""
        self._line(text)

    def error(self, text: str) -> None:
        """An error with its cause: red on a TTY, on stderr."""
        self._line(f"\x1b[31m{text}\x1b[0m" if self.tty else text)

    def echo(self, text: str = "") -> None:
        """Results: the final summary, on stdout."""
        with self.lock:
            self._end_bar()
            self.err.flush()
            self.out.write(text + "\n")
            self.out.flush()


_active: Console | None = None


def active() -> Console | None:
    """The console of this `ganpipe run`, or None (served deployments, `dvc repro`, library use)."""
    return _active


def activate(console: Console | None) -> None:
    global _active
    _active = console


def stage_hooks(name: str) -> dict:
    """Prefect state hooks for a stage's @task: its start and end lines on the active console.
    Prefect calls a hook as fn(task, task_run, state) and logs (never raises) what a hook raises."""
    def running(task, task_run, state) -> None:
        if (c := active()) is not None:
            c.stage_started(name)

    def completed(task, task_run, state) -> None:
        if (c := active()) is not None:
            c.stage_ended(name, True)

    def failed(task, task_run, state) -> None:
        if (c := active()) is not None:
            c.stage_ended(name, False, (state.message or "").splitlines()[0][:200] if state.message else "")

    return {"on_running": [running], "on_completion": [completed], "on_failure": [failed]}


def columns(fd: int) -> int:
    try:
        return os.get_terminal_size(fd).columns or 100
    except OSError:  # a terminal that reports no size
        return 100


def terminal_console() -> Console | None:
    """For the short commands (`evaluate`, `dataset add`): progress on a TTY only, nothing redirected,
    and nothing at all when piped (their output is often parsed)."""
    if not sys.stderr.isatty():
        return None
    console = Console(sys.stdout, sys.stderr, tty=True, width=columns(sys.stderr.fileno()))
    activate(console)
    return console


@contextmanager
def counted(module, total: int, what: str = "generated"):
    """While inside: every forward pass of `module` (a torch module; a forward hook, so the code
    that calls it is unchanged) adds its batch to a count on the active console. Nothing without one."""
    if active() is None or not hasattr(module, "register_forward_hook"):
        yield
        return
    done = 0

    def hook(_module, _inputs, output) -> None:
        nonlocal done
        first = output[0] if isinstance(output, (tuple, list)) else output
        done = min(total, done + int(first.shape[0]))
        if (c := active()) is not None:
            c.count(what, done, total)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
        if (c := active()) is not None:
            c.finish()


def say(text: str) -> None:
    """A line on the active console, if any (the phases of a long command)."""
    if (c := active()) is not None:
        c.note(text)


def counting(items: Iterable, total: int, what: str) -> Iterator:
    """`items` unchanged, counted on the active console as they are consumed."""
    c = active()
    for i, item in enumerate(items, 1):
        yield item
        if c is not None:
            c.count(what, min(i, total), total)
    if c is not None:
        c.finish()


def log_path(home: Path) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    d = home / "logs"
    d.mkdir(parents=True, exist_ok=True)
    path, n = d / f"run-{stamp}.log", 1
    while path.exists():  # two runs started in the same second keep separate files
        path, n = d / f"run-{stamp}-{n}.log", n + 1
    return path


def open_console(home: Path, verbose: bool) -> Console:
    """The run's console, made active. Unless verbose, from now on the process's stdout and stderr
    (descriptors 1 and 2, so child processes and C++ logs too) append to a fresh log file; the console
    keeps the original terminal. Not undone: output at interpreter exit (Prefect's server stopping)
    belongs in the log too. Verbose: everything stays on the terminal, and the bar is plain lines
    (Prefect's lines would tear a redrawn bar)."""
    if verbose:
        console = Console(sys.stdout, sys.stderr, tty=False)
        activate(console)
        return console
    path = log_path(home)
    os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # a log file: no colour codes around Ray's worker lines
    sys.stdout.flush()
    sys.stderr.flush()
    out, err = os.fdopen(os.dup(1), "w", buffering=1), os.fdopen(os.dup(2), "w", buffering=1)
    tty = err.isatty()
    width = columns(err.fileno()) if tty else 100
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    console = Console(out, err, tty=tty, log=path, width=width)
    activate(console)
    console.note(f"log: {path}")
    return console
