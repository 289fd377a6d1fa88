"""benchmarks/gpu_check.py: its data helpers, and the whole check on CPU (``--cpu-smoke``) with its JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import gpu_check  # noqa: E402

# Packages a GPU image does not have and no library of the check imports on its own: the check's own code must
# not need them. (datasets and boto3 are absent there too, but transformers and accelerate import them whenever
# they are installed, as here; the check was run without them, see the README.)
ABSENT_THERE = ("polars", "prefect")


def test_goemotions_rows_are_read_without_the_loaders(tmp_path):
    (tmp_path / "train.tsv").write_text("I love it\t18\tid1\nmeh, fine\t4,27\tid2\nthird\t27\tid3\n", encoding="utf-8")
    (tmp_path / "dev.tsv").write_text("so sad\t25\tid4\n", encoding="utf-8")
    (tmp_path / "labels.txt").write_text("\n".join(f"l{i}" for i in range(28)) + "\n", encoding="utf-8")
    rows = gpu_check.load_rows(gpu_check.data_folder(str(tmp_path)), train_rows=2, val_rows=5)
    assert rows["train"] == (["I love it", "meh, fine"], [[18], [4, 27]])
    assert rows["validation"] == (["so sad"], [[25]]) and len(rows["names"]) == 28
    matrix = gpu_check.multi_hot(rows["train"][1], 28)
    assert matrix.sum(axis=1).tolist() == [1.0, 2.0] and matrix[1, 27] == 1.0
    (tmp_path / "train.tsv").write_text("no labels here\n", encoding="utf-8")
    with pytest.raises(SystemExit, match=r"train.tsv line 1: expected text<TAB>label ids"):
        gpu_check.read_goemotions(tmp_path, "train", None)


def test_without_data_the_check_uses_synthetic_texts_and_says_so(monkeypatch, tmp_path):
    monkeypatch.delenv("EMOTION_DATA_DIR", raising=False)
    monkeypatch.setattr(gpu_check, "PREPARED", tmp_path / "none")
    rows = gpu_check.load_rows(gpu_check.data_folder(None), train_rows=10, val_rows=4)
    assert rows["source"].startswith("synthetic") and len(rows["train"][0]) == 10
    assert all(1 <= len(ids) <= 2 and all(0 <= i < 28 for i in ids) for ids in rows["train"][1])
    longer = gpu_check.long_texts(["a b", "c d e"], words=6)
    assert all(len(t.split()) >= 6 for t in longer) and longer[0].startswith("a b c d e")


@pytest.mark.slow
def test_cpu_smoke_writes_every_section_with_sane_values(tmp_path):
    # A sitecustomize in every process of the check (children too) records what it imported.
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(
        "import atexit, os, sys\n"
        "def _report():\n"
        f"    bad = sorted(m for m in sys.modules if m.split('.')[0] in {ABSENT_THERE!r})\n"
        f"    with open(os.path.join({str(tmp_path)!r}, f'imports-{{os.getpid()}}.txt'), 'w') as f:\n"
        "        f.write(' '.join(bad))\n"
        "atexit.register(_report)\n",
        encoding="utf-8",
    )
    out = tmp_path / "check.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hooks), str(REPO), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--cpu-smoke", "--out", str(out)]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    check = json.loads(out.read_text())

    assert check["mode"] == "cpu-smoke" and check["failed"] == [] and 0 < check["wall_s"] < 600
    assert check["device"]["cuda"] is False and check["versions"]["torch"] and check["versions"]["transformers"]
    assert check["data"]["train_rows"] == 192 and check["data"]["labels"] == 28

    encoder = check["encoder"]
    assert encoder["model"]["parameters"] > 0 and encoder["model"]["shape"]["hidden_size"] == 64
    for arm in ("project", "plain"):
        assert encoder[arm]["status"] == "completed" and encoder[arm]["samples_per_s"] > 0
        assert encoder[arm]["samples"] == 192 and encoder[arm]["precision"] == "fp32"  # one epoch, every row, CPU
    assert encoder["project"]["fused"] is True  # the project's optimizer, not the Trainer default
    assert encoder["project_over_plain_samples_per_s"] == pytest.approx(
        encoder["project"]["samples_per_s"] / encoder["plain"]["samples_per_s"], abs=1e-3
    )

    llama = check["qlora_vs_lora"]
    assert llama["lora"]["status"] == "completed" and llama["lora"]["tokens_per_s"] > 0
    assert llama["lora"]["trainable"] < llama["lora"]["total"] and llama["lora"]["steps"] == 4
    assert llama["memory_measure"] == "peak_rss_mb" and llama["lora"]["peak_rss_mb"] > 0
    assert llama["qlora"]["status"] == "skipped" and "CUDA" in llama["qlora"]["reason"]

    oom = check["oom_halving"]
    assert oom["status"] == "completed" and oom["halved"] and oom["finished"] and oom["source"].startswith("injected")
    assert [a["batch_size"] for a in oom["oom_adjustments"]] == [16, 8]  # 32 -> 16 -> 8 (fits: <= 8 rows)
    assert oom["final_per_device_batch_size"] == 8 and oom["effective_batch_size"] == 32  # the same optimizer step

    monitor = check["device_monitor"]
    assert monitor["kind"] == "cpu" and monitor["summary"]["samples"] >= 1 and monitor["latest"]["rss_gib"] > 0
    assert monitor["progress_event_samples"] >= 1  # fit's progress events carried the monitor's samples

    reports = list(tmp_path.glob("imports-*.txt"))
    assert len(reports) >= 5  # the parent and its four section processes
    assert all(r.read_text() == "" for r in reports), {r.name: r.read_text() for r in reports}
