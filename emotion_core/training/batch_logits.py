"""Batched prediction: logits for a list of texts, in input order.

Texts are sorted by length before batching when the family's items carry lengths (less padding),
and the logits are put back in input order. Runs under ``torch.inference_mode`` on the model's
device.
"""

from __future__ import annotations

import numpy as np
import torch

from emotion_core.models.family import Family


def predict_logits(family: Family, texts: list[str], batch_size: int = 128) -> np.ndarray:
    """Logits (n_texts, n_labels) as float32."""
    dataset = family.make_dataset(list(texts), None)
    n = len(dataset)
    if n == 0:
        raise ValueError("no texts to predict")
    order = np.arange(n)
    if family.has_lengths:
        order = np.argsort([len(dataset[i]["input_ids"]) for i in range(n)], kind="stable")
    model = family.model
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = None
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            batch = family.collate([dataset[int(i)] for i in idx])
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = model(**batch)["logits"].float().cpu().numpy()
            if out is None:
                out = np.empty((n, logits.shape[1]), dtype=np.float32)
            out[idx] = logits
    model.train(was_training)
    return out
