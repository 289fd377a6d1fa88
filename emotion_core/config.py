"""Typed, validated configuration: one YAML file per model run, and config sets that list them.

Features
- ``RunConfig`` = ``model`` (a family of ``model_configs.FAMILY_REGISTRY``) + ``data`` + ``training``
  (+ ``resources``, ``explain``). Every field has a docstring (``emotion show-config``).
- Validated on construction: unknown keys, wrong types and impossible values raise ``ConfigError`` naming
  the file and the dotted field (``training.batch_size``).
- A ``ConfigSet`` lists config files with ``overrides`` deep-merged into each before validation.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from emotion_core.config_base import StrictConfig as _Strict
from emotion_core.errors import ConfigError
from emotion_core.files import not_regular
from emotion_core.model_configs import FAMILIES, ModelConfig

Seed = Annotated[int, Field(ge=0, lt=2**32)]
"""A random seed: numpy accepts 0 <= seed < 2**32 only."""


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key repeated in one mapping (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # '<<' merges may repeat keys on purpose
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: SafeLoader reports it itself
                    continue
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"duplicate key {key!r} (first at line {first + 1})",
                        key_node.start_mark,
                    )
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def load_yaml(text: str):
    """Parse YAML text like ``yaml.safe_load``, refusing duplicate keys (every config and set is read through it)."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)


Metric = Literal["macro_f1", "micro_f1", "jaccard_samples"]
"""A metric that can tune thresholds, choose checkpoints and rank runs (``metrics.RANKING_METRICS``)."""


class PreprocessConfig(_Strict):
    """Tweet normalisation applied to every text, in training and at prediction (``data/preprocess.py``)."""

    users: bool = True
    """``@someone`` -> ``@user``."""
    urls: bool = True
    """``http(s)://...`` and ``www....`` -> ``http``."""
    hashtags: bool = True
    """``#HappyDay`` -> ``happy day`` (split at case changes and digits; an all-lowercase tag is kept as one word)."""
    emoji: Literal["keep", "text"] = "keep"
    """``keep`` the emoji characters (subword tokenizers know many), or ``text``: replace each by its Unicode name
    (``😂`` -> `` face with tears of joy ``)."""


