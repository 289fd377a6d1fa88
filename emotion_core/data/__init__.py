"""Data layer: read, validate, split and describe emotion datasets.

Features
- ``load_data(cfg.data)`` -> ``EmotionData``: GoEmotions TSVs, SemEval-2018 E-c, or any CSV/TSV/Parquet
  with 0/1 label columns; found via ``data.path``, ``$EMOTION_DATA_DIR`` or the Hugging Face hub, or pushed to the
  artefact store (``data.store_ref``, ``data.pushed``: content-addressed, verified into the cache).
- Strict validation with errors naming file, row and column (``DataError``); ``invalid_rows: drop``
  removes bad rows and records each one in the ``DataReport``.
- Missing validation/test splits are carved from train (seeded, multi-label stratified); subsets are
  seeded; ``data_hash`` identifies the exact bytes and options.
- ``read_prediction_input(path)``: ids and texts from any of those formats, auto-detected.

Limits
- Multi-label 0/1 targets only; everything is held in memory. No Prefect here: this is a plain library.
"""

import importlib

_EXPORTS = {
    "DataReport": "emotion_core.data.load_report",
    "EmotionData": "emotion_core.data.dataset",
    "load_data": "emotion_core.data.load",
    "read_prediction_input": "emotion_core.data.predict_input",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """The package's exports, imported on first use: importing a light submodule (``data.registry``) must not load
    the readers and polars."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'emotion_core.data' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
