"""Issue 15 item 7: ``HF_TOKEN`` and ``WANDB_API_KEY`` from Prefect ``Secret`` blocks named in settings.

A real training (the ``train-model`` flow on the session's Prefect server, a tiny FFNN) with both blocks
named: the training code sees the values in its environment, and afterwards neither value is in the
process environment, the run folder, W&B's files, the flow run's parameters, its logs on the server or
the console output.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import httpx
import pytest

from emotion_core.errors import ConfigError

pytestmark = pytest.mark.slow

HF_SENTINEL = "hf_SENTINEL" + uuid.uuid4().hex
WANDB_SENTINEL = "wandb-SENTINEL-" + uuid.uuid4().hex


def files_holding(folder: Path, needles: tuple[str, ...]) -> list[str]:
    """Files under ``folder`` whose bytes contain any of ``needles``."""
    return [str(p) for p in folder.rglob("*") if p.is_file() and any(n.encode() in p.read_bytes() for n in needles)]


@pytest.fixture
def secret_blocks(prefect_stack, monkeypatch):
    """Two Secret blocks on the session's server, named in the settings; HF_TOKEN / WANDB_API_KEY unset here."""
    from prefect.blocks.system import Secret

    names = {
        var: f"sec-{var.lower().replace('_', '-')}-{uuid.uuid4().hex[:6]}" for var in ("HF_TOKEN", "WANDB_API_KEY")
    }
    Secret(value=HF_SENTINEL).save(names["HF_TOKEN"])
    Secret(value=WANDB_SENTINEL).save(names["WANDB_API_KEY"])
    monkeypatch.setenv("EMOTION_HF_TOKEN_SECRET", names["HF_TOKEN"])
    monkeypatch.setenv("EMOTION_WANDB_API_KEY_SECRET", names["WANDB_API_KEY"])
    for var in names:
        monkeypatch.delenv(var, raising=False)
    return names


def test_secrets_reach_training_only_and_are_never_written(
    prefect_stack, secret_blocks, tiny_config, tmp_path, monkeypatch, capfd
):
    from prefect.logging.handlers import APILogHandler

    import emotion_core.pipeline as pipeline
    from flows.train_model import train_model

    seen = {}
    original = pipeline.train_run

    def recording_train_run(*args, **kwargs):  # the training code: what it finds in its environment
        seen.update({var: os.environ.get(var) for var in ("HF_TOKEN", "WANDB_API_KEY")})
        return original(*args, **kwargs)

    monkeypatch.setattr(pipeline, "train_run", recording_train_run)
    store = tmp_path / "store"
    state = train_model(config=str(tiny_config), store=str(store), return_state=True)
    assert state.is_completed(), state.message
    assert seen == {"HF_TOKEN": HF_SENTINEL, "WANDB_API_KEY": WANDB_SENTINEL}
    assert "HF_TOKEN" not in os.environ and "WANDB_API_KEY" not in os.environ  # only while it trained

    needles = (HF_SENTINEL, WANDB_SENTINEL)
    assert list(store.rglob("manifest.json"))  # the run was published: there is something to search
    assert files_holding(store, needles) == []
    assert files_holding(Path(os.environ["WANDB_DIR"]), needles) == []
    flow_run_id = str(state.state_details.flow_run_id)
    run = httpx.get(f"{prefect_stack.api_url}/flow_runs/{flow_run_id}", timeout=30).json()
    assert not any(n in str(run["parameters"]) for n in needles)
    APILogHandler().flush()
    logs = httpx.post(
        f"{prefect_stack.api_url}/logs/filter",
        timeout=30,
        json={"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200},
    ).json()
    text = "\n".join(entry["message"] for entry in logs)
    assert f"HF_TOKEN ({secret_blocks['HF_TOKEN']})" in text  # the logs were captured: they name the block only
    assert not any(n in text for n in needles)
    captured = capfd.readouterr()
    assert not any(n in captured.out + captured.err for n in needles)


def test_a_missing_secret_block_is_named(prefect_stack, monkeypatch):
    from tasks.secrets import resolve_secrets

    monkeypatch.setenv("EMOTION_HF_TOKEN_SECRET", "no-such-block-xyz")
    monkeypatch.delenv("EMOTION_WANDB_API_KEY_SECRET", raising=False)
    with pytest.raises(ConfigError, match="EMOTION_HF_TOKEN_SECRET=no-such-block-xyz: no Prefect Secret block"):
        resolve_secrets()
