"""Export a run as a Hugging Face folder that ``transformers`` / ``peft`` load without remote code.

Features
- Full fine-tuned encoder runs -> an ``AutoModelForSequenceClassification`` folder (thresholds and
  temperatures under ``emotion_*`` config keys) with a model card; LoRA/IA3 runs -> a ``peft`` folder,
  or merged (``merge=True``).
- The project's head is mapped exactly into each architecture's own classification head.
- Checked before it is written (logits on ``PROBE_TEXTS`` within ``LOGIT_TOLERANCE``); written atomically.

Limits
- Only encoder runs with ``model.pooling: cls``; FFNN, linear, zero-shot, decoder and QLoRA runs are refused.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from emotion_core.errors import EmotionError
from emotion_core.files import write_json

PROBE_TEXTS = (
    "I am so happy for you, congratulations!",
    "This is outrageous, I am furious.",
    "I miss her every day.",
    "Wow, I did not see that coming.",
    "ok",
)
"""Texts the export check runs through the run's model and the exported one."""
LOGIT_TOLERANCE = 1e-4
"""Largest |logit difference| on ``PROBE_TEXTS`` an export may have (float32 matmul order: ~1e-6)."""
TANH_SCALE = 2.0**-20
"""Scale before tanh (BERT pooler, RoBERTa head): tanh(x) = x to float32 precision for |x| < 6e-5."""
ODD_SPLIT_ACTIVATIONS = ("relu", "gelu", "gelu_new", "gelu_python", "gelu_pytorch_tanh", "silu", "swish", "quick_gelu")
"""Activations ``x * s(x)`` with ``s(x) + s(-x) = 1``, so ``act(z) - act(-z) = z``."""
HEAD_MODULES = {
    "bert": ["pooler", "classifier"],
    "roberta": ["classifier"],
    "distilbert": ["pre_classifier", "classifier"],
    "deberta-v2": ["pooler", "classifier"],
}
"""Modules of each ``*ForSequenceClassification`` that carry the mapped head (the adapter's ``modules_to_save``)."""
PORTABLE_BASES = {"minilm": "sentence-transformers/all-MiniLM-L6-v2"}
"""Bundled offline aliases -> the hub id an adapter export names as its base."""


class ExportError(EmotionError):
    """A run cannot be exported as asked; the message says why and what to do instead."""


def check_destination(dest: str | Path) -> Path:
    """``dest`` as a folder that does not exist yet (or is empty); ``ExportError`` otherwise."""
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ExportError(f"{dest}: already exists and is not an empty folder; export writes a new folder")
    return dest


@contextmanager
def building(dest: Path) -> Iterator[Path]:
    """A fresh folder beside ``dest`` (``check_destination``'d) to build an export in; renamed to ``dest`` when the
    block succeeds, removed when it fails: ``dest`` never holds half an export."""
    tmp = dest.parent / f".{dest.name}.export-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if dest.exists():
            dest.rmdir()  # empty (checked by check_destination)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_exportable(run, merge: bool) -> None:
    """Refuse, with the reason, runs whose model no standard ``transformers`` class computes."""
    cfg = run.config
    family = cfg.model.family
    if family != "encoder":
        raise ExportError(
            f"run {run.run_id}: export supports encoder runs (full fine-tune, LoRA, IA3); a {family} run "
            "ships as its run folder (use `emotion predict` with it)"
        )
    if cfg.model.pooling != "cls":
        raise ExportError(
            f"run {run.run_id}: model.pooling is '{cfg.model.pooling}' (attention-masked mean over tokens); "
            "the standard "
            "AutoModelForSequenceClassification heads read the first token only, so an export would compute other "
            "probabilities, and remote code is not allowed. Retrain with model.pooling: cls to export; this run "
            "ships as its run folder"
        )
    adapter = cfg.model.adapter
    if adapter is not None and adapter.method == "qlora":
        raise ExportError(
            f"run {run.run_id}: QLoRA runs cannot be exported (4-bit base; merging re-quantises the update)"
        )