class DataConfig(_Strict):
    """Which data a run reads and how it is split."""

    dataset: str = "goemotions"
    """A registered dataset (``emotion_core/data/registry.py``): ``goemotions`` (TSVs), ``semeval2018-ec`` (Kaggle-style
    ID/Tweet/0-1 columns) or ``tabular`` (any CSV/TSV/Parquet)."""
    metric: Metric | None = None
    """Tabular only: the metric that tunes thresholds, chooses checkpoints and ranks runs (unset: ``macro_f1``). Named
    datasets use their official metric (GoEmotions ``macro_f1``, SemEval E-c ``jaccard_samples``)."""
    preprocess: PreprocessConfig | None = None
    """Tweet normalisation (users, URLs, hashtags, emoji); unset: texts as read."""
    path: str | None = None
    """File or folder to read. Unset: ``$EMOTION_DATA_DIR/<dataset>`` (goemotions, semeval2018-ec), else the hub."""
    store_ref: str | None = None
    """A dataset uploaded with ``emotion data push`` (instead of ``path``): ``sha256:<id>`` in the run's store, or
    ``<store>/datasets/sha256/<id>``. Read into the cache and checked file by file against its sha256."""
    text_column: str = "text"
    """Tabular only: the column holding the text."""
    id_column: str | None = None
    """Tabular only: a unique id column, copied to prediction files. Unset: the 1-based row number."""
    label_columns: tuple[str, ...] | None = None
    """Tabular only: the 0/1 label columns, in order. Unset: every column except text and id."""
    ignore_columns: tuple[str, ...] = ()
    """Tabular only: columns present in the file that are neither text, id nor labels."""
    validation_fraction: float = Field(0.1, gt=0.0, lt=0.5)
    """Share of the training rows carved (seeded, multi-label stratified) into validation when the data has no
    validation split."""
    test_fraction: float = Field(0.1, gt=0.0, lt=0.5)
    """Share of the training rows carved into test when the data has no labelled test split."""
    max_train_samples: int | None = Field(None, gt=0)
    """Use a fixed seeded subset of at most this many training rows (demos, smoke runs)."""
    max_validation_samples: int | None = Field(None, gt=0)
    """Use a fixed seeded subset of at most this many validation rows."""
    max_test_samples: int | None = Field(None, gt=0)
    """Use a fixed seeded subset of at most this many test rows."""
    seed: Seed = 13
    """Seed of every split and subset: the same data and seed give the same rows."""
    invalid_rows: Literal["error", "drop"] = "error"
    """``error``: a bad row (empty text, bad label, duplicate id) stops the load naming the row. ``drop``: it is
    removed and counted, with its reason, in the data report."""

    @field_validator("dataset")
    @classmethod
    def _registered(cls, value: str) -> str:
        from emotion_core.data.registry import DATASETS  # lazy: the readers import this module

        if value not in DATASETS:
            raise ValueError(f"unknown dataset {value!r}; registered: {', '.join(DATASETS)}")
        return value

    @field_validator("store_ref")
    @classmethod
    def _store_ref(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from emotion_core.data.pushed import parse_ref  # lazy: the data package imports this module

        parse_ref(value)
        return value.strip().rstrip("/")

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if self.path is not None and self.store_ref is not None:
            raise ValueError("set data.path or data.store_ref, not both")
        return self


class LossConfig(_Strict):
    """Training loss over the label logits; ``kind`` picks one, ``combined`` a weighted sum."""

    kind: Literal["bce", "bce_pos_weight", "focal", "asl", "combined"] = "bce"
    """``bce``; ``bce_pos_weight`` (positives weighted by negatives/positives per label); ``focal``; ``asl``
    (asymmetric); ``combined``."""
    pos_weight_max: float = Field(30.0, ge=1.0)
    """Cap on the per-label positive weight (rare labels would otherwise get weights in the hundreds)."""
    focal_gamma: float = Field(2.0, ge=0.0)
    """Focal loss focusing parameter."""
    focal_alpha: float | None = Field(None, gt=0.0, lt=1.0)
    """Focal loss weight of positives (negatives get 1 - alpha); unset: no weighting."""
    asl_gamma_pos: float = Field(0.0, ge=0.0)
    """ASL focusing on positives."""
    asl_gamma_neg: float = Field(4.0, ge=0.0)
    """ASL focusing on negatives."""
    asl_clip: float = Field(0.05, ge=0.0, lt=1.0)
    """ASL probability margin: easy negatives below it contribute nothing."""
    weights: dict[Literal["bce", "bce_pos_weight", "focal", "asl"], float] = {}
    """``combined`` only: loss kind -> weight, e.g. ``{bce: 0.5, asl: 0.5}``."""
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5)
    """Targets become ``y (1 - e) + e / 2`` before any loss kind (0: off)."""

    @model_validator(mode="after")
    def _combined_weights(self) -> LossConfig:
        weights = self.weights.values()
        if self.kind == "combined" and (not self.weights or any(w < 0 for w in weights) or sum(weights) <= 0):
            raise ValueError("loss.kind 'combined' needs loss.weights with non-negative weights summing to > 0")
        if self.kind != "combined" and self.weights:
            raise ValueError("loss.weights applies only to loss.kind 'combined'")
        return self


