"""Artefact store: where runs and reports are published. See ``local.py`` for the contract."""

from emotion_core.store.local import LocalStore, open_store

__all__ = ["LocalStore", "open_store"]
