"""User-facing errors: every error a user can cause is an ``EmotionError``.

The CLI prints its message without a traceback and exits with status 2; the message names the file, row,
column or config field, so it can be fixed without reading code.
"""

from __future__ import annotations


class EmotionError(Exception):
    """Base class for errors caused by input the user controls."""


class ConfigError(EmotionError):
    """A configuration file or value is invalid. The message names the file and field."""


class DataError(EmotionError):
    """A data file is invalid or cannot be found.

    ``row`` is the 1-based data row (the header, if any, is not counted), so row 1 is the
    first record of the file.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        row: int | None = None,
        column: str | None = None,
    ) -> None:
        self.file = file
        self.row = row
        self.column = column
        self.reason = message
        where = []
        if file is not None:
            where.append(str(file))
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column '{column}'")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


class ModelError(EmotionError):
    """A model id or path cannot be resolved, or a model does not fit its config."""


class StoreError(EmotionError):
    """The artefact store is unreachable, or a run in it is missing or incomplete."""


class RunFailed(EmotionError):
    """One or more runs of a config set failed; the message names each config and its error."""


class CodeVersionMismatch(EmotionError):
    """A child of ``train-all`` runs other code than its parent (``provenance.code_version``); the message names
    both versions. Nothing is trained: one train-all compares runs of one code version only."""


class TrainingDiverged(EmotionError):
    """Training stopped: the loss or the gradient norm stayed non-finite (NaN/inf) for several steps.

    The message names the config, the steps and the values, and what to change.
    """


class OutOfMemoryAtMinBatch(EmotionError):
    """Training ran out of GPU memory even at ``training.min_batch_size`` rows per device.

    The message names the config, the per-device batch sizes tried and what to change
    (a smaller model or sequence length, gradient checkpointing, a bigger card).
    """


class RankFailed(EmotionError):
    """A rank of a distributed run (``resources.gpus`` > 1) failed or died; the message names the rank and why."""


RANK_DIED = "died without an error"
"""In a ``RankFailed`` message: the rank's process died (killed, lost, out of host memory), which a new
attempt may survive, unlike an error raised by the training code. train-all re-dispatches such children."""
