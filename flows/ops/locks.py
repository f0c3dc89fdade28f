"""Locks: advisory file locks (flock), one writer at a time among the processes of this machine, and
a lock on the Prefect server (a global concurrency limit of 1) shared by every machine using that server."""
from __future__ import annotations

import fcntl
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator


@contextmanager
def file_lock(path: Path, holder: str = "", on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on `path`; if another process has it, call on_wait with its holder
    note, then block. The kernel drops the lock when the holder dies, so a crash never wedges it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            if on_wait:
                on_wait(f.read().strip() or "unknown")
            fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        f.truncate()
        f.write(holder)
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# A lock on the Prefect server, shared by every machine that talks to it. Prefect's smallest lease
# is 60 s: a live holder renews it in the background (every 45 s); a holder that dies stops renewing,
# and the server's repossessor (every 15 s by default) frees the slot, so a crash blocks the others
# for at most ~75 s. WAIT_S bounds the wait for anything else (e.g. a server whose in-memory leases
# were lost in a restart while a slot was taken: reset with the command in the error).
LEASE_S = 60.0
WAIT_S = 600.0


class LockError(RuntimeError):
    pass


def _limit_of_one(client, name: str):
    """The global concurrency limit `name`, created with limit 1 if missing. A limit someone changed
    (more slots, inactive, decaying) would not exclude anything: refuse it rather than run unlocked."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    try:
        limit = client.read_global_concurrency_limit_by_name(name)
    except ObjectNotFound:
        try:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
        except ObjectAlreadyExists:  # another promoter created it first
            pass
        limit = client.read_global_concurrency_limit_by_name(name)
    if limit.limit != 1 or not limit.active or limit.slot_decay_per_second:
        raise LockError(f"Prefect global concurrency limit {name!r}: limit={limit.limit}, active={limit.active}, "
                        f"slot_decay_per_second={limit.slot_decay_per_second}; a lock needs limit=1, active, no "
                        f"decay: `prefect gcl delete {name}` (it is re-created) or `prefect gcl update {name} "
                        "--limit 1 --enable`")
    return limit


@contextmanager
def server_lock(name: str, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the Prefect server's global concurrency limit `name` (limit 1), under a lease (see LEASE_S).
    Needs PREFECT_API_URL: the limit lives in the server's database, so every process and machine
    using that server takes the same lock."""
    from prefect.client.orchestration import get_client
    from prefect.concurrency._asyncio import AcquireConcurrencySlotTimeoutError
    from prefect.concurrency.sync import concurrency

    with get_client(sync_client=True) as client:
        limit = _limit_of_one(client, name)
    if limit.active_slots >= limit.limit and on_wait:
        on_wait(f"another holder of the Prefect global concurrency limit {name!r}")
    held = False
    try:
        # strict: a limit deleted meanwhile raises instead of running unlocked (Prefect's default skips)
        with concurrency(name, occupy=1, timeout_seconds=WAIT_S, lease_duration=LEASE_S, strict=True):
            held = True
            yield
    except AcquireConcurrencySlotTimeoutError as e:
        if held:
            raise
        raise LockError(f"Prefect global concurrency limit {name!r} not free after {WAIT_S:.0f} s. A holder that "
                        f"died frees it within ~{LEASE_S + 15:.0f} s; if the Prefect server restarted while it "
                        f"was held, free it with `prefect gcl update {name} --active-slots 0`") from e
