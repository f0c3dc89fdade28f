"""infra/process.py's stop_all, which `ganpipe services down` uses for each wave of services: every
group is sent SIGTERM before any is waited for, a group that ignores it is killed after its grace, and
a service that is not running is reported as such."""
import os
import sys
import time

from infra.process import pid_of, start, stop_all

# A service whose shutdown lasts until its peer has been asked to stop too (or 20 s): with one stop
# after the other it would find no peer's marker, and say so.
SERVICE = r"""
import os, signal, sys, time
me, peer, ignore = sys.argv[1], sys.argv[2], sys.argv[3] == "ignore"

def on_term(*_):
    if ignore:
        return
    open(me + ".term", "w").close()
    deadline = time.time() + 20
    while peer != "-" and not os.path.exists(peer + ".term") and time.time() < deadline:
        time.sleep(0.05)
    open(me + ".saw-peer", "w").write(str(peer == "-" or os.path.exists(peer + ".term")))
    sys.exit(0)

signal.signal(signal.SIGTERM, on_term)
open(me + ".ready", "w").close()
while True:
    time.sleep(0.1)
"""


def _service(tmp_path, name: str, peer: str, mode: str = "exit"):
    me = tmp_path / name
    pid_file = tmp_path / f"{name}.pid"
    start([sys.executable, "-c", SERVICE, str(me), str(tmp_path / peer) if peer != "-" else "-", mode],
          dict(os.environ), tmp_path / f"{name}.log", pid_file, tmp_path)
    return me, pid_file


def _until_ready(*names):
    deadline = time.time() + 60
    while not all(os.path.exists(f"{n}.ready") for n in names):
        assert time.time() < deadline, f"not started: {names}"
        time.sleep(0.05)


def test_every_group_is_told_to_stop_before_any_is_waited_for(tmp_path):
    a, a_pid = _service(tmp_path, "a", "b")
    b, b_pid = _service(tmp_path, "b", "a")
    _until_ready(a, b)
    assert stop_all([(a_pid, 60.0), (b_pid, 60.0)]) == [True, True]
    assert (tmp_path / "a.saw-peer").read_text() == "True"  # a was still shutting down when b got its SIGTERM
    assert (tmp_path / "b.saw-peer").read_text() == "True"
    assert not a_pid.exists() and not b_pid.exists()


def test_a_group_that_ignores_sigterm_is_killed_after_its_grace_and_a_stopped_one_reported(tmp_path):
    stubborn, pid_file = _service(tmp_path, "stubborn", "-", "ignore")
    _until_ready(stubborn)
    pid = pid_of(pid_file)
    assert stop_all([(pid_file, 0.5), (tmp_path / "never-started.pid", 5.0)]) == [True, False]
    assert not (tmp_path / "stubborn.term").exists()  # it ignored SIGTERM: SIGKILL ended it
    assert pid_of(pid_file) is None and not pid_file.exists()
    try:
        os.kill(pid, 0)
        alive = True
    except ProcessLookupError:
        alive = False
    assert not alive
