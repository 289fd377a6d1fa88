"""``emotion serve``: a run or a dataset's champion behind an HTTP JSON API (FastAPI + uvicorn).

- ``app.create_app``: the FastAPI app (``/predict``, ``/explain``, ``/health``, ``/model``, ``/``).
- ``batcher.MicroBatcher``: texts of concurrent requests scored together, in one inference thread.
- ``models``: loading a run (``load_model``), resolving ``champion:<dataset>`` in a store's registry.
- ``settings.ServeSettings``: limits, batching, explanation budget, champion re-check period.
"""

from emotion_core.serving.settings import ServeSettings

__all__ = ["ServeSettings"]