class TrainingConfig(_Strict):
    """Optimisation settings shared by every trained family."""

    epochs: float = Field(2.0, gt=0)
    """Passes over the training rows (fractions allowed)."""
    batch_size: int = Field(32, gt=0)
    """Training rows per optimizer step."""
    eval_batch_size: int = Field(128, gt=0)
    """Rows per forward pass when predicting."""
    learning_rate: float = Field(5e-5, gt=0, lt=1)
    """Peak learning rate of the pretrained body (and of every layer of a from-scratch model)."""
    head_learning_rate: float = Field(1e-3, gt=0, lt=1)
    """Peak learning rate of the newly initialised classification head."""
    layer_decay: float = Field(1.0, gt=0, le=1)
    """Layer-wise learning-rate decay of a pretrained body with numbered blocks: block i of n learns at
    ``learning_rate * layer_decay ** (n - i)``, the embeddings one step lower (1: every body weight at
    ``learning_rate``; no effect on models without numbered blocks)."""
    weight_decay: float = Field(0.01, ge=0)
    """Decoupled weight decay (not applied to biases and norms)."""
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    """Share of steps with linear warm-up; then linear decay to zero."""
    max_grad_norm: float = Field(1.0, gt=0)
    """Gradient clipping norm."""
    group_by_length: bool = True
    """Batch texts of similar length together (less padding: ~1.8x faster on CPU for MiniLM)."""
    early_stopping_patience: int | None = Field(2, ge=1)
    """Stop after this many evaluations without a better validation macro-F1; unset: never stop early."""
    evaluations_per_epoch: int = Field(1, ge=1, le=100)
    """Validation passes per epoch (each one can become the best checkpoint)."""
    init_bias_from_prior: bool = True
    """Start each label's output bias at the logit of its training prior (avoids the collapse to 'no label')."""
    loss: LossConfig = LossConfig()
    """Training loss (BCE by default)."""
    oversample_rare: float = Field(0.0, ge=0.0, le=1.0)
    """Rare-label oversampling strength: 0 off; 1 repeats rows until every label is about as frequent as the median
    label."""
    max_nonfinite_steps: int = Field(3, ge=1)
    """Stop with an error after this many consecutive optimizer steps with a non-finite loss (or logged gradient norm);
    clipping cannot repair NaN/inf."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """``auto``: bf16 on GPUs that support it, else fp16 on GPU, fp32 on CPU."""
    seed: Seed = 42
    """Seed of initialisation, dropout and batch order."""
    checkpoint_every_steps: int = Field(200, ge=0)
    """Every this many optimizer steps, save a full training checkpoint (weights or adapter, optimizer, scheduler, RNG,
    trainer state) and upload it to the artefact store under ``checkpoints/<run_id>/``; a run started again with the
    same run id resumes from it, losing at most this many steps. 0: no checkpoints in the store (no resume)."""
    min_batch_size: int = Field(1, ge=1)
    """Smallest per-device batch a GPU out-of-memory error may halve ``batch_size`` down to (gradient accumulation
    doubles each time, so the effective batch stays ``batch_size``); an OOM at this size stops the run with
    ``OutOfMemoryAtMinBatch``."""


class ResourcesConfig(_Strict):
    """What a run needs from the machine that trains it; the orchestrator routes on it."""

    gpu_memory_gb: float = Field(16.0, gt=0, le=1024)
    """GPU memory (GiB) the run needs: it goes to the smallest work queue whose cards have at least this much."""
    gpus: int = Field(1, ge=1, le=64)
    """GPUs (ranks) the run trains on: above 1, ``train-model`` starts that many ranks with ``torchrun`` (one per
    card)."""
    strategy: Literal["ddp", "fsdp"] = "ddp"
    """How several ranks share the model: ``ddp`` (a full copy per rank) or ``fsdp`` (sharded; GPU only)."""


class ExplainConfig(_Strict):
    """SHAP token attributions of a run after training: which test texts, and how many model calls each."""

    n_texts: int = Field(8, ge=0, le=1000)
    """Test texts explained: a seeded sample, the same texts for every model of the data (0: no explanations)."""
    max_evals: int = Field(300, ge=10)
    """Model evaluations (masked copies of a text) per text: more is slower and finer."""
    top_labels: int = Field(3, gt=0)
    """Labels explained per text: those with the highest predicted probability."""
    seed: Seed = 13
    """Seed of the text sample and of shap's tie-breaking."""
    batch_size: int = Field(32, gt=0)
    """Masked texts sent to the model per call."""


class ChampionConfig(_Strict):
    """When a newly trained run replaces the champion of its dataset (nightly retraining)."""

    enabled: bool = True
    """Keep a champion per dataset (dataset + label schema) in the store's registry and gate promotion. False: runs are
    still published and reported, but the registry is neither read nor written."""
    margin: float = Field(0.005, ge=0.0, lt=1.0)
    """Validation score on the dataset's official metric (GoEmotions macro-F1, SemEval E-c Jaccard) a challenger must
    gain over the champion, strictly more than this (absolute: 0.005 = half a point)."""
    alpha: float = Field(0.05, gt=0.0, lt=1.0)
    """Significance level: the paired bootstrap of that test metric (challenger minus champion, same test rows) must
    give a p-value below this."""


