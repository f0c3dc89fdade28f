"""Bounded retries for S3 work: our own retry loop, and the retry settings every S3 client we build gets.

Where each S3 client retries, and the bounds (measured against tests/faulty_s3.py in front of moto):

* boto3 clients (flows/data/sources.py): botocore "standard" mode, S3_MAX_ATTEMPTS requests per call,
  full-jitter backoff rand(0, 1) * 2**i s between them: at most 1 + 2 + 4 = 7 s of waiting per call.
  (Left alone, botocore's "legacy" mode makes 5 attempts with up to 1 + 2 + 4 + 8 = 15 s.)
* DVC (dvc-s3 -> s3fs -> aiobotocore) reads AWS_RETRY_MODE / AWS_MAX_ATTEMPTS from its environment:
  `flows.data.versioning` sets them (unless the user did) to standard / S3_MAX_ATTEMPTS. On top of that,
  s3fs retries only throttling (SlowDown) and socket-level errors, 5 times, sleeping 0.1 * 1.7**i s
  (1.9 s in all); a 500 InternalError is not retried by s3fs. Per object and `dvc push`, that is
  4 requests (500) or 5 * 4 = 20 requests (SlowDown), measured: 6 s and 48 s for a 2-file push that
  fails throughout. DVC uploads in parallel and never uploads a folder's .dir object unless every
  file in it arrived, so a failed push leaves the remote claiming nothing new.
  `flows.data.versioning.push` runs that whole push up to DVC_PUSH_ATTEMPTS times with `retry` below
  (0.5-1, 1-2, 2-4 s between pushes) when its output looks transient (5xx, SlowDown, a refused or
  dropped connection; never a config error, a missing bucket or denied access): a push that fails
  throughout gives up after 4 pushes = 4 * 4 requests per object, about 4 * (DVC start-up ~3 s +
  <= 7 s) + <= 7 s ~ 50 s on 500s (measured 42-46 s for 3 files on a loaded 2-core machine; 26 s
  with the endpoint refusing connections), ~4 * 50 s ~ 3.5 min on throttling (more with many
  objects: DVC uploads 4 per core at a time and tries every one).
* pyarrow's S3FileSystem (Ray Train's checkpoint storage, flows/stages/train.py `run_storage`): the AWS C++
  SDK's standard strategy, PYARROW_S3_MAX_ATTEMPTS requests per call, backoff rand(0, 1 s) * 2**i
  (measured with the proxy), at most 1 + 2 + 4 = 7 s per call. Ray Train (2.60, V2) wraps each
  checkpoint upload in its own retry: RAY_UPLOAD_ATTEMPTS uploads, 1 and 2 s (+-20%) apart, when the
  error is an AWS SLOW_DOWN / INTERNAL_FAILURE / SERVICE_UNAVAILABLE / NETWORK_CONNECTION. So one
  checkpoint is given up after 3 * 4 = 12 refused requests, within ~3 * 7 + 3.6 ~ 25 s of backoff.
  `ray.train.report` then raises in the worker: Ray Train restarts the worker group from the last
  checkpoint it registered (FailureConfig.max_failures) and finally fails the run, so the last
  complete checkpoint stays the restore point (a checkpoint folder whose upload failed lacks its
  hash sidecar, which gan_core.checkpoint.load_checkpoint refuses). The controller's own writes
  (checkpoint_manager_snapshot.json) get the same SDK retries; one that still fails ends the run.
  pyarrow forgets a retry strategy when the filesystem is pickled (as Ray does to ship it to the
  controller and every worker: they would get the default, 3), so `s3_filesystem` returns a
  subclass that pickles its arguments and rebuilds itself with the same strategy on arrival.
"""
from __future__ import annotations

import logging
import os
import random
import sys
import time
from typing import Callable, TypeVar

T = TypeVar("T")

S3_MAX_ATTEMPTS = 4  # botocore standard mode, per request (boto3 and DVC)
PYARROW_S3_MAX_ATTEMPTS = 4  # AWS C++ SDK standard strategy, per request (Ray checkpoints)
RAY_UPLOAD_ATTEMPTS = 3  # Ray Train's own retry of a whole checkpoint upload (not configurable in 2.60)
S3_CONNECT_TIMEOUT_S = 5.0
S3_REQUEST_TIMEOUT_S = 60.0
DVC_PUSH_ATTEMPTS = 4

log = logging.getLogger(__name__)


class RetriesExhausted(RuntimeError):
    """`what` failed on every one of its `attempts`; `last` is the final cause. (An error that
    retry_on refuses is not wrapped: it propagates as itself, at once.)"""

    def __init__(self, what: str, attempts: int, elapsed: float, last: BaseException):
        self.what, self.attempts, self.elapsed, self.last = what, attempts, elapsed, last
        cause = str(last).strip() or type(last).__name__
        super().__init__(f"{what}: failed {attempts} attempts in {elapsed:.1f} s, giving up; last error: {cause}")