def _model_type(body) -> str:
    model_type = body.config.model_type
    if model_type not in HEAD_MODULES:
        raise ExportError(f"architecture '{model_type}': export supports {', '.join(HEAD_MODULES)}")
    return model_type


def label_config(config, schema, model_type: str):
    """``config`` as a multi-label classifier over ``schema``'s labels."""
    names = list(schema.names)
    if len(names) * 2 > config.hidden_size:
        raise ExportError(
            f"{len(names)} labels need a hidden size of at least {2 * len(names)}; the body has {config.hidden_size}"
        )
    config.num_labels = len(names)
    config.id2label = dict(enumerate(names))
    config.label2id = {name: i for i, name in enumerate(names)}
    config.problem_type = "multi_label_classification"
    config.architectures = None
    if model_type == "deberta-v2":
        act = getattr(config, "pooler_hidden_act", "gelu")
        size = getattr(config, "pooler_hidden_size", config.hidden_size)
        if act not in ODD_SPLIT_ACTIVATIONS or size < 2 * len(names):
            raise ExportError(f"deberta-v2 pooler ({act}, size {size}) cannot carry the head exactly")
    return config


def set_head(model, model_type: str, weight, bias) -> None:
    """Write the run's linear head ``(weight, bias)`` into ``model``'s own classification head (see module doc)."""
    import torch

    n = weight.shape[0]
    with torch.no_grad():
        if model_type in ("bert", "roberta"):  # dense(scaled) -> tanh -> classifier(unscaled)
            dense, out = (
                (model.bert.pooler.dense, model.classifier)
                if model_type == "bert"
                else (model.classifier.dense, model.classifier.out_proj)
            )
            dense.weight.zero_()
            dense.bias.zero_()
            dense.weight[:n] = weight * TANH_SCALE
            out.weight.zero_()
            out.weight[:, :n] = torch.eye(n) / TANH_SCALE
            out.bias.copy_(bias)
            return
        # dense = [W; -W] -> act -> classifier [I, -I]: act(z) - act(-z) = z
        dense, out = (
            (model.pre_classifier, model.classifier)
            if model_type == "distilbert"
            else (model.pooler.dense, model.classifier)
        )
        dense.weight.zero_()
        dense.bias.zero_()
        dense.weight[:n], dense.weight[n : 2 * n] = weight, -weight
        out.weight.zero_()
        out.weight[:, :n], out.weight[:, n : 2 * n] = torch.eye(n), -torch.eye(n)
        out.bias.copy_(bias)


