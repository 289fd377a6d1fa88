"""A run's saved model: load it (``load_run_family``) and score texts with it (``run_logits``).

Shared by ``predict.RunPredictor`` and ``ensemble_package.EnsemblePredictor`` (each member is a run): the
ensemble package needs no import of ``predict``, which imports it.
Limits: heavy imports (torch, transformers) happen on first use, not at import.
"""

from __future__ import annotations

from emotion_core.errors import EmotionError, StoreError

__all__ = ["load_run_family", "run_logits"]


def load_run_family(run):
    """The run's saved model (``models.load_family``); a missing or damaged ``model/`` is a ``StoreError``."""
    from emotion_core.models import load_family

    try:
        return load_family(run.config, run.schema, run.folder / "model")
    except EmotionError:
        raise
    except Exception as exc:  # a missing or damaged file under model/: torch, safetensors and json raise many types
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "size mismatch" in str(exc):
            detail = f"its weights do not fit the {len(run.schema)} labels of labels.json"
        raise StoreError(
            f"run '{run.folder}': cannot load the model in model/ ({detail}); the run folder is incomplete or damaged"
        ) from None


def run_logits(run, texts, batch_size: int = 128, family=None):
    """Logits (n_texts, labels) of ``family`` (default: the run's saved model) for ``texts``, in input order."""
    from emotion_core.data.preprocess import preprocess_texts
    from emotion_core.training.batch_logits import predict_logits

    family = family if family is not None else load_run_family(run)
    # The run's own text normalisation (data.preprocess): the model was trained on normalised texts.
    logits = predict_logits(family, preprocess_texts(texts, run.config.data.preprocess), batch_size)
    if logits.ndim != 2 or logits.shape[1] != len(run.schema):
        raise StoreError(
            f"run '{run.folder}': the model gives {logits.shape[-1]} scores per text but labels.json "
            f"lists {len(run.schema)} labels; the run folder is damaged"
        )
    return logits