class EnsembleConfig(_Strict):
    """How the ensemble of a set's best runs is fitted and when it may rank above them (``emotion_core.ensemble``)."""

    method: Literal["weighted_mean", "stacking"] = "weighted_mean"
    """``weighted_mean``: simplex weights over the members' calibrated probabilities; ``stacking``: a logistic layer
    per label over the members' calibrated logits. Both cross-fitted on validation."""
    folds: int = Field(5, ge=2, le=20)
    """Folds of validation for cross-fitting (fewer when validation has fewer than two rows per fold)."""
    alpha: float = Field(0.05, gt=0.0, lt=1.0)
    """The ensemble ranks above its members only if its out-of-fold macro-F1 beats its best member's with a paired
    bootstrap p-value below this."""
    publish: bool = True
    """Publish the fitted ensemble to the store as a package (``runs/<report>-ensemble-top<k>``) that ``emotion
    predict``/``serve`` and the champion registry can use."""


class ReportConfig(_Strict):
    """How a config set's runs are compared after training (``emotion_core.analysis``)."""

    bootstrap_samples: int = Field(1000, ge=100, le=100_000)
    """Bootstrap resamples of the test rows for F1 confidence intervals and the paired test against the best model."""
    seed: Seed = 0
    """Seed of the bootstrap resamples."""
    ensemble_top_k: int = Field(3, ge=0, le=20)
    """Ensemble the k best runs by validation macro-F1 that share the best one's validation set (0 or 1: none)."""
    ensemble: EnsembleConfig = EnsembleConfig()
    """How the ensemble is fitted (weighted mean or stacking, cross-fitting folds), ranked and published."""
    champion: ChampionConfig = ChampionConfig()
    """Champion/challenger: the set's best run per dataset replaces the registry's champion only if clearly better."""


class RunConfig(_Strict):
    """One training run: a model on a dataset with a recipe."""

    name: str
    """Run-config name: letters, digits, '-', '_' or '.'; used in run ids and reports."""
    description: str = ""
    """Free text shown in reports."""
    model: ModelConfig
    """The model family and its settings."""
    data: DataConfig = DataConfig()
    """The dataset and its splits."""
    training: TrainingConfig = TrainingConfig()
    """The optimisation recipe."""
    threshold_policy: Literal["per_label", "global", "fixed", "shrunk", "global_at_least_one", "auto"] = "per_label"
    """Thresholds used for predictions, tuned on validation for the dataset's metric (``thresholds.py``): per label,
    one global value, 0.5, per label shrunk towards the global value (rare labels), one value + at least one label a
    row, or ``auto``: the one of these four with the best score on held-out folds of validation."""
    threshold_shrinkage: float = Field(20.0, gt=0.0, le=1e6)
    """k of the ``shrunk`` policy: a label with k validation positives keeps half of its own threshold."""
    resources: ResourcesConfig = ResourcesConfig()
    """Machine needs (GPU memory) used to place the run on a work queue."""
    explain: ExplainConfig = ExplainConfig()
    """SHAP explanations of the trained model, made when the set is compared."""

    @field_validator("name")
    @classmethod
    def _slug(cls, value: str) -> str:
        return _name_slug(value)

    @model_validator(mode="after")
    def _tabular_fields(self) -> RunConfig:
        tabular_only = ("id_column", "label_columns", "ignore_columns", "metric")
        if self.data.dataset != "tabular":
            for name in tabular_only:
                if getattr(self.data, name) not in (None, ()):
                    raise ValueError(f"data.{name} applies only to dataset 'tabular', not {self.data.dataset!r}")
        return self


