"""Issue 11, class 2: loading a run never executes code from it.

A real (tiny, ~10 s) encoder run is trained once; each test copies it and plants what an attacker with
write access to a shared store would: ``trust_remote_code: true`` in ``config.yaml`` and an ``auto_map``
in the model's ``config.json`` naming ``evil.py`` beside it, which writes a sentinel file when imported.
The manifest's file list is rewritten to match, so only the remote-code defence can stop the load.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
EMOTION = str(Path(sys.executable).with_name("emotion"))
EVIL = """from pathlib import Path
Path({sentinel!r}).write_text("code from the run folder ran")
from transformers import BertConfig, BertModel, BertTokenizerFast
class EvilConfig(BertConfig):
    model_type = "evil"
class EvilModel(BertModel):
    config_class = EvilConfig
class EvilTokenizer(BertTokenizerFast):
    pass
"""


@pytest.fixture(scope="module")
def encoder_run(tmp_path_factory) -> Path:
    """A published encoder run: a 1-layer random BERT (MiniLM's tokenizer) trained one epoch on 40 rows."""
    from transformers import BertConfig, BertModel

    from emotion_core.config import parse_run_config
    from emotion_core.models.resolve import bundled_folder
    from emotion_core.pipeline import train_config
    from emotion_core.store import open_store

    root = tmp_path_factory.mktemp("encoder-run")
    source, model = bundled_folder("minilm"), root / "tiny-bert"
    if source is None:
        pytest.skip("the bundled MiniLM package (its tokenizer) is not installed")
    model.mkdir()
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(source / name, model / name)
    BertModel(
        BertConfig(
            vocab_size=30522,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=64,
        )
    ).save_pretrained(model)
    rows = ["id,text,joy,anger"] + [
        f"r{i},{'happy' if i % 2 else 'calm'} {'furious' if i % 3 == 0 else 'fine'} day {i},{i % 2},{int(i % 3 == 0)}"
        for i in range(40)
    ]
    (root / "train.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    cfg = parse_run_config(
        {
            "name": "tiny-encoder",
            "model": {"family": "encoder", "model": str(model), "max_length": 16},
            "training": {"epochs": 1, "batch_size": 8, "early_stopping_patience": None},
            "resources": {"gpu_memory_gb": 2},
            "data": {"dataset": "tabular", "path": str(root / "train.csv"), "id_column": "id"},
        }
    )
    return Path(train_config(cfg, open_store(root / "store")).removeprefix("file://"))


def planted_run(run: Path, target: Path, sentinel: Path, *, trust: bool) -> Path:
    """A copy of ``run`` whose model and tokenizer name ``evil.py`` (it writes ``sentinel`` on import)."""
    from emotion_core.runs import file_inventory

    shutil.copytree(run, target)
    config = yaml.safe_load((target / "config.yaml").read_text(encoding="utf-8"))
    config["model"]["trust_remote_code"] = trust
    (target / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    for sub, auto_map in (
        ("body", {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}),
        ("tokenizer", {"AutoTokenizer": [None, "evil.EvilTokenizer"]}),
    ):
        (target / "model" / sub / "evil.py").write_text(EVIL.format(sentinel=str(sentinel)), encoding="utf-8")
        name = "config.json" if sub == "body" else "tokenizer_config.json"
        payload = json.loads((target / "model" / sub / name).read_text(encoding="utf-8"))
        (target / "model" / sub / name).write_text(json.dumps({**payload, "auto_map": auto_map}), encoding="utf-8")
    manifest = json.loads((target / "manifest.json").read_text(encoding="utf-8"))
    manifest["files"] = file_inventory(target)  # consistent: an integrity check alone would not stop it
    (target / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return target


def emotion(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "HF_MODULES_CACHE": str(tmp_path / "hf-modules"),
        "EMOTION_CACHE_DIR": str(tmp_path / "cache"),
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "COLUMNS": "200",
        "NO_COLOR": "1",
    }
    return subprocess.run([EMOTION, *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)


@pytest.mark.parametrize("command", ["predict", "submit"])
def test_a_run_asking_for_remote_code_is_refused_and_its_code_never_runs(encoder_run, tmp_path, command):
    sentinel = tmp_path / "PWNED"
    run = planted_run(encoder_run, tmp_path / "evil-run", sentinel, trust=True)
    (tmp_path / "in.csv").write_text("id,text\nq1,so happy\nq2,so angry\n", encoding="utf-8")
    out = tmp_path / "out.csv"
    args = (
        ("predict", str(run), str(tmp_path / "in.csv"), "--out", str(out))
        if command == "predict"
        else ("submit", str(run), "--out", str(out), "--no-calibrated", "--data", str(tmp_path / "in.csv"))
    )
    result = emotion(*args, tmp_path=tmp_path)

    assert not sentinel.exists(), "code from the run folder was executed"
    assert result.returncode == 2, result.stderr[-3000:]
    assert "evil-run" in result.stderr and "model.trust_remote_code" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not out.exists()


def test_an_auto_map_without_trust_is_never_imported(encoder_run, tmp_path):
    """A config.json / tokenizer_config.json naming code, with ``trust_remote_code: false``: the code stays unread."""
    sentinel = tmp_path / "PWNED"
    run = planted_run(encoder_run, tmp_path / "mapped-run", sentinel, trust=False)
    (tmp_path / "in.csv").write_text("id,text\nq1,so happy\n", encoding="utf-8")
    result = emotion(
        "predict", str(run), str(tmp_path / "in.csv"), "--out", str(tmp_path / "out.csv"), tmp_path=tmp_path
    )
    assert not sentinel.exists(), "code from the run folder was executed"
    assert result.returncode in (0, 2) and "Traceback" not in result.stderr, result.stderr[-3000:]


def test_load_family_refuses_a_config_with_remote_code(encoder_run):
    """Any caller of ``load_family`` (explain, analysis), not only ``read_run``, is covered."""
    from emotion_core.errors import ModelError
    from emotion_core.models import load_family
    from emotion_core.runs import read_run

    run = read_run(encoder_run)
    unsafe = run.config.model_copy(update={"model": run.config.model.model_copy(update={"trust_remote_code": True})})
    with pytest.raises(ModelError, match="model.trust_remote_code"):
        load_family(unsafe, run.schema, run.folder / "model")


def test_trust_remote_code_only_for_hub_ids_named_in_the_settings(monkeypatch, tmp_path):
    from emotion_core.config import parse_run_config
    from emotion_core.errors import ConfigError

    def config(model: str) -> dict:
        return {"name": "r", "model": {"family": "encoder", "model": model, "trust_remote_code": True}}

    monkeypatch.delenv("EMOTION_TRUSTED_REMOTE_CODE", raising=False)
    with pytest.raises(ConfigError, match=r"field 'model.trust_remote_code'.*EMOTION_TRUSTED_REMOTE_CODE"):
        parse_run_config(config("org/model"), "c.yaml")
    monkeypatch.setenv("EMOTION_TRUSTED_REMOTE_CODE", "other/model, org/model")
    assert parse_run_config(config("org/model"), "c.yaml").model.trust_remote_code is True
    (tmp_path / "org").mkdir()
    for local in ("minilm", str(tmp_path / "org"), "./org/model"):  # an alias or a folder: never, listed or not
        monkeypatch.setenv("EMOTION_TRUSTED_REMOTE_CODE", local)
        with pytest.raises(ConfigError, match="field 'model.trust_remote_code'.*only for a hub id"):
            parse_run_config(config(local), "c.yaml")


def test_adapters_load_from_safetensors_only(tmp_path):
    from emotion_core.errors import ModelError
    from emotion_core.models.adapters import load_adapter

    (tmp_path / "adapter_config.json").write_text("{}", encoding="utf-8")
    (tmp_path / "adapter_model.bin").write_bytes(b"a pickle would be unpickled here")
    with pytest.raises(ModelError, match="adapter_model.safetensors"):
        load_adapter(None, tmp_path)
