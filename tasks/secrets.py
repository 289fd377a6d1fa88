"""Secrets for training from Prefect ``Secret`` blocks: ``HF_TOKEN`` (gated models) and ``WANDB_API_KEY``.

``$EMOTION_HF_TOKEN_SECRET`` / ``$EMOTION_WANDB_API_KEY_SECRET`` name the blocks (``emotion_core.settings``).
``secrets_in_env()`` loads them at the start of a child's training and puts them in this process's
environment only while it trains (restored after), so no flow-run parameter, log line or manifest sees them.
Only the variable and block names are ever logged.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from emotion_core.errors import ConfigError
from emotion_core.settings import SECRET_BLOCK_ENVS, secret_block_names


def resolve_secrets() -> dict[str, str]:
    """Variable -> value from the ``Secret`` blocks named in settings; ``ConfigError`` if one is missing."""
    from prefect.blocks.system import Secret

    values = {}
    for var, block in secret_block_names().items():
        try:
            value = Secret.load(block).get()
        except ValueError as exc:  # Prefect: "Unable to find block document named ..."
            raise ConfigError(
                f"{SECRET_BLOCK_ENVS[var]}={block}: no Prefect Secret block of that name "
                f"({type(exc).__name__}); create it (prefect block create secret) or unset it"
            ) from None
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{SECRET_BLOCK_ENVS[var]}={block}: the Secret block holds no text for {var}")
        values[var] = value
    return values


@contextmanager
def secrets_in_env(logger=None) -> Iterator[dict[str, str]]:
    """This process's environment with the resolved secrets while the block runs; yields them (for rank processes)."""
    values = resolve_secrets()
    saved = {var: os.environ.get(var) for var in values}
    os.environ.update(values)
    if values and logger is not None:
        logger.info(
            "secrets from Prefect Secret blocks: %s",
            ", ".join(f"{var} ({secret_block_names()[var]})" for var in sorted(values)),
        )
    try:
        yield values
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
