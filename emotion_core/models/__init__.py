"""Model families. Each family module exposes the same plain functions (no base class):

- ``build(cfg, schema, train_texts, train_labels) -> Family``: a ready-to-train model with its
  featurizer/tokenizer, datasets builder, collator and optimizer parameter groups;
- ``load(folder) -> Family``: the same, restored from a run's ``model/`` folder.

``emotion_core.models.build_family`` and ``load_family`` dispatch on ``cfg.model.family``.
"""

__all__ = ["Family", "build_family", "load_family"]


def __getattr__(name: str):
    # Lazy: ``emotion_core.models.preflight`` must import without torch (the train-all parent
    # checks configs but trains nothing).
    if name in __all__:
        from emotion_core.models import family

        return getattr(family, name)
    raise AttributeError(f"module 'emotion_core.models' has no attribute {name!r}")
