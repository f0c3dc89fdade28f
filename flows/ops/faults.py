"""Fault seams for drills and tests, owned by the code so no test edits it: environment variables
read once by the driver and handed to the workers.

Seams act only when drills are switched on explicitly with GANPIPE_DRILLS=1 (flows/ops/drills.py).

GANPIPE_FAULT_AT=STEP[:RANK[:KIND]]: after step STEP (or the first step past it, after a resume)
on rank RANK (default 0), once per run unless KIND is `always`:
  raise   raise InjectedFault (default): FailureConfig restarts the group from the last checkpoint
  always  raise every time the step is passed: exhausts the failure budget
  kill    SIGKILL this worker process: a crashed node, no exception, no cleanup
  nan     set this rank's D weights to NaN: the next step's losses are NaN (divergence)
  stall   sleep until killed: a hung worker, for tests that kill the driver mid-training
  desync  nudge one of this rank's G weights: replicas that drifted apart (the replica check at the
          next checkpoint must catch it)
A marker file written before acting disarms the restarted worker group (and a re-triggered run).

GANPIPE_FAULT_EVAL=N: the evaluate stage raises a transient error on its first N attempts of a
flow run (counted in a file), so Prefect's task retry can be seen at work.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import torch

from flows.ops.drills import seam
from gan_core.steps import unwrap
from gan_core.state import Callback, TrainState

KINDS = ("raise", "always", "kill", "nan", "stall", "desync")


class InjectedFault(RuntimeError):
    """Raised on purpose by a fault seam (tests and drills)."""


class FaultAt(Callback):
    def __init__(self, spec: str, rank: int, marker: str):
        step, _, rest = spec.partition(":")
        fault_rank, _, kind = rest.partition(":")
        self.step, self.rank, self.kind, self.marker = int(step), int(fault_rank or 0), kind or "raise", Path(marker)
        if self.kind not in KINDS:
            raise ValueError(f"GANPIPE_FAULT_AT: kind must be one of {KINDS}, got {self.kind!r}")
        self.armed = rank == self.rank and (self.kind == "always" or not self.marker.exists())

    def on_step(self, state: TrainState) -> None:
        if not self.armed or state.step < self.step:
            return
        self.armed = False
        self.marker.parent.mkdir(parents=True, exist_ok=True)
        self.marker.write_text(str(state.step))
        what = f"injected fault ({self.kind}) at step {state.step} on rank {self.rank} (GANPIPE_FAULT_AT)"
        if self.kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif self.kind == "nan":
            with torch.no_grad():
                for p in unwrap(state.D).parameters():
                    p.fill_(float("nan"))
        elif self.kind == "desync":
            with torch.no_grad():
                next(unwrap(state.G).parameters()).view(-1)[0].add_(1e-3)
        elif self.kind == "stall":
            while True:
                time.sleep(60)
        else:
            raise InjectedFault(what)


def eval_fault(marker: Path) -> None:
    """GANPIPE_FAULT_EVAL=N: raise InjectedFault on the first N calls that share `marker`."""
    n = int(seam("GANPIPE_FAULT_EVAL") or 0)
    done = int(marker.read_text()) if marker.is_file() else 0
    if done < n:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(str(done + 1))
        raise InjectedFault(f"injected transient evaluation failure {done + 1}/{n} (GANPIPE_FAULT_EVAL)")
