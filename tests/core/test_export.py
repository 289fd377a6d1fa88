"""``emotion export``: real tiny runs exported and loaded back with transformers.pipeline / peft.

Tiny random encoders (2 layers, hidden 32, the 20-word tokenizer of test_adapters) are trained for one
epoch on 60 rows; the exported folder must give the run's own probabilities (``predict.run_logits``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from emotion_core.config import parse_run_config
from emotion_core.metrics import sigmoid

REPO = Path(__file__).resolve().parents[2]
EMOTION = str(Path(sys.executable).with_name("emotion"))
sys.path.insert(0, str(Path(__file__).parent))
from test_adapters import WORDS, _config, _tokenizer  # noqa: E402  (the same tiny models)

TEXTS = [
    "i am so happy today",
    "this makes me furious",
    "i miss her so much it hurts",
    "what a lovely surprise thank you",
    "meh",
]
PROB_TOL = 1e-5
"""Max |probability difference| between the export (pipeline) and the run's own prediction path."""

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")]


def emotion(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [EMOTION, *args], capture_output=True, text=True, cwd=REPO, env={**os.environ, **env}, timeout=600
    )


@pytest.fixture(scope="module")
def make_run(tmp_path_factory):
    """``make_run(arch, pooling, adapter=None)`` -> folder of a real 1-epoch run of a tiny random encoder."""
    from transformers import AutoModel

    from emotion_core.pipeline import train_config
    from emotion_core.store import open_store

    root = tmp_path_factory.mktemp("export-runs")
    rows = ["id,text,joy,anger"] + [
        f"r{i},{' '.join(WORDS[(i + k) % len(WORDS)] for k in range(4))},{i % 2},{int(i % 3 == 0)}" for i in range(60)
    ]
    (root / "train.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    made = {}

    def make(arch: str, pooling: str, adapter: dict | None = None) -> Path:
        key = (arch, pooling, json.dumps(adapter))
        if key not in made:
            base = root / f"tiny-{arch}"
            if not base.exists():
                torch.manual_seed(0)
                AutoModel.from_config(_config(arch)).save_pretrained(base, safe_serialization=True)
                _tokenizer(False).save_pretrained(base)
            cfg = parse_run_config(
                {
                    "name": f"tiny-{arch}-{pooling}",
                    "model": {
                        "family": "encoder",
                        "model": str(base),
                        "pooling": pooling,
                        "max_length": 16,
                        "adapter": adapter,
                    },
                    "data": {"dataset": "tabular", "path": str(root / "train.csv"), "id_column": "id"},
                    "training": {
                        "epochs": 1,
                        "batch_size": 8,
                        "learning_rate": 1e-2,
                        "head_learning_rate": 1e-2,
                        "early_stopping_patience": None,
                    },
                }
            )
            made[key] = Path(train_config(cfg, open_store(root / "store")).removeprefix("file://"))
        return made[key]

    return make


def run_probs(run_folder: Path, texts=TEXTS) -> np.ndarray:
    from emotion_core.predict import run_logits
    from emotion_core.runs import read_run

    return sigmoid(run_logits(read_run(run_folder), texts))


def pipeline_probs(folder: Path, labels: list[str], texts=TEXTS, **kwargs) -> np.ndarray:
    from transformers import pipeline

    clf = pipeline(
        "text-classification",
        model=str(folder) if not kwargs else kwargs["model"],
        tokenizer=str(folder),
        top_k=None,
        truncation=True,
    )
    out = clf(list(texts))
    return np.array([[{d["label"]: d["score"] for d in row}[name] for name in labels] for row in out])


@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert", "deberta-v2"])
def test_cls_run_exports_to_a_plain_folder_pipeline_gives_the_runs_probabilities(arch, make_run, tmp_path):
    from transformers import AutoConfig

    from emotion_core.export import export_run

    run = make_run(arch, "cls")
    result = export_run(run, tmp_path / "hf")
    config = AutoConfig.from_pretrained(tmp_path / "hf")
    assert config.problem_type == "multi_label_classification"
    assert config.id2label == {0: "joy", 1: "anger"} and config.label2id == {"joy": 0, "anger": 1}
    assert set(config.emotion_thresholds) == {"joy", "anger"} and config.emotion_pooling == "cls"
    assert (tmp_path / "hf" / "model.safetensors").is_file() and not list((tmp_path / "hf").glob("*.bin"))
    diff = np.abs(pipeline_probs(tmp_path / "hf", ["joy", "anger"]) - run_probs(run)).max()
    assert diff <= PROB_TOL, f"{arch}: max |prob diff| {diff:.2e}"
    assert result["max_abs_logit_diff"] <= 1e-4
    card = (tmp_path / "hf" / "README.md").read_text(encoding="utf-8")
    assert card.startswith("---\n") and "pipeline_tag: text-classification" in card and "model-index" in card
    assert "sha256:" in card and "| joy |" in card


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_adapter_run_exports_to_peft_and_merged_folders(method, make_run, tmp_path):
    from peft import AutoPeftModelForSequenceClassification
    from transformers import AutoTokenizer

    from emotion_core.export import export_run

    adapter = {"method": method, "r": 4, "alpha": 8} if method == "lora" else {"method": method}
    run = make_run("bert", "cls", adapter)
    expected = run_probs(run)
    export_run(run, tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["task_type"] == "SEQ_CLS" and Path(saved["base_model_name_or_path"]).is_dir()
    kwargs = json.loads((tmp_path / "adapter" / "emotion_export.json").read_text())["load_kwargs"]
    model = AutoPeftModelForSequenceClassification.from_pretrained(str(tmp_path / "adapter"), **kwargs).eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "adapter")
    with torch.no_grad():
        logits = model(**tok(TEXTS, padding=True, truncation=True, return_tensors="pt")).logits.numpy()
    assert np.abs(sigmoid(logits) - expected).max() <= PROB_TOL

    export_run(run, tmp_path / "merged", merge=True)
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    assert np.abs(pipeline_probs(tmp_path / "merged", ["joy", "anger"]) - expected).max() <= PROB_TOL


def test_calibration_travels_in_the_config(make_run, tmp_path):
    from emotion_core.export import export_run, run_calibration
    from emotion_core.runs import read_run

    run = make_run("bert", "cls")
    fitted = run_calibration(read_run(run))
    export_run(run, tmp_path / "hf", calibration=fitted)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["emotion_temperatures"] == fitted["temperatures"]
    assert config["emotion_calibrated_thresholds"] == fitted["thresholds"]


def test_cli_mean_pooled_run_is_refused_clearly_and_writes_nothing(make_run, tmp_path):
    run = make_run("bert", "mean")
    result = emotion("export", str(run), str(tmp_path / "hf"))
    assert result.returncode == 2, result.stderr
    assert "model.pooling is 'mean'" in result.stderr and "pooling: cls" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "hf").exists() and not list(tmp_path.glob(".hf*"))


