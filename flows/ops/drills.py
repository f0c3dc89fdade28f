"""Fault drills are switched on explicitly, or not at all.

Fault seams (GANPIPE_FAULT_AT, GANPIPE_FAULT_EVAL, GANPIPE_FAULT_PROMOTE_DELAY; see flows/ops/faults.py)
act only when GANPIPE_DRILLS=1: a stray seam variable in a production environment (a copied .env,
a shell left over from a drill) is ignored with a warning instead of killing real training.
GANPIPE_PROFILE=production refuses GANPIPE_DRILLS=1 outright, when settings are loaded, so a
production deployment can never run a drill by mistake. Kept free of torch: settings import it.
"""
from __future__ import annotations

import logging
import os

DRILLS_ENV, PROFILE_ENV = "GANPIPE_DRILLS", "GANPIPE_PROFILE"
SEAMS = ("GANPIPE_FAULT_AT", "GANPIPE_FAULT_EVAL", "GANPIPE_FAULT_PROMOTE_DELAY")


class DrillsRefused(RuntimeError):
    """Drills were switched on in a production profile."""


def drills_on(env=None) -> bool:
    return (os.environ if env is None else env).get(DRILLS_ENV, "").strip() == "1"


def check_profile(env=None) -> None:
    env = os.environ if env is None else env
    if drills_on(env) and env.get(PROFILE_ENV, "").strip().lower() == "production":
        raise DrillsRefused(f"{DRILLS_ENV}=1: fault drills are refused under {PROFILE_ENV}=production; "
                            f"unset {DRILLS_ENV} (drills belong on a test or staging profile)")


_warned: set[str] = set()


def seam(name: str) -> str:
    """The value of fault seam `name` when drills are on; "" otherwise (warned once if it is set)."""
    value = os.environ.get(name, "").strip()
    if not value or drills_on():
        return value
    if name not in _warned:
        _warned.add(name)
        logging.getLogger("ganpipe").warning("%s=%r is set but fault drills are off (%s unset): ignored",
                                             name, value, DRILLS_ENV)
    return ""
