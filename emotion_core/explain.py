"""SHAP token attributions: which words pushed a model towards the emotions it predicted.

- ``sample_texts``: a seeded sample of a split that depends only on ids, texts, size and seed, so every model
  of a comparison explains the same texts.
- ``explain_texts``: shap's Partition explainer over a text masker (the model's tokenizer, else words), the
  ``top_labels`` most probable labels per text, on the probability scale; seconds per text measured.
- ``render_html``: one self-contained HTML file of shap's text plots, written atomically.
- ``explain_run``: sample + explain, cached by model, texts, labels, budget, masker and shap version.
- ``family_predict_proba``: ``list[str] -> (n, L)`` probabilities of a ``Family``.

Limits: about ``max_evals`` model calls per text (keep ``n_texts`` small for LLMs); tokens past ``max_length``
get no attribution; the first call compiles shap's numba code (~5 s, reported as ``warmup_seconds``).
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from emotion_core.config import ExplainConfig
from emotion_core.files import atomic_write_text

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
"""Bumped when the cached JSON changes shape: old cache files are then simply not found."""
WORD_PATTERN = r"\W+"
"""Regex separator of the word masker used for models without a tokenizer (TF-IDF FFNN)."""

PredictProba = Callable[[list[str]], np.ndarray]
_warmed_up = False


# ---------------------------------------------------------------------------------------- sampling


def sample_texts(ids: Sequence[str], texts: Sequence[str], n: int, seed: int) -> tuple[list[str], list[str]]:
    """``(ids, texts)`` of a seeded sample of at most ``n`` rows (all when ``n >= len``), ordered by id.

    Rows are sorted by id before drawing, so the sample does not depend on the order rows were
    read in, nor on the model; a permutation prefix is taken, so growing ``n`` only adds rows.
    """
    ids, texts = [str(i) for i in ids], list(texts)
    if len(ids) != len(texts):
        raise ValueError(f"{len(ids)} ids but {len(texts)} texts")
    if len(set(ids)) != len(ids):
        raise ValueError("ids must be unique to identify the sampled texts")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    order = sorted(range(len(ids)), key=ids.__getitem__)
    chosen = np.random.default_rng(seed).permutation(len(order))[: min(n, len(order))]
    picked = sorted((order[i] for i in chosen), key=ids.__getitem__)
    return [ids[i] for i in picked], [texts[i] for i in picked]


# ------------------------------------------------------------------------------------- explaining


def family_predict_proba(family, batch_size: int = 64) -> PredictProba:
    """``texts -> (n, L)`` float64 probabilities (sigmoid of the family's logits)."""
    from emotion_core.metrics import sigmoid
    from emotion_core.training.batch_logits import predict_logits

    def predict_proba(texts) -> np.ndarray:
        # shap passes numpy arrays of numpy strings; the tokenizers want a list of str.
        return sigmoid(predict_logits(family, [str(t) for t in texts], batch_size))

    return predict_proba


def _masker(tokenizer):
    import shap

    if tokenizer is None or isinstance(tokenizer, str):
        return shap.maskers.Text(tokenizer or WORD_PATTERN)
    return shap.maskers.Text(tokenizer)


def masker_name(tokenizer) -> str:
    """What the tokens are (part of the cache key): ``regex:<pattern>`` or ``<TokenizerClass>:vocab-<hash>``.

    A tokenizer is named by its vocabulary, not its path: a run read from a store lands in a
    different local folder on every machine, and must still hit the same cache entry.
    """
    if tokenizer is None or isinstance(tokenizer, str):
        return f"regex:{tokenizer or WORD_PATTERN}"
    get_vocab = getattr(tokenizer, "get_vocab", None)
    if get_vocab is None:
        return f"{type(tokenizer).__name__}:{getattr(tokenizer, 'name_or_path', '')}"
    vocab = json.dumps(sorted(get_vocab().items()), ensure_ascii=False).encode()
    return f"{type(tokenizer).__name__}:vocab-{hashlib.sha256(vocab).hexdigest()[:16]}"


@contextmanager
def _seeded_numpy(seed: int):
    # shap's Partition explainer breaks priority-queue ties with np.random.randn().
    state = np.random.get_state()
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        np.random.set_state(state)


def _warm_up() -> float:
    """Compile shap's numba code once per process, on a dummy model; return the seconds it took."""
    global _warmed_up
    if _warmed_up:
        return 0.0
    import shap

    started = time.perf_counter()
    explainer = shap.explainers.Partition(lambda x: np.zeros((len(x), 1)), shap.maskers.Text(WORD_PATTERN))
    explainer(["warm up the explainer"], max_evals=20, silent=True)
    _warmed_up = True
    return round(time.perf_counter() - started, 3)


def _check_probs(probs: np.ndarray, n: int, n_labels: int) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape != (n, n_labels):
        raise ValueError(f"predict_proba returned shape {probs.shape}, expected ({n}, {n_labels})")
    if not np.isfinite(probs).all() or probs.min() < 0 or probs.max() > 1:
        raise ValueError("predict_proba must return probabilities in [0, 1]")
    return probs


def _label_entry(name: str, prob: float, base: float, tokens, values) -> dict:
    # Every segment is kept, the special tokens ([CLS], [SEP]) as empty strings: when the budget runs
    # out, shap spreads a cluster's remaining credit over its members, special tokens included
    # (measured: -0.0075 on [CLS] at max_evals=40), and dropping them would break values + base = prob.
    return {
        "label": name,
        "prob": float(prob),
        "base_value": float(base),
        "tokens": [str(t) for t in tokens],
        "values": [float(v) for v in values],
    }


def _explain_short(predict_proba: PredictProba, masker, text: str, probs: np.ndarray, top: np.ndarray):
    """Exact values of a text of 0 or 1 token: the token gets ``p(text) - p(masked)``, the base is ``p(masked)``."""
    tokens = [str(t) for t in masker.token_segments(text)[0]] if text.strip() else []
    if not tokens:
        return [], np.zeros((0, len(top))), probs[top], 0
    masked = str(masker(np.zeros(1, dtype=bool), text)[0][0])
    base = _check_probs(predict_proba([masked]), 1, len(probs))[0][top]
    return tokens, (probs[top] - base)[None, :], base, 1


def explain_texts(
    predict_proba: PredictProba,
    texts: Sequence[str],
    label_names: Sequence[str],
    *,
    max_evals: int = 300,
    top_labels: int = 3,
    tokenizer=None,
    ids: Sequence[str] | None = None,
    batch_size: int = 32,
    seed: int = 13,
) -> dict:
    """SHAP values of the ``top_labels`` most probable labels of each text.

    Returns ``{"texts": [{"id", "text", "seconds", "evaluations", "probs": {label: p},
    "labels": [{"label", "prob", "base_value", "tokens", "values"}]}], "label_names", "n_texts",
    "seconds", "seconds_per_text", "warmup_seconds", "max_evals", "top_labels", "batch_size", "seed",
    "masker", "shap_version"}`` (JSON-able).
    """
    import shap

    texts = [str(t) for t in texts]
    names = [str(n) for n in label_names]
    ids = [str(i) for i in ids] if ids is not None else [str(i + 1) for i in range(len(texts))]
    if not texts:
        raise ValueError("no texts to explain")
    if len(ids) != len(texts):
        raise ValueError(f"{len(ids)} ids but {len(texts)} texts")
    k = min(top_labels, len(names))
    warmup = _warm_up()
    probs = _check_probs(predict_proba(texts), len(texts), len(names))
    masker = _masker(tokenizer)
    explainer = shap.explainers.Partition(predict_proba, masker, output_names=names)
    rows, total = [], 0.0
    for text_id, text, text_probs in zip(ids, texts, probs):
        top = np.argsort(-text_probs, kind="stable")[:k]
        started = time.perf_counter()
        explained = _shap_values(explainer, predict_proba, masker, text, text_probs, top, max_evals, batch_size, seed)
        seconds = time.perf_counter() - started
        total += seconds
        rows.append(_text_row(text_id, text, seconds, names, text_probs, top, explained))
    return {
        "texts": rows,
        "label_names": names,
        "n_texts": len(rows),
        "seconds": round(total, 4),
        "seconds_per_text": round(total / len(rows), 4),
        "warmup_seconds": warmup,
        "max_evals": int(max_evals),
        "top_labels": k,
        "batch_size": int(batch_size),
        "seed": int(seed),
        "masker": masker_name(tokenizer),
        "shap_version": shap.__version__,
    }


def _shap_values(
    explainer, predict_proba: PredictProba, masker, text: str, probs: np.ndarray, top, max_evals, batch_size, seed
):
    """``(tokens, values (tokens, k), base values (k,), model evaluations)`` of one text for the labels ``top``."""
    if not text.strip() or masker.shape(text)[1] < 2:  # shap cannot cluster fewer than two tokens
        return _explain_short(predict_proba, masker, text, probs, top)
    with _seeded_numpy(seed):
        exp = explainer([text], max_evals=max_evals, outputs=top, batch_size=batch_size, silent=True)
    return exp.data[0], exp.values[0], np.atleast_1d(exp.base_values[0]), int(getattr(explainer, "last_eval_count", 0))


def _text_row(text_id: str, text: str, seconds: float, names: list[str], probs: np.ndarray, top, explained) -> dict:
    """One text's entry: its probabilities and, per label in ``top``, the SHAP values of its tokens."""
    tokens, values, base, evaluations = explained
    return {
        "id": text_id,
        "text": text,
        "seconds": round(seconds, 4),
        "evaluations": evaluations,
        "probs": {n: float(p) for n, p in zip(names, probs)},
        "labels": [_label_entry(names[j], probs[j], base[c], tokens, values[:, c]) for c, j in enumerate(top)],
    }


# ------------------------------------------------------------------------------------------ HTML


def _label_html(entry: dict) -> str:
    import shap

    title = f"{html.escape(entry['label'])}: p = {entry['prob']:.3f} (base {entry['base_value']:.3f})"
    if not entry["tokens"]:  # shap's plot cannot draw an empty text
        return f'<div class="label"><h3>{title}</h3>\n<p>(no tokens to attribute)</p>\n</div>'
    exp = shap.Explanation(
        values=np.asarray(entry["values"], dtype=np.float64),
        base_values=entry["base_value"],
        data=np.asarray(entry["tokens"], dtype=object),
    )
    return f'<div class="label"><h3>{title}</h3>\n{shap.plots.text(exp, display=False)}\n</div>'


def render_html(explanation: dict, path: str | Path, title: str = "SHAP token attributions") -> Path:
    """Write one self-contained HTML page with shap's text plot of every (text, label); return its path."""
    parts = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em} .text{border-top:1px solid #ccc;padding:1em 0}"
        " h3{font-size:1em;margin:.8em 0 .2em} .source{color:#444;white-space:pre-wrap}</style>",
        "</head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{explanation['n_texts']} texts, max_evals {explanation['max_evals']}, masker "
        f"{html.escape(explanation['masker'])}, shap {html.escape(explanation['shap_version'])}, "
        f"{explanation['seconds_per_text']:.2f} s per text.</p>",
    ]
    for row in explanation["texts"]:
        parts.append(
            f'<div class="text"><h2>{html.escape(row["id"])}</h2><p class="source">{html.escape(row["text"])}</p>'
        )
        parts.extend(_label_html(entry) for entry in row["labels"])
        parts.append("</div>")
    parts.append("</body></html>\n")
    path = Path(path)
    atomic_write_text(path, "\n".join(parts))
    return path


