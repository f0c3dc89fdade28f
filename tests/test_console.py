"""What `ganpipe run` shows: stage lines, a training progress bar redrawn on a TTY, plain quarterly lines
without one, the summary always; Prefect's and Ray's own lines in the log file. The fast tests render
into strings; the slow one (in test_pipeline_e2e.py) drives `ganpipe run` under a pseudo-terminal."""
import io
import os
import re

from flows.ops.console import Console, Progress, bar_line, duration, monitor_text, stage_hooks, activate
from flows.ops.progress import ProgressFeed, tee_monitor


def console(tty: bool) -> tuple[Console, io.StringIO, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    return Console(out, err, tty=tty, width=200), out, err


def report(step: int, total: int = 100, **kw) -> dict:
    return {"step": step, "total": total, "images_per_s": 1000.0, "steps_per_s": 10.0,
            "metrics": {"loss_d": 1.25, "loss_g": 0.5, "r1": 0.1}, **kw}


def test_durations_read_like_a_clock():
    assert [duration(s) for s in (0, 45.4, 72, 3600 + 180)] == ["0s", "45s", "1m12s", "1h03m"]


def test_the_bar_shows_step_rate_eta_losses_and_the_last_monitor_score():
    p = Progress()
    p.update(report(40))
    p.update({"step": 20, "monitor": {"fid_500": 12.345, "precision_500": 0.5}})
    line = bar_line(p, width=10)
    assert line.startswith("[####------] 40/100  40%")
    assert "1,000 img/s" in line and "ETA 6s" in line  # 60 steps at 10 steps/s
    assert "loss_d 1.250 loss_g 0.500" in line and "r1" not in line  # losses only
    assert line.endswith("fid_500 12.35 @20")
    assert monitor_text({"precision_50": 0.5, "recall_50": 0.4}, 7) == "precision_50 0.50 @7"  # no FID: the first


def test_on_a_tty_the_bar_is_redrawn_in_place_and_stage_lines_end_it():
    c, out, err = console(tty=True)
    c.stage_started("train")
    p = Progress()
    for step in (10, 20):
        p.update(report(step))
        c.training(p)
        c.drawn_at = 0.0  # as if REDRAW_S had passed
    p.update(report(100))
    c.training(p)
    text = err.getvalue()
    assert text.startswith("[2/4] train ...\n")
    draws = re.findall(r"\r\x1b\[K  \[[#-]+\] (\d+)/100", text)
    assert draws == ["10", "20", "100"] and not text.endswith("\n")
    p.update({"step": 100, "monitor": {"fid_100": 2.5}})  # the last monitor score comes after the last step
    c.training(p)
    c.stage_ended("train", ok=True)
    text = err.getvalue()
    assert re.search(r"100/100 100%[^\n]*fid_100 2.50 @100\n\[2/4\] train done in \d+s\n$", text)  # the bar kept
    assert out.getvalue() == ""  # progress is not a result


def test_a_tty_bar_is_throttled_but_its_last_step_always_drawn():
    c, _, err = console(tty=True)
    p = Progress()
    for step in range(1, 101):
        p.update(report(step))
        c.training(p)
    draws = re.findall(r"\] (\d+)/100", err.getvalue())
    assert draws[0] == "1" and draws[-1] == "100" and len(draws) < 10


def test_without_a_tty_progress_is_a_plain_line_per_quarter_and_no_control_codes():
    c, out, err = console(tty=False)
    c.stage_started("evaluate")
    for done in range(0, 1001, 50):
        c.count("generated", done, 1000)
    c.count("generated", 1000, 1000)  # said twice: printed once
    c.count("scored", 10, 10)  # other work counts its own quarters
    c.stage_ended("evaluate", ok=False, why="ValueError: boom")
    c.echo("fid_2000: 1.0")
    lines = err.getvalue().splitlines()
    assert "\r" not in err.getvalue() and "\x1b" not in err.getvalue()
    assert lines[0] == "[3/4] evaluate ..."
    assert lines[1:-1] == [f"  generated: {n:,}/1,000" for n in (0, 250, 500, 750, 1000)] + ["  scored: 10/10"]
    assert re.fullmatch(r"\[3/4\] evaluate failed after \d+s: ValueError: boom", lines[-1])
    assert out.getvalue() == "fid_2000: 1.0\n"  # the summary, always


def test_stage_hooks_write_to_the_active_console_and_count_retries():
    class State:
        message = "Task run encountered an exception RuntimeError: flaky\nTraceback ..."

    c, _, err = console(tty=False)
    hooks = stage_hooks("evaluate")
    activate(c)
    try:
        hooks["on_running"][0](None, None, None)
        hooks["on_running"][0](None, None, None)  # Prefect retried it
        hooks["on_failure"][0](None, None, State())
    finally:
        activate(None)
    hooks["on_running"][0](None, None, None)  # no console (a served deployment): nothing, no error
    lines = err.getvalue().splitlines()
    assert lines[:2] == ["[3/4] evaluate ...", "[3/4] evaluate (retry 1) ..."]
    assert lines[2].endswith(": Task run encountered an exception RuntimeError: flaky")


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class State:
    def __init__(self, step):
        self.step = step


def test_rank_zero_posts_at_most_every_half_second_and_always_its_last_step():
    posted, clock = [], Clock()
    feed = ProgressFeed(posted.append, total=40, clock=clock)
    for step in (10, 20, 30, 40):
        feed.on_log(State(step), {"loss_d": 1.0, "images_per_s": 500.0})
        clock.now += 0.3
    assert [i["step"] for i in posted] == [10, 30, 40]  # 20 came 0.3 s after 10
    assert abs(posted[1]["steps_per_s"] - 20 / 0.6) < 1e-6 and posted[1]["images_per_s"] == 500.0
    assert "images_per_s" not in posted[1]["metrics"]


def test_monitor_scores_reach_both_mlflow_and_the_feed():
    class Monitor:
        def __init__(self):
            self.seen = []
            self.sink = lambda step, metrics, fp: self.seen.append(step)

    posted, m = [], Monitor()
    tee_monitor(m, ProgressFeed(posted.append, total=40))
    m.sink(20, {"fid_100": 3.0}, {"id": "x"})
    assert m.seen == [20] and posted == [{"step": 20, "monitor": {"fid_100": 3.0}}]


def test_a_modules_forward_passes_are_counted_on_the_console_and_the_line_ended():
    import torch

    from flows.ops.console import counted, counting

    c, _, err = console(tty=False)
    net = torch.nn.Linear(2, 2)
    with counted(net, 10):  # no active console: nothing counted, nothing fails
        net(torch.zeros(4, 2))
    activate(c)
    try:
        with counted(net, 10, "generated"):
            for _ in range(3):
                net(torch.zeros(4, 2))  # 12 rows: the count stops at the total
        net(torch.zeros(4, 2))  # the hook is gone
        assert list(counting(iter("abcd"), 4, "checked")) == list("abcd")
    finally:
        activate(None)
    assert err.getvalue().splitlines() == ["  generated: 4/10", "  generated: 8/10", "  generated: 10/10",
                                           "  checked: 1/4", "  checked: 2/4", "  checked: 3/4", "  checked: 4/4"]
    assert not net._forward_hooks


def test_short_commands_show_no_progress_when_piped():
    from flows.ops.console import active, terminal_console

    assert terminal_console() is None and active() is None  # pytest's captured stderr is no TTY


SCRIPT = """
import os, subprocess, sys
from pathlib import Path
from flows.ops.console import open_console
con = open_console(Path(sys.argv[1]), verbose=sys.argv[2] == "1")
print("python stdout line"); print("python stderr line", file=sys.stderr)
os.write(2, b"C++ log line\\n")  # below Python, as Ray's core worker writes
subprocess.run(["echo", "child process line"], check=True)  # inherits the descriptors, as Ray's daemons do
con.note("[1/4] prepare ...")
con.echo("summary line")
"""


def _console_script(tmp_path, verbose: bool):
    import sys

    from terminal import run_in_pty

    return run_in_pty([sys.executable, "-c", SCRIPT, str(tmp_path), "1" if verbose else "0"], tmp_path,
                      dict(os.environ), timeout=60).stdout


def test_at_a_terminal_only_the_console_shows_and_the_rest_goes_to_the_log(tmp_path):
    text = _console_script(tmp_path, verbose=False)
    log = next((tmp_path / "logs").glob("run-*.log"))
    assert text.splitlines() == [f"log: {log}", "[1/4] prepare ...", "summary line"]
    assert sorted(log.read_text().splitlines()) == ["C++ log line", "child process line", "python stderr line",
                                                    "python stdout line"]


def test_verbose_keeps_everything_on_the_terminal_and_writes_no_log(tmp_path):
    text = _console_script(tmp_path, verbose=True)
    assert "C++ log line" in text and "child process line" in text and "summary line" in text
    assert not (tmp_path / "logs").exists()
