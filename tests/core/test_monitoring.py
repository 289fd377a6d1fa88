"""Device sampling and progress events: on this CPU machine, with a faked CUDA device, and in a tiny
real Hugging Face Trainer run (a 2-layer BERT of width 32, 6 steps)."""

from __future__ import annotations

import json
import logging
import sys
import time
from types import SimpleNamespace

import torch

from emotion_core.monitoring import DeviceMonitor


def _busy(seconds: float) -> None:
    a = torch.randn(256, 256)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        a = torch.tanh(a @ a)


def test_device_monitor_samples_this_cpu_while_work_runs():
    with DeviceMonitor(interval_s=0.1) as monitor:
        _busy(1.0)
    summary = monitor.summary()
    latest = monitor.snapshot()
    json.dumps(summary), json.dumps(latest)  # plain JSON-able types

    assert summary["samples"] >= 2 and summary["kind"] == latest["kind"] == "cpu"
    assert latest["name"] and summary["name"] == latest["name"] and latest["logical_cores"] >= 1
    assert latest["torch_threads"] >= 1 and latest["memory_total_gib"] > 0
    assert latest["host"] and latest["pid"] > 0
    assert latest["rss_gib"] > 0 and latest["peak_rss_gib"] >= latest["rss_gib"]
    assert summary["peak_rss_gib"] >= latest["rss_gib"]
    assert summary["peak_process_cpu_percent"] >= summary["mean_process_cpu_percent"] > 0  # it saw the matmuls
    assert 0.5 <= summary["window_s"] <= 30 and summary["note"] is None


def test_cpu_percent_and_rss_without_psutil(monkeypatch):
    monkeypatch.setitem(sys.modules, "psutil", None)  # `import psutil` now fails
    monitor = DeviceMonitor(interval_s=0.1)
    assert monitor._process is None
    _busy(0.3)
    sample = monitor.sample()
    assert sample["rss_gib"] > 0 and sample["peak_rss_gib"] >= sample["rss_gib"]
    assert 10 < sample["process_cpu_percent"] < 100 * (torch.get_num_threads() + 2)


def test_a_failing_sample_never_escapes_the_thread(monkeypatch, caplog):
    monitor = DeviceMonitor(interval_s=0.02)
    calls = []

    def broken():
        calls.append(1)
        raise RuntimeError("sensor gone")

    monkeypatch.setattr(monitor, "sample", broken)
    with caplog.at_level(logging.DEBUG, logger="emotion_core.monitoring"):
        with monitor:
            time.sleep(0.2)
        assert monitor.snapshot() == {}
    assert len(calls) >= 3  # the thread kept going
    assert sum("device sample failed" in r.message for r in caplog.records) == 1  # logged once
    assert monitor.summary()["samples"] == 0


def test_cuda_branch_with_a_faked_device_and_no_nvml(monkeypatch):
    """No GPU here: fake torch.cuda to check the keys and that missing NVML is a note, not an error."""
    gib = 1024**3
    util_calls = []

    def no_nvml(index):
        util_calls.append(index)
        raise ModuleNotFoundError("pynvml does not seem to be installed")

    cuda = torch.cuda
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    for name, fake in {
        "is_available": lambda: True,
        "current_device": lambda: 0,
        "get_device_name": lambda i: "Fake GPU 16GB",
        "get_device_properties": lambda i: SimpleNamespace(total_memory=16 * gib),
        "mem_get_info": lambda i: (12 * gib, 16 * gib),
        "memory_allocated": lambda i: 3 * gib,
        "max_memory_allocated": lambda i: 5 * gib,
        "utilization": no_nvml,
    }.items():
        monkeypatch.setattr(cuda, name, fake)

    with DeviceMonitor(interval_s=0.02) as monitor:
        time.sleep(0.1)
    latest, summary = monitor.snapshot(), monitor.summary()
    assert latest["kind"] == "cuda" and latest["index"] == 0 and latest["name"] == "Fake GPU 16GB"
    assert latest["cuda_visible_devices"] == "3"
    assert (latest["memory_total_gib"], latest["memory_used_gib"], latest["memory_free_gib"]) == (16.0, 4.0, 12.0)
    assert (latest["allocated_gib"], latest["peak_allocated_gib"]) == (3.0, 5.0)
    assert latest["utilization_percent"] is None and len(util_calls) == 1  # NVML tried once only
    assert "pynvml" in summary["note"] and summary["samples"] >= 2
    assert summary["peak_utilization_percent"] is None and summary["mean_utilization_percent"] is None
    assert summary["peak_memory_used_gib"] == 4.0 and summary["peak_allocated_gib"] == 5.0


