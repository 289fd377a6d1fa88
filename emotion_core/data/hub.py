"""Hub fallback: a registered dataset with a ``HubSource`` (GoEmotions, SemEval E-c) from the hub via ``datasets``.

- ``datasets`` is imported only here, only when no local data is found.
- Hub splits map to the same roles and go through the same row checks as local files.
- Any failure is a ``DataError`` naming the three ways out: ``data.path``, ``$EMOTION_DATA_DIR``, or going online.

Limits: the data hash covers the rows as loaded, not the hub's files.
"""

from __future__ import annotations

import polars as pl

from emotion_core.data.hashing import DataHasher
from emotion_core.data.locate import ENV_VAR
from emotion_core.data.registry import dataset_spec
from emotion_core.data.source import RawFile, SourceData
from emotion_core.errors import DataError

SPLITS = {"train": "train", "validation": "validation", "test": "test"}
"""Role -> hub split name."""


def _to_polars(split) -> pl.DataFrame:
    if hasattr(split, "to_polars"):
        return split.to_polars()
    return pl.from_arrow(split.with_format("arrow")[:])


def read_hub(dataset: str, tried: str, hasher: DataHasher) -> SourceData:
    spec = dataset_spec(dataset)
    hub_id, config = spec.hub.hub_id, spec.hub.config
    try:
        import datasets  # lazy: only the hub path needs it

        loaded = datasets.load_dataset(hub_id, config)
    except Exception as exc:  # offline, missing package, hub errors: all end the same way for the user
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise DataError(
            f"no local {dataset} data ({tried}), and the hub dataset {hub_id!r} (config {config!r}) could not be "
            f"loaded ({type(exc).__name__}: {detail[:300]}). Either set data.path to the data's file or folder, "
            f"or set {ENV_VAR} to a folder holding '{spec.folder}/', or go online so the hub can be reached."
        ) from None

    hasher.add_bytes("hub", f"{hub_id}/{config}".encode())
    raws: list[RawFile] = []
    schema = spec.hub.schema(loaded)
    for role, split_name in SPLITS.items():
        if split_name not in loaded:
            continue
        file = f"hub:{hub_id}/{config}:{split_name}"
        frame = _to_polars(loaded[split_name])
        if frame.height == 0:
            raise DataError("no data rows", file=file)
        hasher.add_bytes(role, frame.write_ndjson().encode())  # NDJSON: GoEmotions labels are lists
        raws.append(spec.hub.to_raw(frame, role, file, schema))
    if not raws or raws[0].role != "train":
        raise DataError(f"the hub dataset has no train split (splits: {', '.join(loaded)})", file=f"hub:{hub_id}")
    return SourceData(
        schema=schema,
        raws=raws,
        id_column=spec.hub.id_column,
        files={raw.role: raw.file for raw in raws},
    )