# ---------------------------------------------------------------------------------------- caching


def weights_hash(model) -> str:
    """sha256 over the names and raw bytes of a torch module's state dict (in-memory families' cache key)."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        raw = tensor.detach().contiguous().reshape(-1).view(torch.uint8).cpu().numpy()
        digest.update(raw.tobytes())
    return digest.hexdigest()


def cache_key(
    model_key: str,
    ids: Sequence[str],
    texts: Sequence[str],
    label_names: Sequence[str],
    budget: ExplainConfig,
    masker: str,
) -> str:
    """Hex sha256 of everything an explanation depends on."""
    import shap

    payload = {
        "format": CACHE_FORMAT,
        "model": model_key,
        "ids": list(ids),
        "texts": list(texts),
        "labels": list(label_names),
        "max_evals": budget.max_evals,
        "top_labels": budget.top_labels,
        "batch_size": budget.batch_size,
        "seed": budget.seed,
        "masker": masker,
        "shap": shap.__version__,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def run_tokenizer(folder: Path):
    """The Hugging Face tokenizer a run saved under ``model/tokenizer`` (never its code); None (FFNN): words."""
    tokenizer_dir = folder / "model" / "tokenizer"
    if not tokenizer_dir.is_dir():
        return None  # no tokenizer (FFNN): words
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir, trust_remote_code=False)  # never a run's code


def explain_run(
    run_folder_or_family,
    texts: Sequence[str],
    ids: Sequence[str],
    label_names: Sequence[str] | None,
    budget: ExplainConfig | dict | None,
    cache_dir: str | Path,
    *,
    tokenizer=None,
    html_path: str | Path | None = None,
    predict_batch_size: int = 64,
) -> dict:
    """Explain a seeded sample of ``texts`` with a run (folder/URI or ``Run``) or an in-memory ``Family``.

    ``texts``/``ids``: the whole split; ``budget.n_texts`` of them are sampled (``sample_texts``).
    ``label_names``: the family's output names (unset for a run: its label schema). ``budget``: an
    ``ExplainConfig`` or its dict; unset: the run's ``explain`` config (defaults for a family).
    ``tokenizer``: for a family (a run's comes from ``model/tokenizer``); unset: words. Returns the
    ``explain_texts`` dict plus ``cached``, ``cache_key``, ``cache_path``, ``model_key`` and
    ``html_path`` (when ``html_path`` is given; rendered on cache hits too). With ``n_texts: 0``
    nothing is loaded or computed: ``{"n_texts": 0, "texts": [], "skipped": <why>, "cached": False}``.
    """
    run, family = _run_or_family(run_folder_or_family)
    budget = _budget(budget, run)
    if budget.n_texts == 0:
        return {"n_texts": 0, "texts": [], "skipped": "explain.n_texts is 0", "cached": False}
    model_key, label_names, tokenizer = _model_identity(run, family, label_names, tokenizer)
    sample_ids, sample = sample_texts(ids, texts, budget.n_texts, budget.seed)
    key = cache_key(model_key, sample_ids, sample, label_names, budget, masker_name(tokenizer))
    path = Path(cache_dir) / f"explain-{key[:32]}.json"
    result = _read_cache(path, key)
    cached = result is not None
    if cached:
        log.info("SHAP explanations of %s read from cache %s", model_key, path)
    else:
        if family is None:
            from emotion_core.models import load_family

            family = load_family(run.config, run.schema, run.folder / "model")
        result = explain_texts(
            family_predict_proba(family, predict_batch_size),
            sample,
            label_names,
            max_evals=budget.max_evals,
            top_labels=budget.top_labels,
            tokenizer=tokenizer,
            ids=sample_ids,
            batch_size=budget.batch_size,
            seed=budget.seed,
        )
        _write_cache(path, key, model_key, result)
    result = {**result, "cached": cached, "cache_key": key, "cache_path": str(path), "model_key": model_key}
    if html_path is not None:
        result["html_path"] = str(render_html(result, html_path))
    return result


def _budget(budget: ExplainConfig | dict | None, run) -> ExplainConfig:
    """The budget as given (a config or its dict); unset: the run's ``explain`` config, else the defaults."""
    if budget is None:
        return run.config.explain if run is not None else ExplainConfig()
    if not isinstance(budget, ExplainConfig):
        return ExplainConfig.model_validate(budget)
    return budget


def _model_identity(run, family, label_names, tokenizer) -> tuple[str, list[str], Any]:
    """``(model_key, label_names, tokenizer)``; a run's names and tokenizer default to its schema's and its own."""
    if run is not None:
        model_key = f"run:{run.run_id}"
        label_names = label_names if label_names is not None else run.schema.names
        tokenizer = tokenizer if tokenizer is not None else run_tokenizer(run.folder)
    else:
        if label_names is None:
            raise ValueError("label_names are required to explain an in-memory family")
        model_key = f"weights:{weights_hash(family.model)}"
        tokenizer = tokenizer if tokenizer is not None else getattr(family, "tokenizer", None)
    return model_key, [str(n) for n in label_names], tokenizer


def _write_cache(path: Path, key: str, model_key: str, result: dict) -> None:
    """Write a computed explanation to the cache atomically, and log its cost."""
    atomic_write_text(
        path, json.dumps({"key": key, "model": model_key, "explanation": result}, ensure_ascii=False) + "\n"
    )
    log.info(
        "SHAP: %d texts of %s in %.1f s (%.2f s/text), cached at %s",
        result["n_texts"],
        model_key,
        result["seconds"],
        result["seconds_per_text"],
        path,
    )


def _read_cache(path: Path, key: str) -> dict | None:
    """The cached explanation at ``path``, or None when absent or unreadable (it is then recomputed)."""
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        if payload["key"] == key:
            return payload["explanation"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("SHAP cache file %s is unreadable (%s); recomputing", path, exc)
    return None


def _run_or_family(ref) -> tuple[Any, Any]:
    """``(run, None)`` for a run folder/URI/``Run``, ``(None, family)`` for a ``Family``."""
    from emotion_core.runs import Run, read_run

    if isinstance(ref, Run):
        return ref, None
    if isinstance(ref, (str, Path)):
        return read_run(ref), None
    if hasattr(ref, "model") and hasattr(ref, "make_dataset"):
        return None, ref
    raise TypeError(f"expected a run folder, URI, Run or Family, got {type(ref).__name__}")
