"""The model card (``README.md`` with the hub's YAML metadata) of an exported run."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from emotion_core.files import atomic_write_text

HEADLINE = ("macro_f1", "micro_f1", "weighted_f1", "jaccard_samples", "subset_accuracy")
"""Test metrics listed in the card and its ``model-index``."""


def _test_metrics(run) -> dict:
    """The run's test metrics at its own threshold policy ({} when the run has no test split)."""
    metrics = run.metrics()
    return metrics.get("test", {}).get(run.manifest.get("threshold_policy"), {}) or {}


def card_metadata(run, test: dict) -> dict:
    """The hub's YAML front matter: license placeholder, library, pipeline tag, tags, datasets, model-index."""
    dataset = run.config.data.dataset
    return {
        "license": "other",  # placeholder: set it to the base model's and the data's licence before publishing
        "library_name": "transformers",
        "pipeline_tag": "text-classification",
        "tags": ["emotion", "multi-label-classification", "emotion-pipeline", run.config.model.family],
        "datasets": [dataset],
        "model-index": [
            {
                "name": run.run_id,
                "results": [
                    {
                        "task": {"type": "text-classification", "name": "Multi-label emotion classification"},
                        "dataset": {"type": dataset, "name": dataset, "split": "test"},
                        "metrics": [
                            {"type": name, "value": round(float(test[name]), 4), "name": f"test {name}"}
                            for name in HEADLINE
                            if name in test
                        ],
                    }
                ],
            }
        ],
    }


def _calibration_lines(calibration: dict | None) -> list[str]:
    if calibration is None:
        return [
            "Not calibrated in this export (exported with `--no-calibration`, or the run's data was not "
            "available). Probabilities are `sigmoid(logits)`."
        ]
    lines = [
        "Per-label temperatures fitted on the validation split only (`emotion_temperatures` in the config); "
        "calibrated probabilities are `sigmoid(logit / T)`, used with `emotion_calibrated_thresholds`.",
        "",
    ]
    ece, nll = calibration.get("ece", {}).get("validation"), calibration.get("nll", {}).get("validation")
    if ece and nll:
        lines += [
            "| validation | before | after |",
            "|---|---|---|",
            f"| ECE (flattened) | {ece['before']['flat']:.4f} | {ece['after']['flat']:.4f} |",
            f"| ECE (mean per label) | {ece['before']['per_label_mean']:.4f} | {ece['after']['per_label_mean']:.4f} |",
            f"| NLL | {nll['before']:.4f} | {nll['after']:.4f} |",
        ]
    return lines


PEFT_LOAD = (
    "import json\nfrom peft import AutoPeftModelForSequenceClassification\n"
    "kw = json.load(open('DIR/emotion_export.json'))['load_kwargs']\n"
    "model = AutoPeftModelForSequenceClassification.from_pretrained('DIR', **kw)"
)
"""How to load an exported adapter (``DIR``: the export folder)."""
PIPELINE_LOAD = (
    "from transformers import pipeline\n"
    "clf = pipeline('text-classification', model='DIR', top_k=None, truncation=True)\n"
    "clf(['I am so happy for you!'])  # sigmoid probabilities per label"
)
"""How to load an exported full model (``DIR``: the export folder)."""
LIMITS = [
    "- Research and analysis of emotions expressed in short English texts similar to the training data.",
    "- Not for decisions about people (hiring, health, moderation without review); emotion labels are "
    "subjective and annotator agreement is modest.",
    "- Quality drops on other domains, languages, long texts (truncated), sarcasm and rare emotions "
    "(see the per-label metrics in the run).",
]
"""The card's "Intended use and limits" section."""


def _intro_lines(run, test: dict, kind: str, model_type: str) -> list[str]:
    """Front matter, title and the "Use" section."""
    front = yaml.safe_dump(card_metadata(run, test), sort_keys=False, allow_unicode=True)
    return [
        "---",
        front.rstrip(),
        "---",
        "",
        f"# {run.config.name}: multi-label emotion classifier",
        "",
        f"Run `{run.run_id}` of emotion-pipeline, exported as a `{kind}` folder ({model_type}). "
        f"{run.config.description or ''}".rstrip(),
        "",
        "## Use",
        "",
        "```python",
        PEFT_LOAD if kind.startswith("peft") else PIPELINE_LOAD,
        "```",
        "",
        f"Texts are truncated at {run.config.model.max_length} tokens, as in training (pass `truncation=True`).",
    ]


