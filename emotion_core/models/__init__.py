"""Model families, built and loaded by name through ``model_configs.FAMILY_REGISTRY``.

Each family module has two plain functions (no base class), both returning a ``models.family.Family``:
``build(cfg, schema, train_texts, train_labels)`` (ready to train) and ``load(cfg, schema, folder)``
(restored from a run's ``model/`` folder). This package imports no torch: the module of a family is
imported when a model of it is built.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from emotion_core.config import RunConfig
from emotion_core.errors import ModelError
from emotion_core.labels import LabelSchema
from emotion_core.model_configs import FAMILY_REGISTRY

if TYPE_CHECKING:
    from emotion_core.models.family import Family

__all__ = ["build_family", "load_family"]


def family_module(cfg: RunConfig) -> ModuleType:
    """The module of ``cfg.model.family`` (the config validated the name)."""
    _, module = FAMILY_REGISTRY[cfg.model.family]
    return importlib.import_module(module)


def build_family(cfg: RunConfig, schema: LabelSchema, train_texts: list[str], train_labels: np.ndarray) -> Family:
    """Build the family named by ``cfg.model.family``, initialised for ``schema``."""
    return family_module(cfg).build(cfg, schema, train_texts, train_labels)


def load_family(cfg: RunConfig, schema: LabelSchema, folder: Path) -> Family:
    """Rebuild a trained family from a run's ``model/`` folder: safetensors only, never code from the folder."""
    if getattr(cfg.model, "trust_remote_code", False):
        raise ModelError(
            f"{folder}: field 'model.trust_remote_code' is true; a saved model is never loaded with "
            "remote code (it would run Python from the run's files)"
        )
    return family_module(cfg).load(cfg, schema, folder)
