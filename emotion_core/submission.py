"""Kaggle-style SemEval-2018 E-c submission: ``ID`` then one 0/1 column per emotion, one row per tweet.

- ``submit_run``: the ``emotion submit`` command: the run's unlabelled ``predict`` split (or a file), at the
  run's calibrated thresholds by default (fitted now on validation for runs without ``calibration.json``); an
  ensemble package (published, exported or a champion) at its own thresholds (its temperatures are its fit).
- ``write_submission``: predicts (or takes logits), thresholds, and writes ``ID,anger,...,trust`` atomically in
  the order of ``ids``; columns in the official order when the labels are SemEval's, else the run's order.
  The model is a run, or a predictor (``predict.load_predictor``: probabilities + its own thresholds).
- ``submission_from_file``: the same for a prediction input file (e.g. ``test-unlabelled.txt``).

Limits: 0/1 columns only (probabilities: ``predict``); the official scorer wants tabs: ``sep="\\t"``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emotion_core.data.semeval import LABELS as SEMEVAL_LABELS
from emotion_core.outputs import check_output_file, write_output_atomically
from emotion_core.predict import run_logits

log = logging.getLogger(__name__)


def column_order(names: Sequence[str]) -> list[str]:
    """SemEval's official order when ``names`` are the SemEval emotions, else ``names`` as given."""
    return list(SEMEVAL_LABELS) if sorted(names) == sorted(SEMEVAL_LABELS) else list(names)


def per_label(values: Any, names: Sequence[str], what: str) -> np.ndarray:
    """``values`` (sequence in ``names`` order, or ``{name: value}``) as a float64 array in ``names`` order."""
    if isinstance(values, Mapping):
        missing = [n for n in names if n not in values]
        extra = sorted(set(values) - set(names))
        if missing or extra:
            raise ValueError(f"{what}: missing labels {missing}, unknown labels {extra}")
        values = [values[n] for n in names]
    array = np.asarray(values, dtype=np.float64)
    if array.shape != (len(names),):
        raise ValueError(
            f"{what} must have one value per label ({len(names)}: {', '.join(names)}), got shape {array.shape}"
        )
    if not np.isfinite(array).all():
        raise ValueError(f"{what} contain NaN or infinite values")
    return array


def write_submission(
    run,
    texts: Sequence[str] | None,
    ids: Sequence[str],
    out_path: str | Path,
    thresholds: Any = None,
    id_column: str = "ID",
    *,
    temperatures: Any = None,
    logits: np.ndarray | None = None,
    batch_size: int = 128,
    sep: str = ",",
    inputs: Sequence[str | Path] = (),
) -> dict:
    """Write the submission of ``run`` for ``texts`` identified by ``ids``.

    ``run``: a ``Run``, run folder or URI; or a predictor (``predict.load_predictor``: an ensemble package), whose
    own probabilities and thresholds decide (then ``thresholds``, ``temperatures`` and ``logits`` must be None).
    ``inputs``: files the output must never replace (the run's folder is always one).

    ``logits``: (n, L) in the run's label order, instead of predicting ``texts`` (then ``texts`` may
    be None). Returns ``{"path", "rows", "columns", "positives" ({label: rows predicted 1}),
    "rows_without_label", "thresholds" ({label: t}), "temperatures" ({label: T} or None)}``.
    """
    from emotion_core.runs import Run, read_run

    predictor = run if hasattr(run, "predict") else None
    run = predictor.run if predictor is not None else run if isinstance(run, Run) else read_run(run)
    ids = [str(i) for i in ids]
    names = list(run.schema.names)
    _check_rows(ids, texts, logits, len(names))
    columns = column_order(names)
    if id_column in columns:
        raise ValueError(f"id column {id_column!r} is also a label name")
    if predictor is not None:
        if thresholds is not None or temperatures is not None or logits is not None:
            raise ValueError("a predictor decides with its own probabilities and thresholds: pass texts only")
        cut, temps = per_label(predictor.thresholds, names, "thresholds"), None
        predicted = predictor.predict(list(texts))[1]
    else:
        cut = per_label(run.thresholds() if thresholds is None else thresholds, names, "thresholds")
        temps = None if temperatures is None else per_label(temperatures, names, "temperatures")
        predicted = _run_decisions(run, texts, logits, cut, temps, batch_size)

    import polars as pl

    frame = pl.DataFrame(
        {id_column: ids, **{name: predicted[:, names.index(name)].astype(np.int8) for name in columns}}
    )
    out = write_output_atomically(out_path, frame.write_csv(separator=sep), [*inputs, run.folder])
    positives = {name: int(predicted[:, names.index(name)].sum()) for name in columns}
    log.info("wrote a %d-row submission of run %s to %s", len(ids), run.run_id, out)
    return {
        "path": str(out),
        "rows": len(ids),
        "columns": [id_column, *columns],
        "positives": positives,
        "rows_without_label": int((predicted.sum(axis=1) == 0).sum()),
        "thresholds": {n: float(t) for n, t in zip(names, cut)},
        "temperatures": None if temps is None else {n: float(t) for n, t in zip(names, temps)},
    }


