"""End-to-end fixtures: workers on the session's Prefect server, the store in a bucket of moto's S3 server."""

from __future__ import annotations

import uuid
from contextlib import contextmanager

import boto3
import pytest
from helpers import pause_nightly_schedule


@contextmanager
def _workers_on_s3(
    stack,
    s3_endpoint: str,
    data_dir,
    cache_dir,
    prefix: str,
    extra_env: dict | None = None,
    schedule_seen: dict | None = None,
):
    """Pools, deployments (the nightly schedule paused), an orchestration worker and two gpu-pool workers storing
    into a new bucket; yields it. ``schedule_seen``: see ``helpers.pause_nightly_schedule``.

    The server stays up for other tests; the workers are stopped and the stack's settings restored.
    """
    from emotion_cli.stack import _stop_group

    bucket = f"{prefix}-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    saved_env, saved_workers = dict(stack.extra_env), stack.cpu_workers
    stack.cpu_workers = 2
    stack.extra_env.update(
        {
            "EMOTION_STORE": f"s3://{bucket}/nightly",
            "EMOTION_S3_ENDPOINT_URL": s3_endpoint,
            "EMOTION_CACHE_DIR": str(cache_dir),
            "EMOTION_DATA_DIR": str(data_dir),
            **(extra_env or {}),
        }
    )
    try:
        stack.apply_pools()
        stack.deploy()
        pause_nightly_schedule(stack, schedule_seen)
        stack.start_workers()
        stack.wait_for_workers({"orchestration": 1, "gpu": 2})
        yield bucket
    finally:
        for name in ("worker-orchestration", "workers-gpu"):
            pid_file = stack.state_dir / f"{name}.pid"
            pid = stack._our_pid(name)  # the pid file holds the pid and its start time (emotion_cli.stack)
            if pid is not None:
                _stop_group(pid)
            pid_file.unlink(missing_ok=True)
        stack.extra_env.clear()
        stack.extra_env.update(saved_env)
        stack.cpu_workers = saved_workers


@pytest.fixture(scope="session")
def workers_on_s3():
    """``workers_on_s3(stack, s3_endpoint, data_dir, cache_dir, prefix, extra_env=None, schedule_seen=None)``: a
    context manager."""
    return _workers_on_s3
