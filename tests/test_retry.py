"""flows/ops/retry.py's retry() and backoff() on their own: bounded attempts, jittered exponential delays,
one log line per failure, and no retry of what the caller did not ask to retry. tests/test_faults_s3.py
puts them in front of a real S3 server."""
from __future__ import annotations

import logging

import pytest

from flows.ops.retry import RetriesExhausted, backoff, retry


class Flaky(RuntimeError):
    pass


def test_retry_returns_after_transient_failures_and_logs_each(caplog):
    calls, slept = [], []

    def fn():
        calls.append(1)
        if len(calls) < 3:
            raise Flaky(f"boom {len(calls)}")
        return "ok"

    with caplog.at_level(logging.WARNING, logger="flows.ops.retry"):
        assert retry(fn, "thing", attempts=4, base_delay=1.0, max_delay=8.0, retry_on=Flaky, sleep=slept.append) == "ok"
    assert len(calls) == 3 and len(slept) == 2
    assert 0.5 <= slept[0] <= 1.0 and 1.0 <= slept[1] <= 2.0  # exponential, jittered within [d/2, d]
    assert [r.getMessage().split(";")[0] for r in caplog.records] == [
        "thing failed (attempt 1 of 4): boom 1", "thing failed (attempt 2 of 4): boom 2"]


def test_retry_gives_up_after_the_bound_naming_what_attempts_and_cause():
    slept = []
    with pytest.raises(RetriesExhausted) as ei:
        retry(lambda: (_ for _ in ()).throw(Flaky("still down")), "push to r", attempts=4, base_delay=1.0,
              max_delay=3.0, retry_on=Flaky, sleep=slept.append)
    msg = str(ei.value)
    assert "push to r" in msg and "4 attempts" in msg and "still down" in msg
    assert ei.value.attempts == 4 and isinstance(ei.value.last, Flaky)
    assert len(slept) == 3 and slept[2] <= 3.0  # capped at max_delay


def test_retry_does_not_retry_what_it_was_not_asked_to():
    calls = []

    def fn():
        calls.append(1)
        raise ValueError("config error")

    with pytest.raises(ValueError, match="config error"):
        retry(fn, "x", attempts=4, retry_on=lambda e: isinstance(e, Flaky), sleep=lambda s: None)
    assert calls == [1]


def test_backoff_is_bounded():
    assert [backoff(i, 1.0, 8.0, rng=lambda: 1.0) for i in range(1, 7)] == [1, 2, 4, 8, 8, 8]
    assert [backoff(i, 1.0, 8.0, rng=lambda: 0.0) for i in range(1, 4)] == [0.5, 1, 2]