def _run_decisions(run, texts, logits, cut: np.ndarray, temps: np.ndarray | None, batch_size: int) -> np.ndarray:
    """0/1 labels of a run: its logits (given, or predicted for ``texts``), calibrated by ``temps``, at ``cut``."""
    from emotion_core.calibration import apply_temperatures
    from emotion_core.metrics import sigmoid
    from emotion_core.thresholds import apply_thresholds

    z = np.asarray(logits, dtype=np.float64) if logits is not None else run_logits(run, texts, batch_size)
    probs = sigmoid(z) if temps is None else apply_temperatures(z, temps)
    return apply_thresholds(probs, cut, run.at_least_one())


def _check_rows(ids: list[str], texts, logits, n_labels: int) -> None:
    if not ids:
        raise ValueError("no ids: a submission needs at least one row")
    if texts is None and logits is None:
        raise ValueError("pass the texts to predict, or their logits")
    if texts is not None and len(texts) != len(ids):
        raise ValueError(f"{len(ids)} ids but {len(texts)} texts: one id per text, in the same order")
    if logits is not None and np.shape(logits) != (len(ids), n_labels):
        raise ValueError(f"logits must have shape ({len(ids)}, {n_labels}) (ids x labels), got {np.shape(logits)}")
    duplicates = sorted(i for i, count in Counter(ids).items() if count > 1)
    if duplicates:
        raise ValueError(f"duplicate ids: {', '.join(duplicates[:5])}{' ...' if len(duplicates) > 5 else ''}")


def submission_from_file(
    run,
    data_path: str | Path,
    out_path: str | Path,
    *,
    thresholds: Any = None,
    temperatures: Any = None,
    text_column: str | None = None,
    id_column: str | None = None,
    batch_size: int = 128,
    sep: str = ",",
) -> dict:
    """``write_submission`` for every row of a prediction input file (its ids, in file order).

    The output's id column keeps the input's name (``ID`` for SemEval files). Returns
    ``write_submission``'s dict.
    """
    from emotion_core.data import read_prediction_input

    id_name, ids, texts = read_prediction_input(data_path, text_column=text_column, id_column=id_column)
    return write_submission(
        run,
        texts,
        ids,
        out_path,
        thresholds,
        id_name,
        temperatures=temperatures,
        batch_size=batch_size,
        sep=sep,
        inputs=[data_path],
    )


def resolve_run_ref(run_ref, store: str | None = None):
    """``(reference, store)``: ``champion:<dataset>`` -> the champion's folder in ``store`` (default
    ``$EMOTION_STORE``, as ``emotion serve`` resolves it) and that store (an ensemble's members come from it);
    any other reference unchanged, with None."""
    from emotion_core.serving.models import CHAMPION_PREFIX, ChampionSource

    if not str(run_ref).startswith(CHAMPION_PREFIX):
        return run_ref, None
    from emotion_core.settings import default_store_uri

    champion = ChampionSource(store or default_store_uri(), str(run_ref).removeprefix(CHAMPION_PREFIX))
    run_id = champion.current()
    log.info("champion of %s: run %s", champion.key, run_id)
    return champion.store.run_folder(run_id), champion.store


def _names_ensemble(ref) -> bool:
    """Whether ``ref`` names an ensemble package, published or exported (verified on the way)."""
    from emotion_core.ensemble_export import exported_package
    from emotion_core.ensemble_package import is_ensemble
    from emotion_core.store import resolve_run_folder

    return exported_package(ref) is not None or is_ensemble(resolve_run_folder(ref))