def _data_lines(run) -> list[str]:
    """The "Data" and "Labels" sections."""
    data = run.manifest.get("data", {})
    return [
        "## Data",
        "",
        f"- dataset: `{data.get('dataset')}`; data sha256: `{data.get('hash')}`",
        f"- rows: {json.dumps(data.get('rows', {}))}",
        "",
        "## Labels",
        "",
        ", ".join(f"`{n}`" for n in run.schema.names),
    ]


def _metric_lines(run, test: dict) -> list[str]:
    """The "Test metrics" section."""
    return [
        "## Test metrics",
        "",
        f"At the run's `{run.manifest.get('threshold_policy')}` thresholds (tuned on validation). Confidence intervals "
        "(bootstrap) are in the comparison report of the night that trained this run; the run itself holds point "
        "estimates.",
        "",
        "| metric | test |",
        "|---|---|",
        *[f"| {n} | {float(test[n]):.4f} |" for n in HEADLINE if n in test],
    ]


def _threshold_lines(run, calibration: dict | None) -> list[str]:
    """The "Thresholds" section: per label, the run's threshold and, when calibrated, temperature and threshold."""
    names = list(run.schema.names)
    thresholds = dict(zip(names, map(float, run.thresholds())))
    calibrated = (calibration or {}).get("thresholds") or {}
    temps = (calibration or {}).get("temperatures") or {}
    return [
        "## Thresholds",
        "",
        "| label | threshold | temperature | calibrated threshold |",
        "|---|---|---|---|",
        *[f"| {n} | {thresholds[n]:.3f} | {temps.get(n, '-')} | {calibrated.get(n, '-')} |" for n in names],
    ]


def _export_lines(model_type: str, check: float, base: str | None) -> list[str]:
    """The "Export" section: how the head was mapped, the export check, the adapter's base model."""
    return [
        "## Export",
        "",
        f"The head is the run's linear layer on the first token (`pooling: cls`), written into {model_type}'s own "
        "classification head (`emotion_head_mapping` in the config). Checked at export: max |logit difference| "
        f"to the run's own model on 5 probe texts = {check:.2e}.",
        *(
            [f"Adapter base model: `{base}` (the run's base; load needs the `load_kwargs` in `emotion_export.json`)."]
            if base
            else []
        ),
    ]


def card_text(run, *, kind: str, model_type: str, check: float, calibration: dict | None, base: str | None) -> str:
    """The whole card: front matter, then data, labels, metrics, calibration, thresholds, config, use and limits."""
    test = _test_metrics(run)
    config = yaml.safe_dump(run.config.model_dump(mode="json"), sort_keys=False).rstrip()
    lines = [
        *_intro_lines(run, test, kind, model_type),
        "",
        *_data_lines(run),
        "",
        *_metric_lines(run, test),
        "",
        "## Calibration",
        "",
        *_calibration_lines(calibration),
        "",
        *_threshold_lines(run, calibration),
        "",
        "## Training config",
        "",
        "```yaml",
        config,
        "```",
        "",
        *_export_lines(model_type, check, base),
        "",
        "## Intended use and limits",
        "",
        *LIMITS,
    ]
    return "\n".join(lines) + "\n"


def write_card(path: Path, run, **kwargs) -> None:
    """Write the card to ``path`` atomically."""
    atomic_write_text(Path(path), card_text(run, **kwargs))


# --------------------------------------------------------------------------- ensembles


def ensemble_card_metadata(ensemble) -> dict:
    """The hub's YAML front matter of an exported ensemble: labels, members, method, the metrics it has."""
    manifest = ensemble.manifest
    dataset = (manifest.get("data") or {}).get("dataset")
    policy = manifest.get("threshold_policy")
    summary = manifest.get("summary") or {}
    results = []
    for split in ("validation", "test"):
        value = ((summary.get(split) or {}).get(policy) or {}).get("macro_f1")
        if isinstance(value, (int, float)):
            results.append(
                {
                    "task": {"type": "text-classification", "name": "Multi-label emotion classification"},
                    "dataset": {"type": dataset, "name": dataset, "split": split},
                    "metrics": [{"type": "macro_f1", "value": round(float(value), 4), "name": f"{split} macro_f1"}],
                }
            )
    return {
        "license": "other",  # placeholder: set it to the members' base models' and the data's licences
        "library_name": "emotion-pipeline",
        "pipeline_tag": "text-classification",
        "tags": ["emotion", "multi-label-classification", "emotion-pipeline", "ensemble"],
        "datasets": [dataset] if dataset else [],
        "labels": list(ensemble.schema.names),
        "ensemble": {
            "method": ensemble.combiner.method,
            "members": [str(m) for m in ensemble.member_ids],
            "weights": None if ensemble.combiner.weights is None else [float(w) for w in ensemble.combiner.weights],
        },
        "model-index": [{"name": str(ensemble.run_id), "results": results}],
    }


