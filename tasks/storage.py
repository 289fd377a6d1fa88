"""Open an artefact store from a task, with credentials from a Prefect ``AwsCredentials`` block if named.

``$EMOTION_AWS_CREDENTIALS_BLOCK`` names a saved ``AwsCredentials`` block; its boto3 session (and
its client ``endpoint_url``, if set) are used for ``s3://`` stores. Unset: boto3's own credential
chain (environment, profile, role). Credentials are never logged.
"""

from __future__ import annotations

import os

from emotion_core.store import ArtifactStore, open_store

BLOCK_ENV = "EMOTION_AWS_CREDENTIALS_BLOCK"


def _credentials_block(uri: str):
    """The ``AwsCredentials`` block named by ``$EMOTION_AWS_CREDENTIALS_BLOCK`` for an ``s3://`` store, else None."""
    block_name = os.environ.get(BLOCK_ENV)
    if not uri.startswith("s3://") or not block_name:
        return None
    from prefect_aws import AwsCredentials

    return AwsCredentials.load(block_name)


def open_task_store(uri: str) -> ArtifactStore:
    block = _credentials_block(uri)
    if block is None:
        return open_store(uri)
    return open_store(uri, session=block.get_boto3_session(), endpoint_url=block.aws_client_parameters.endpoint_url)


def block_store_env(uri: str) -> dict[str, str]:
    """Environment that lets a process without Prefect (torchrun ranks, the CLI's predict) open the store as a task
    would.

    With a credentials block: its keys and endpoint as the standard ``AWS_*`` variables, passed to the
    child processes only (never logged or written); otherwise nothing (the ranks inherit boto3's chain).
    """
    block = _credentials_block(uri)
    if block is None:
        return {}
    frozen = block.get_boto3_session().get_credentials().get_frozen_credentials()
    env = {"AWS_ACCESS_KEY_ID": frozen.access_key, "AWS_SECRET_ACCESS_KEY": frozen.secret_key}
    if frozen.token:
        env["AWS_SESSION_TOKEN"] = frozen.token
    if block.aws_client_parameters.endpoint_url:
        env["EMOTION_S3_ENDPOINT_URL"] = block.aws_client_parameters.endpoint_url
    return env
