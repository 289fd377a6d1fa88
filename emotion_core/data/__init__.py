"""Data layer: read, validate, split and describe emotion datasets.

Features
- ``load_data(cfg.data)`` -> ``EmotionData``: GoEmotions TSVs, SemEval-2018 E-c, or any CSV/TSV/Parquet
  with 0/1 label columns; found via ``data.path``, ``$EMOTION_DATA_DIR`` or the Hugging Face hub.
- Strict validation with errors naming file, row and column (``DataError``); ``invalid_rows: drop``
  removes bad rows and records each one in the ``DataReport``.
- Missing validation/test splits are carved from train (seeded, multi-label stratified); subsets are
  seeded; ``data_hash`` identifies the exact bytes and options.
- ``read_prediction_input(path)``: ids and texts from any of those formats, auto-detected.

Limits
- Multi-label 0/1 targets only; everything is held in memory. No Prefect here: this is a plain library.
"""

from emotion_core.data.dataset import EmotionData
from emotion_core.data.load import load_data
from emotion_core.data.load_report import DataReport
from emotion_core.data.predict_input import read_prediction_input

__all__ = ["DataReport", "EmotionData", "load_data", "read_prediction_input"]