def _probe_logits(model, tokenizer, max_length: int) -> np.ndarray:
    import torch

    batch = tokenizer(list(PROBE_TEXTS), truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    with torch.inference_mode():
        out = model(**batch)
    logits = out["logits"] if isinstance(out, dict) else out.logits
    return logits.float().numpy()


def _check_same(run, family, exported, tokenizer) -> float:
    """Max |logit difference| between the run's model and ``exported`` on ``PROBE_TEXTS``; ExportError if too large."""
    exported.eval()
    ours = _probe_logits(family.model, tokenizer, run.config.model.max_length)
    theirs = _probe_logits(exported, tokenizer, run.config.model.max_length)
    diff = float(np.max(np.abs(ours - theirs)))
    if not diff <= LOGIT_TOLERANCE:
        raise ExportError(
            f"run {run.run_id}: the exported model's logits differ from the run's by {diff:.3g} "
            f"(> {LOGIT_TOLERANCE}); nothing was written"
        )
    return diff


def _full_model(body, schema, head):
    """A plain ``AutoModelForSequenceClassification`` holding ``body``'s weights and the mapped ``head``."""
    import copy

    import torch
    from transformers import AutoModelForSequenceClassification

    model_type = _model_type(body)
    config = label_config(copy.deepcopy(body.config), schema, model_type)
    model = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
    missing, unexpected = model.base_model.load_state_dict(body.state_dict(), strict=False)
    stray = [k for k in list(missing) + list(unexpected) if not k.startswith("pooler.")]
    if stray:
        raise ExportError(f"architecture '{model_type}': body weights do not fit its classifier: {stray[:5]}")
    set_head(model, model_type, head.weight.detach(), head.bias.detach())
    return model, model_type


def _adapter_model(run, body, schema, head):
    """The run's adapter on a ``*ForSequenceClassification`` base, head mapped and kept in ``modules_to_save``."""
    import torch
    from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from emotion_core.models.adapters import peft_config
    from emotion_core.models.resolve import resolve_model

    spec = run.config.model
    source = resolve_model(spec.model, spec.revision, False)
    model_type = _model_type(body.get_base_model())
    config = label_config(AutoConfig.from_pretrained(source, revision=spec.revision), schema, model_type)
    model = AutoModelForSequenceClassification.from_pretrained(
        source, revision=spec.revision, config=config, use_safetensors=True, dtype=torch.float32
    )
    set_head(model, model_type, head.weight.detach(), head.bias.detach())
    lora = peft_config(spec.adapter, model_type, HEAD_MODULES[model_type], task_type="SEQ_CLS")
    wrapped = get_peft_model(model, lora)
    prefix, inner = "base_model.model.", f"base_model.model.{model.base_model_prefix}."
    theirs = dict(wrapped.named_parameters())
    copied = 0
    with torch.no_grad():
        for name, param in body.named_parameters():
            if param.requires_grad or "lora_" in name or "ia3_" in name:
                target = inner + name.removeprefix(prefix)
                if target not in theirs:
                    raise ExportError(f"adapter weight '{name}' has no place in {type(model).__name__}")
                theirs[target].copy_(param)
                copied += 1
    if copied == 0:
        raise ExportError(f"run {run.run_id}: no adapter weights found in the saved body")
    return wrapped, model_type


def _base_reference(run, base_model: str | None) -> str:
    spec = run.config.model
    if base_model:
        return base_model
    if spec.model in PORTABLE_BASES:
        return PORTABLE_BASES[spec.model]
    path = Path(spec.model).expanduser()
    return str(path.resolve()) if path.exists() else spec.model


def export_run(
    run_ref, dest: str | Path, *, merge: bool = False, base_model: str | None = None, calibration: dict | None = None
) -> dict:
    """Export ``run_ref`` to the new folder ``dest``; returns what was written (kind, check, paths).

    ``calibration``: ``calibration.calibrate_run``'s dict (temperatures, thresholds) or None.
    ``base_model``: the base an adapter export names (default: the run's model, bundled aliases as hub ids).
    """
    import torch
    from transformers import AutoTokenizer

    from emotion_core.models import load_family
    from emotion_core.runs import read_run

    dest = check_destination(dest)
    run = read_run(run_ref)
    check_exportable(run, merge)
    family = load_family(run.config, run.schema, run.folder / "model")
    tokenizer = AutoTokenizer.from_pretrained(run.folder / "model" / "tokenizer")
    tokenizer.model_max_length = run.config.model.max_length  # the run truncates here; so must the export
    exported, model_type, kind = _transformers_model(run, family, merge)
    with torch.no_grad():
        diff = _check_same(run, family, exported, tokenizer)
    extras = emotion_keys(run, calibration, model_type, diff, kind)
    with building(dest) as tmp:
        _save_export(tmp, run, exported, tokenizer, extras, kind, base_model)
        _write_card(tmp, run, kind, model_type, diff, calibration, base_model)
    return {
        "run_id": run.run_id,
        "kind": kind,
        "model_type": model_type,
        "folder": str(dest),
        "max_abs_logit_diff": diff,
    }


def _transformers_model(run, family, merge: bool):
    """``(model, model_type, kind)``: the run's body and head as a transformers (or peft) sequence classifier."""
    body, head = family.model.body, family.model.head
    adapter = run.config.model.adapter
    if adapter is not None and merge:
        import copy

        body = copy.deepcopy(body).merge_and_unload()
    if adapter is not None and not merge:
        exported, model_type = _adapter_model(run, body, run.schema, head)
        return exported, model_type, f"peft-{adapter.method}"
    exported, model_type = _full_model(body, run.schema, head)
    return exported, model_type, "merged" if adapter is not None else "full"


def _save_export(folder: Path, run, exported, tokenizer, extras: dict, kind: str, base_model: str | None) -> None:
    """Weights (safetensors), config with the ``emotion_*`` keys (peft: ``emotion_export.json``), tokenizer."""
    if kind.startswith("peft"):
        exported.save_pretrained(str(folder), safe_serialization=True)
        _fix_adapter_config(folder / "adapter_config.json", _base_reference(run, base_model), run.config.model.revision)
        load_kwargs = {
            "num_labels": len(run.schema),
            "id2label": extras.pop("id2label"),
            "label2id": extras.pop("label2id"),
            "problem_type": "multi_label_classification",
        }
        write_json(folder / "emotion_export.json", {**extras, "load_kwargs": load_kwargs})
    else:
        for key, value in extras.items():
            if key not in ("id2label", "label2id"):
                setattr(exported.config, key, value)
        exported.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))