def test_cli_exports_and_refuses_a_non_empty_destination(make_run, tmp_path):
    run = make_run("bert", "cls")
    result = emotion("export", str(run), str(tmp_path / "hf"))
    assert result.returncode == 0, result.stderr
    assert "max |logit diff|" in result.stdout and (tmp_path / "hf" / "config.json").is_file()
    again = emotion("export", str(run), str(tmp_path / "hf"), "--no-calibration")
    assert again.returncode == 2 and "not an empty folder" in again.stderr and "Traceback" not in again.stderr


def test_cli_ffnn_run_is_refused(tmp_path):
    from emotion_core.pipeline import train_config
    from emotion_core.store import open_store

    rows = ["id,text,joy"] + [f"r{i},{'happy' if i % 2 else 'calm'} day {i},{i % 2}" for i in range(40)]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    model = {"family": "ffnn", "max_features": 50, "hidden_size": 4, "min_df": 1}
    cfg = parse_run_config(
        {
            "name": "tiny-ffnn",
            "model": model,
            "data": {"dataset": "tabular", "path": str(tmp_path / "d.csv"), "id_column": "id"},
            "training": {"epochs": 1, "batch_size": 8, "early_stopping_patience": None},
        }
    )
    run = train_config(cfg, open_store(tmp_path / "store")).removeprefix("file://")
    result = emotion("export", run, str(tmp_path / "hf"), "--no-calibration")
    assert result.returncode == 2 and "a ffnn run ships as its run folder" in result.stderr
    assert not (tmp_path / "hf").exists()


def test_push_to_hub_uploads_the_folder_with_the_token(make_run, tmp_path, monkeypatch):
    import huggingface_hub

    from emotion_core.export import export_run, push_to_hub

    export_run(make_run("bert", "cls"), tmp_path / "hf")
    calls = []

    class StandIn:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, exist_ok):
            calls.append(("create", repo_id, exist_ok))

        def upload_folder(self, folder_path, repo_id, commit_message):
            calls.append(("upload", sorted(p.name for p in Path(folder_path).iterdir()), repo_id))
            return type("Commit", (), {"commit_url": f"https://hub.local/{repo_id}/commit/1"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", StandIn)
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    assert push_to_hub(tmp_path / "hf", "me/emotions") == "https://hub.local/me/emotions/commit/1"
    assert calls[0] == ("init", "hf_secret") and calls[1] == ("create", "me/emotions", True)
    assert calls[2][0] == "upload" and {"README.md", "config.json", "model.safetensors"} <= set(calls[2][1])


def test_cli_push_offline_is_a_clear_error_and_keeps_the_export(make_run, tmp_path):
    run = make_run("bert", "cls")
    result = emotion(
        "export",
        str(run),
        str(tmp_path / "hf"),
        "--no-calibration",
        "--push-to-hub",
        "me/emotions",
        HF_TOKEN="hf_secret_value",
        HF_ENDPOINT="http://127.0.0.1:9",
        HF_HUB_ETAG_TIMEOUT="2",
        HF_HUB_DOWNLOAD_TIMEOUT="2",
    )
    assert result.returncode == 2, result.stderr
    assert "push to the hub repo 'me/emotions' failed" in result.stderr and "Traceback" not in result.stderr
    assert "hf_secret_value" not in result.stderr + result.stdout
    assert (tmp_path / "hf" / "model.safetensors").is_file()