# -- progress events in a real Trainer run ------------------------------------------------------------


class _RandomTokens(torch.utils.data.Dataset):
    def __init__(self, rows: int = 24, length: int = 8) -> None:
        generator = torch.Generator().manual_seed(0)
        self.input_ids = torch.randint(0, 100, (rows, length), generator=generator)
        self.labels = torch.randint(0, 2, (rows,), generator=generator)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.input_ids[i], "labels": self.labels[i]}


def _train(tmp_path, callback, steps: int = 6, eval_steps: int | None = None):
    from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

    torch.manual_seed(0)
    model = BertForSequenceClassification(
        BertConfig(
            vocab_size=100,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            num_labels=2,
        )
    )
    evaluation = (
        {"eval_strategy": "steps", "eval_steps": eval_steps, "per_device_eval_batch_size": 8} if eval_steps else {}
    )
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=steps,
        per_device_train_batch_size=4,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        **evaluation,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=_RandomTokens(), eval_dataset=_RandomTokens(8), callbacks=[callback]
    )
    return trainer.train()


def test_progress_events_cover_a_real_run(tmp_path):
    from emotion_core.training.progress import ProgressCallback

    events = []
    with DeviceMonitor(interval_s=0.05) as monitor:
        _train(tmp_path, ProgressCallback(events.append, monitor=monitor, min_interval_s=0), eval_steps=3)
    json.dumps(events)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "begin" and kinds[-1] == "end" and kinds.count("evaluate") == 2
    steps = [e for e in events if e["event"] == "step"]
    assert [e["step"] for e in steps] == [1, 2, 3, 4, 5, 6]  # one per step, increasing
    assert all(e["loss"] is not None and e["learning_rate"] is not None for e in steps)
    assert all(e["eta_s"] is not None and e["eta_s"] >= 0 for e in steps) and events[0]["eta_s"] is None
    assert [e["fraction"] for e in steps] == sorted(e["fraction"] for e in steps)
    evaluation = next(e for e in events if e["event"] == "evaluate")
    assert evaluation["step"] == 3 and "eval_loss" in evaluation["metrics"]
    end = events[-1]
    assert end["fraction"] == 1.0 and end["step"] == end["max_steps"] == 6 and end["eta_s"] == 0
    assert end["device"]["kind"] == "cpu" and end["device"]["rss_gib"] > 0 and end["elapsed_s"] >= 0


def test_steps_are_throttled(tmp_path):
    from emotion_core.training.progress import ProgressCallback

    events = []
    _train(tmp_path, ProgressCallback(events.append, min_interval_s=3600))
    assert [e["event"] for e in events] == ["begin", "end"] and events[-1]["device"] is None


def test_a_failing_reporter_never_stops_training(tmp_path, caplog):
    from emotion_core.training.progress import ProgressCallback

    def broken(event):
        raise RuntimeError("the progress sink is down")

    with caplog.at_level(logging.WARNING, logger="emotion_core.training.progress"):
        output = _train(tmp_path, ProgressCallback(broken, min_interval_s=0))
    assert output.global_step == 6
    assert sum("progress report failed" in r.message for r in caplog.records) == 1  # warned once
