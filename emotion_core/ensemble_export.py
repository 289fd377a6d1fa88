"""Export a published ensemble as a self-contained folder: ``emotion predict DIR`` and ``emotion serve DIR``
load it with no store.

Layout of ``DIR`` (a one-package store, so the store's integrity checks apply to every file):
    export.json                 ``{"format": 1, "kind": "ensemble", "run_id": <the package's run id>}``
    README.md                   the model card (hub YAML metadata; ``model_card.ensemble_card_text``)
    runs/<package id>/          the ensemble package, byte for byte (its manifest lists every sha256)
    runs/<member id>/           each member run, byte for byte

- ``export_ensemble``: read the package and its members (verified), publish each into a temp folder beside
  ``DIR`` with ``LocalStore.publish`` (verified again), write the card, rename the folder to ``DIR``.
- ``exported_package``: a folder holding ``export.json`` -> the package's verified folder and the export as
  its member store; ids are ``RunId``-validated, so members resolve inside ``DIR`` only.

Limits: a local folder (no ``s3://`` exports); copies every member's weights (the size of all members).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from emotion_core.errors import StoreError
from emotion_core.files import write_json

EXPORT_FILE = "export.json"
EXPORT_FORMAT = 1
"""Layout version of ``export.json``; a reader refuses versions it does not know."""


def export_ensemble(ref, dest: str | Path, *, store=None) -> dict:
    """Export the ensemble package ``ref`` (folder, ``file://``/``s3://`` URI) to the new folder ``dest``.

    Members come from ``store``, else from the store that holds the package. Returns the run id, the folder
    and the member ids. ``ExportError`` if ``dest`` is not new or empty; ``StoreError`` if anything is damaged.
    """
    from emotion_core.ensemble_package import is_ensemble, member_store, read_ensemble, read_members
    from emotion_core.export import ExportError, building, check_destination
    from emotion_core.model_card import ensemble_card_text
    from emotion_core.store import LocalStore, resolve_run_folder

    dest = check_destination(dest)
    folder = resolve_run_folder(ref)  # verified against its manifest
    if not is_ensemble(folder):
        raise ExportError(f"'{ref}' is not an ensemble package")
    ensemble = read_ensemble(folder)  # member ids validated here: '../x' is refused before anything is copied
    members = read_members(ensemble, store if store is not None else member_store(ref, folder))
    with building(dest) as tmp:
        target = LocalStore(tmp)
        for run in members:
            target.publish(run.folder, run.run_id)  # copied, then verified against the member's manifest
        target.publish(folder, ensemble.run_id)
        shutil.rmtree(tmp / ".staging", ignore_errors=True)  # the store's (empty) work area
        write_json(tmp / EXPORT_FILE, {"format": EXPORT_FORMAT, "kind": "ensemble", "run_id": ensemble.run_id})
        exported = read_ensemble(target.run_folder(ensemble.run_id))
        (tmp / "README.md").write_text(ensemble_card_text(exported, members), encoding="utf-8")
    return {"run_id": str(ensemble.run_id), "folder": str(dest), "members": [str(m) for m in ensemble.member_ids]}


def exported_package(ref):
    """``(package folder, member store)`` when ``ref`` is a local folder holding ``export.json``, else None.

    The package is read from ``runs/<id>`` of the export and verified; its members resolve in the same folder.
    """
    from emotion_core.store import LocalStore, RunId

    text = str(ref)
    if "://" in text and not text.startswith("file://"):
        return None
    root = Path(text.removeprefix("file://")).expanduser()
    marker = root / EXPORT_FILE
    if not marker.is_file():
        return None
    where = f"export '{root}': {EXPORT_FILE}"
    try:
        facts = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StoreError(f"{where}: not readable JSON ({exc}); the export is damaged") from None
    if not isinstance(facts, dict) or facts.get("format") != EXPORT_FORMAT or facts.get("kind") != "ensemble":
        raise StoreError(f"{where}: expected format {EXPORT_FORMAT} of an ensemble export; a newer or damaged export")
    run_id = RunId.parse(facts.get("run_id"), f"{where}: run_id")  # untrusted: it names a folder
    store = LocalStore(root)
    return store.run_folder(run_id), store
