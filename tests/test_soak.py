"""The soak drill (drills/soak.py) in short: a warm-up and one more run through `ganpipe serve` on the
service stack, the resource bounds checked, no process of the stack left after `services down`.
The full soak is `.venv/bin/python drills/soak.py 20` (docs/operations.md, "Soak")."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
LIMIT_S = 1800  # a hang guard: measured 4.5 to 16 min here (2 cores, load average 15 to 50)


@pytest.mark.timeout(LIMIT_S + 360)
def test_runs_back_to_back_through_serve_leak_nothing_and_leave_no_process():
    proc = subprocess.Popen([sys.executable, str(ROOT / "drills" / "soak.py"), "1"], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = proc.communicate(timeout=LIMIT_S)
    except subprocess.TimeoutExpired:
        proc.terminate()  # the drill tears its stack down on SIGTERM; a kill would orphan it
        out, _ = proc.communicate(timeout=300)
        pytest.fail(f"the soak took over {LIMIT_S} s:\n{out[-6000:]}")
    assert proc.returncode == 0, out[-8000:]
    assert len(re.findall(r"^PASSED +run ", out, re.M)) == 1 and out.rstrip().endswith(" 0 failed"), out[-8000:]
