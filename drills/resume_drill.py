"""The resume drill: SIGKILL a Ray Train worker at several offsets after a checkpoint, REPEATS times
each, while a CPU hog competes for the cores; every kill must resume from the newest complete
checkpoint and end bit for bit equal to the uninterrupted run (the assertions of
tests/test_ray_train.py::test_a_sigkilled_worker_resumes_exactly_and_logs_each_step_once).

    .venv/bin/python drills/resume_drill.py [REPEATS] [--hogs N]   # default 4: 5 offsets x 4 = 20 kills,
                                                                   # one busy-loop process per core
Beside another load (e.g. the test suite running) `--hogs 0` keeps that load as it is.

Prints each case's outcome, how many restarts resumed from a checkpoint Ray's controller had not
recorded (the race that used to lose progress), and a closing `N passed, N failed` line; exits
non-zero on any failure.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def hog(stop) -> None:
    """Busy-loop until told to stop: a neighbour that wants a whole core."""
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def main(repeats: int, n_hogs: int) -> int:
    stop = mp.Event()
    hogs = [mp.Process(target=hog, args=(stop,), daemon=True) for _ in range(n_hogs)]
    for h in hogs:
        h.start()
    t0 = time.time()
    try:
        r = subprocess.run([sys.executable, "-m", "pytest", "tests/test_ray_train.py", "-k", "sigkilled", "-s", "-rA",
                            "-p", "no:cacheprovider", "--timeout", "3600"], cwd=ROOT, text=True, capture_output=True,
                           env={**os.environ, "GANPIPE_RESUME_DRILL_REPEATS": str(repeats), "GANPIPE_DRILLS": "1"})
    finally:
        stop.set()
        for h in hogs:
            h.join(5)
    cases = [(c, o) for o, c in re.findall(r"^(PASSED|FAILED|ERROR) \S*sigkilled\S*\[(\S+)\]", r.stdout, re.M)]
    for case, outcome in cases:
        print(f"{outcome:7s} kill {case}")
    passed = sum(o == "PASSED" for _, o in cases)
    # printed by flows.stages.train.resume (Ray dedups the two ranks' identical lines): how often Ray alone
    # would have resumed from an older checkpoint, or from scratch when its record is "none"
    races = re.findall(r"resume: (checkpoint_\S+) is newer than Ray's record \((\S+)\)", r.stdout)
    print(f"{len({c for c, _ in races})} of {len(cases)} restarts resumed from a checkpoint Ray's controller had not "
          f"recorded ({sum(rec == 'none' for _, rec in {*races})} of them with no record at all)")
    print(f"{len(hogs)} CPU hogs beside it; {time.time() - t0:.0f} s in all")
    if r.returncode != 0:
        print(r.stdout[-6000:], r.stderr[-3000:])
    print(f"{passed} passed, {len(cases) - passed} failed")
    return 0 if r.returncode == 0 and passed == len(cases) == 5 * repeats else 1


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("repeats", type=int, nargs="?", default=4)
    ap.add_argument("--hogs", type=int, default=os.cpu_count() or 2, help="busy-loop processes beside the drill")
    args = ap.parse_args()
    sys.exit(main(args.repeats, args.hogs))