def backoff(attempt: int, base_delay: float, max_delay: float, rng: Callable[[], float] = random.random) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based): exponential, capped, with
    "equal jitter" (half fixed, half random) so retries spread out yet never fire back to back."""
    nominal = min(max_delay, base_delay * 2 ** (attempt - 1))
    return nominal / 2 + rng() * nominal / 2


def _logger():
    """Prefect's run logger inside a flow/task run (so retries show in the UI), else this module's."""
    if "prefect" in sys.modules:
        try:
            from prefect import get_run_logger

            return get_run_logger()
        except Exception:  # outside a run context
            pass
    return log


def retry(fn: Callable[[], T], what: str, attempts: int = 4, base_delay: float = 1.0, max_delay: float = 8.0,
          retry_on: type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]
          = Exception, sleep: Callable[[float], None] = time.sleep) -> T:
    """Call fn until it returns, at most `attempts` times. An exception `retry_on` accepts (a type, a
    tuple of types, or a predicate) is retried after `backoff`; any other propagates at once. When
    every attempt failed, RetriesExhausted names `what`, the attempt count and the last cause."""
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    accepts = retry_on if callable(retry_on) and not isinstance(retry_on, type) \
        else (lambda e: isinstance(e, retry_on))  # type: ignore[arg-type]
    started = time.monotonic()
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as e:
            if not accepts(e):
                raise
            if attempt == attempts:
                raise RetriesExhausted(what, attempts, time.monotonic() - started, e) from e
            delay = backoff(attempt, base_delay, max_delay)
            _logger().warning("%s failed (attempt %d of %d): %s; retrying in %.1f s", what, attempt, attempts,
                              _first_line(e), delay)
            sleep(delay)
    raise AssertionError("unreachable")


def _first_line(e: BaseException) -> str:
    """One line for the log: the exception's own `summary` when it has one, else its first line."""
    text = str(getattr(e, "summary", None) or e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:500]


def boto_config(**kw):
    """botocore Config for the S3 clients we create: standard retries, S3_MAX_ATTEMPTS per request."""
    from botocore.config import Config

    # the user's AWS_RETRY_MODE / AWS_MAX_ATTEMPTS win, as they do for DVC (aws_retry_env).
    # total_max_attempts counts the first request, like AWS_MAX_ATTEMPTS; botocore's "max_attempts"
    # key in this dict counts retries only (max_attempts=4 would make 5 requests)
    env = aws_retry_env(dict(os.environ))
    return Config(retries={"mode": env["AWS_RETRY_MODE"], "total_max_attempts": int(env["AWS_MAX_ATTEMPTS"])},
                  connect_timeout=S3_CONNECT_TIMEOUT_S, read_timeout=S3_REQUEST_TIMEOUT_S, **kw)


def aws_retry_env(env: dict[str, str]) -> dict[str, str]:
    """The environment for a process that builds its own AWS clients (DVC): standard retries with
    S3_MAX_ATTEMPTS per request, unless the environment already chose."""
    out = dict(env)
    out.setdefault("AWS_RETRY_MODE", "standard")
    out.setdefault("AWS_MAX_ATTEMPTS", str(S3_MAX_ATTEMPTS))
    return out


def s3_filesystem(max_attempts: int = PYARROW_S3_MAX_ATTEMPTS, connect_timeout: float = S3_CONNECT_TIMEOUT_S,
                  request_timeout: float = S3_REQUEST_TIMEOUT_S, **kw):
    """A pyarrow S3FileSystem with a bounded standard retry strategy that survives pickling. kw are
    S3FileSystem's own arguments (region, endpoint_override, scheme...); pass no credentials here:
    they would travel with every pickled copy."""
    import pyarrow.fs

    class RetryingS3FileSystem(pyarrow.fs.S3FileSystem):
        def __init__(self, max_attempts: int, connect_timeout: float, request_timeout: float, kw: dict):
            # request_timeout: honoured by the SDK on Windows/macOS; on Linux its curl client uses a
            # low-speed limit instead (pyarrow's documentation)
            super().__init__(retry_strategy=pyarrow.fs.AwsStandardS3RetryStrategy(max_attempts=max_attempts),
                             connect_timeout=connect_timeout, request_timeout=request_timeout, **kw)
            self._args = (max_attempts, connect_timeout, request_timeout, dict(kw))

        def __reduce__(self):
            return _rebuild_s3_filesystem, self._args

    return RetryingS3FileSystem(max_attempts, connect_timeout, request_timeout, kw)


def _rebuild_s3_filesystem(max_attempts: int, connect_timeout: float, request_timeout: float, kw: dict):
    return s3_filesystem(max_attempts, connect_timeout, request_timeout, **kw)