def submit_run(
    run_ref,
    out_path: str | Path,
    *,
    data_path: str | Path | None = None,
    calibrated: bool = True,
    batch_size: int = 128,
    text_column: str | None = None,
    id_column: str | None = None,
    store: str | None = None,
) -> dict:
    """The submission of a chosen run (or ``champion:<dataset>`` of ``store``), at its calibrated thresholds by
    default.

    ``calibrated``: the temperatures and re-tuned thresholds the run ships (``calibration.json``, fitted
    on validation at training time); a run trained before calibration shipped gets them fitted now on
    its validation logits (``calibration.calibrate_run``, the same numbers as the comparison report);
    off: the run's own thresholds. Rows: ``data_path`` (any prediction input file), else the unlabelled
    ``predict`` split of the run's dataset (SemEval E-c's test file); ``text_column`` and ``id_column``
    apply to ``data_path`` (as in ``read_prediction_input``). Returns ``write_submission``'s dict plus
    ``calibrated`` and ``calibration`` (``"shipped"``, ``"fitted"`` or None).
    """
    check_output_file(out_path, [data_path] if data_path is not None else [])  # before any reading or predicting
    from emotion_core.analysis import DataCache
    from emotion_core.runs import read_run

    ref, source = resolve_run_ref(run_ref, store)
    if _names_ensemble(ref):
        return _submit_ensemble(ref, source, out_path, data_path, calibrated, batch_size, text_column, id_column)
    run = read_run(ref)
    shipped = run.calibration() if calibrated else None
    # The dataset is read only when needed: the unlabelled split, or fitting an old run's calibration.
    needs_data = data_path is None or (calibrated and shipped is None)
    data = DataCache().for_run(run) if needs_data else None
    thresholds, temperatures, source = _submission_calibration(run, shipped, calibrated, data)
    if data_path is not None:
        result = submission_from_file(
            run,
            data_path,
            out_path,
            thresholds=thresholds,
            temperatures=temperatures,
            text_column=text_column,
            id_column=id_column,
            batch_size=batch_size,
        )
    else:
        result = _submit_predict_split(run, data, out_path, thresholds, temperatures, batch_size)
    return {**result, "calibrated": calibrated, "calibration": source}


def _submit_ensemble(
    ref, store, out_path, data_path, calibrated: bool, batch_size: int, text_column, id_column
) -> dict:
    """``submit_run`` for an ensemble package: its probabilities at its thresholds (members from ``store``, else
    the package's own store or export); rows from ``data_path``, else its first member's ``predict`` split."""
    from emotion_core.analysis import DataCache
    from emotion_core.errors import ConfigError
    from emotion_core.predict import load_predictor

    if not calibrated:
        raise ConfigError(
            f"'{ref}' is an ensemble package: --no-calibration does not apply (the members' temperatures are part "
            "of its fit); nothing was written"
        )
    predictor = load_predictor(ref, batch_size=batch_size, store=store)
    if data_path is not None:
        result = submission_from_file(
            predictor, data_path, out_path, text_column=text_column, id_column=id_column, batch_size=batch_size
        )
    else:
        data = DataCache().for_run(predictor.members[0])  # the members share the dataset and its labels
        result = _submit_predict_split(predictor, data, out_path, None, None, batch_size)
    return {**result, "calibrated": True, "calibration": "ensemble"}


def _submission_calibration(run, shipped, calibrated: bool, data) -> tuple[dict | None, dict | None, str | None]:
    """``(thresholds, temperatures, source)``: the shipped calibration, else one fitted now, else the run's own."""
    if shipped is not None:
        return shipped.thresholds, shipped.temperatures, "shipped"
    if calibrated:
        thresholds, temperatures = _fit_calibration(run, data)
        return thresholds, temperatures, "fitted"
    return None, None, None


def _submit_predict_split(run, data, out_path: str | Path, thresholds, temperatures, batch_size: int) -> dict:
    """The submission of the unlabelled ``predict`` split of the run's (or predictor's) dataset (an error when it
    has none)."""
    from emotion_core.errors import DataError

    rows = data.split("predict")
    if rows.height == 0:
        owner = run.members[0] if hasattr(run, "predict") else run  # a predictor: an ensemble, by its first member
        raise DataError(
            f"run {run.run.run_id if owner is not run else run.run_id}: its dataset "
            f"'{owner.config.data.dataset}' has no unlabelled test rows "
            "(split 'predict'); pass the file to predict with --data"
        )
    return write_submission(
        run,
        rows["text"].to_list(),
        rows["id"].to_list(),
        out_path,
        thresholds,
        data.id_column,
        temperatures=temperatures,
        batch_size=batch_size,
    )


def _fit_calibration(run, data) -> tuple[dict, dict]:
    """Thresholds and temperatures fitted now on the validation logits of a run without ``calibration.json``."""
    from emotion_core.analysis import fit_validation_calibration

    log.warning(
        "run %s has no calibration.json (trained before calibration shipped with runs): fitting "
        "temperatures and thresholds on its validation logits now",
        run.run_id,
    )
    calibration = fit_validation_calibration(run, data)
    return calibration["thresholds"], calibration["temperatures"]