def _name_slug(value: str) -> str:
    """A config or set name: it becomes part of run ids and report names (folders and keys in a store)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", value) or ".." in value:
        raise ValueError(
            "must be 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit, "
            "without '..' (it names folders in the store)"
        )
    return value


class ConfigSetEntry(_Strict):
    """One config of a set: a file path (relative to the set file) and overrides merged into it."""

    path: str
    """Config file, relative to the set file."""
    overrides: dict[str, Any] = {}
    """Nested keys deep-merged into that config before validation."""


class ConfigSet(_Strict):
    """A named list of run configs trained and compared together."""

    name: str
    """Set name (``cpu-demo``, ``gpu``): letters, digits, '-', '_' or '.'; it names the report in the store."""
    description: str = ""
    """Free text shown in reports."""
    overrides: dict[str, Any] = {}
    """Nested keys deep-merged into every config (e.g. a data subset), before entry overrides."""
    configs: tuple[ConfigSetEntry, ...] = Field(min_length=1)
    """The configs, as paths or ``{path, overrides}`` entries."""
    report: ReportConfig = ReportConfig()
    """How the runs are compared: bootstrap resamples, ensemble size."""

    @field_validator("name")
    @classmethod
    def _slug(cls, value: str) -> str:
        return _name_slug(value)

    @field_validator("configs", mode="before")
    @classmethod
    def _paths_as_entries(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"path": v} if isinstance(v, str) else v for v in value]
        return value


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``overrides`` merged in; nested dicts merge, everything else replaces."""
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        kind = not_regular(path)  # before opening: a FIFO would block, a folder raises
        if kind:
            raise ConfigError(f"{path}: is {kind}, not a config file")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        raw = load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if raw is None:
        raise ConfigError(f"{path}: the file is empty (expected a mapping of config fields)")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of config fields, got {type(raw).__name__}")
    return raw


def _validation_message(source: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        # Discriminated unions put the family name in the location path; it is not a field.
        loc = [str(p) for p in err["loc"] if p not in FAMILIES]
        field = ".".join(loc) or "(top level)"
        lines.append(f"field '{field}': {err['msg']}")
    return f"{source}: invalid config\n  " + "\n  ".join(lines)


def parse_run_config(raw: dict[str, Any], source: str = "<config>") -> RunConfig:
    """Validate a config mapping; ``source`` names it in errors."""
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_validation_message(source, exc)) from None


def load_run_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read, merge ``overrides`` into, and validate one run config YAML file."""
    path = Path(path)
    raw = deep_merge(_read_yaml(path), overrides or {})
    return parse_run_config(raw, str(path))


@dataclass(frozen=True)
class ResolvedEntry:
    """One config of a set, ready to run: its file, the overrides merged into it, and the validated result."""

    path: Path
    overrides: dict[str, Any]
    config: RunConfig


def load_config_set(path: str | Path, overrides: dict[str, Any] | None = None) -> tuple[ConfigSet, list[ResolvedEntry]]:
    """Read a config set and validate every config it lists; ``overrides`` apply to all of them (last).

    Every config is validated here, before anything trains, so a malformed entry fails the whole
    set up front. Run-config names must be unique within a set: they name the runs in the comparison.
    """
    path = Path(path)
    try:
        config_set = ConfigSet.model_validate(_read_yaml(path))
    except ValidationError as exc:
        raise ConfigError(_validation_message(str(path), exc)) from None
    entries = []
    for entry in config_set.configs:
        merged = deep_merge(deep_merge(config_set.overrides, entry.overrides), overrides or {})
        config_path = path.parent / entry.path
        entries.append(ResolvedEntry(config_path, merged, load_run_config(config_path, merged)))
    names = [e.config.name for e in entries]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"{path}: config names must be unique in a set; repeated: {', '.join(duplicates)}")
    return config_set, entries


def parse_overrides(assignments: list[str]) -> dict[str, Any]:
    """``["training.epochs=1", "data.max_train_samples=500"]`` -> nested dict; values are YAML scalars."""
    result: dict[str, Any] = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
            raise ConfigError(f"override '{item}': expected KEY=VALUE with a dotted key, e.g. training.epochs=1")
        try:
            parsed = load_yaml(value) if value.strip() else None
        except yaml.YAMLError:
            raise ConfigError(f"override '{item}': value is not valid YAML") from None
        node = result
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{part}' is set both as a value and as a section")
        node[parts[-1]] = parsed
    return result