def _write_card(
    folder: Path, run, kind: str, model_type: str, diff: float, calibration: dict | None, base_model: str | None
) -> None:
    """The export's model card (``README.md``)."""
    from emotion_core.model_card import write_card

    write_card(
        folder / "README.md",
        run,
        kind=kind,
        model_type=model_type,
        check=diff,
        calibration=calibration,
        base=_base_reference(run, base_model) if kind.startswith("peft") else None,
    )


def emotion_keys(run, calibration: dict | None, model_type: str, diff: float, kind: str) -> dict:
    """The ``emotion_*`` facts an export carries (thresholds, temperatures, run id, head mapping, check)."""
    names = list(run.schema.names)
    mapping = "tanh-scaled" if model_type in ("bert", "roberta") else "odd-split"
    return {
        "id2label": dict(enumerate(names)),
        "label2id": {n: i for i, n in enumerate(names)},
        "emotion_run_id": run.run_id,
        "emotion_threshold_policy": run.manifest.get("threshold_policy"),
        "emotion_thresholds": dict(zip(names, map(float, run.thresholds()))),
        "emotion_temperatures": None if calibration is None else calibration["temperatures"],
        "emotion_calibrated_thresholds": None if calibration is None else calibration["thresholds"],
        "emotion_probabilities": "sigmoid(logits): uncalibrated; calibrated = sigmoid(logits / emotion_temperatures)",
        "emotion_pooling": run.config.model.pooling,
        "emotion_head_mapping": mapping,
        "emotion_export_kind": kind,
        "emotion_export_max_abs_logit_diff": diff,
    }


def _fix_adapter_config(path: Path, base: str, revision: str | None) -> None:
    config = json.loads(path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base
    config["revision"] = revision
    write_json(path, config)


def run_calibration(run) -> dict:
    """The run's shipped calibration (``calibration.json``); for a run trained before it shipped, temperatures
    and thresholds fitted now on its validation split (as ``emotion submit`` does for such runs)."""
    from emotion_core.analysis import DataCache, fit_validation_calibration

    shipped = run.calibration()
    return shipped.as_report() if shipped is not None else fit_validation_calibration(run, DataCache().for_run(run))


def push_to_hub(folder: str | Path, repo: str, token: str | None = None) -> str:
    """Upload an exported ``folder`` to the hub repo ``repo`` (created if missing); returns the commit URL.

    The token comes from ``token`` or ``$HF_TOKEN``; it is never logged. Network failures become ``ExportError``.
    """
    from huggingface_hub import HfApi

    token = token or os.environ.get("HF_TOKEN") or None
    if token is None:
        raise ExportError("--push-to-hub needs a Hugging Face token: set HF_TOKEN")
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id=repo, exist_ok=True)
        commit = api.upload_folder(folder_path=str(folder), repo_id=repo, commit_message="emotion export")
    except Exception as exc:  # offline, refused token, bad repo id: one clear line, no token in it
        detail = str(exc).splitlines()[0] if str(exc) else "no detail"
        raise ExportError(
            f"push to the hub repo '{repo}' failed ({type(exc).__name__}: {detail}); the export stays in {folder}"
        ) from None
    return str(getattr(commit, "commit_url", commit))
