"""Open an artefact store from a task, with credentials from a Prefect ``AwsCredentials`` block if named.

``$EMOTION_AWS_CREDENTIALS_BLOCK`` names a saved ``AwsCredentials`` block; its boto3 session (and
its client ``endpoint_url``, if set) are used for ``s3://`` stores. Unset: boto3's own credential
chain (environment, profile, role). Credentials are never logged.
"""

from __future__ import annotations

import os

from emotion_core.store import ArtifactStore, open_store

BLOCK_ENV = "EMOTION_AWS_CREDENTIALS_BLOCK"


def open_task_store(uri: str) -> ArtifactStore:
    block_name = os.environ.get(BLOCK_ENV)
    if not uri.startswith("s3://") or not block_name:
        return open_store(uri)
    from prefect_aws import AwsCredentials

    block = AwsCredentials.load(block_name)
    return open_store(uri, session=block.get_boto3_session(), endpoint_url=block.aws_client_parameters.endpoint_url)