def _ensemble_member_lines(ensemble, members) -> list[str]:
    """The "Members" table: run id, config, family, weight (weighted mean) and each label's temperature."""
    names = list(ensemble.schema.names)
    weights = ensemble.combiner.weights
    lines = ["| member run | config | family | weight | temperatures |", "|---|---|---|---|---|"]
    for k, run in enumerate(members):
        weight = "-" if weights is None else f"{float(weights[k]):.4f}"
        temps = ", ".join(f"{n} {float(t):.3f}" for n, t in zip(names, ensemble.combiner.temperatures[k]))
        lines.append(f"| `{run.run_id}` | {run.config.name} | {run.config.model.family} | {weight} | {temps} |")
    return lines


def ensemble_card_text(ensemble, members) -> str:
    """The card of an exported ensemble (``ensemble_package.EnsembleRun`` and its member ``Run``s)."""
    front = yaml.safe_dump(ensemble_card_metadata(ensemble), sort_keys=False, allow_unicode=True)
    manifest = ensemble.manifest
    fit = manifest.get("ensemble") or {}
    method = ensemble.combiner.method
    rule = (
        "weighted mean of the members' calibrated probabilities (`sigmoid(logit / T)`)"
        if method == "weighted_mean"
        else "logistic stacking of the members' calibrated probabilities (coefficients in `ensemble.json`)"
    )
    names = list(ensemble.schema.names)
    package = f"runs/{ensemble.run_id}"
    lines = [
        "---",
        front.rstrip(),
        "---",
        "",
        f"# {manifest.get('config_name') or ensemble.run_id}: multi-label emotion ensemble",
        "",
        f"Ensemble `{ensemble.run_id}` of emotion-pipeline, exported with its {len(members)} member runs. "
        "It needs no artefact store: every file is checked against its run's `manifest.json` (sha256) when loaded.",
        "",
        "## Use",
        "",
        "```bash",
        "emotion predict DIR texts.csv --out predictions.csv   # 0/1 per label + probabilities",
        "emotion serve DIR                                     # HTTP JSON API (docs/serving.md)",
        "emotion submit DIR --data test.txt --out submission.csv",
        "```",
        "",
        f"## Method\n\n{method}: {rule}, then one threshold per label (policy `{manifest.get('threshold_policy')}`). "
        f"Weights (or stacker) and thresholds cross-fitted on validation ({fit.get('folds', '?')} folds).",
        "",
        "## Labels",
        "",
        ", ".join(f"`{n}`" for n in names),
        "",
        "## Members",
        "",
        *_ensemble_member_lines(ensemble, members),
        "",
        "## Thresholds",
        "",
        "| label | threshold |",
        "|---|---|",
        *[f"| {n} | {float(t):.3f} |" for n, t in zip(names, ensemble.combiner.thresholds)],
        "",
        "## Metrics",
        "",
        f"Macro-F1 at its thresholds, as recorded in `{package}/manifest.json` (validation: out of fold).",
        "",
        "| split | macro-F1 |",
        "|---|---|",
        *[
            f"| {m['dataset']['split']} | {m['metrics'][0]['value']:.4f} |"
            for m in ensemble_card_metadata(ensemble)["model-index"][0]["results"]
        ],
        "",
        "## Layout",
        "",
        f"`export.json` names the package; `{package}/` holds it (`ensemble.json`: method, members, temperatures, "
        "weights or stacker, thresholds); `runs/<member>/` holds each member run.",
        "",
        "## Intended use and limits",
        "",
        *LIMITS,
        "- Every text goes through every member: latency and memory are the members' sum.",
    ]
    return "\n".join(lines) + "\n"
