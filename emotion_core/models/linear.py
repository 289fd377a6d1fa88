"""TF-IDF + logistic regression baseline: TF-IDF n-grams -> one linear layer -> one logit per label.

Features
- Multi-label logistic regression (one sigmoid per label) on the FFNN's TF-IDF features
  (``ffnn.TfidfFeaturizer``), trained through the same Trainer path as every family (loss, early
  stopping, thresholds, calibration); L2 regularisation is ``training.weight_decay``, the bias is not
  decayed and starts at each label's prior logit.
- Saved as ``model.safetensors`` plus ``featurizer.json`` (plain JSON, no pickles).

Limits
- Linear in the features: no interactions between n-grams (the FFNN's hidden layer adds them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from emotion_core.config import RunConfig
from emotion_core.labels import LabelSchema
from emotion_core.model_configs import LinearConfig
from emotion_core.models.family import Family, label_prior_logits
from emotion_core.models.ffnn import TfidfFeaturizer, tfidf_family


class LinearClassifier(nn.Module):
    """Sparse TF-IDF input -> EmbeddingBag (sum) + bias: ``logits = X @ W.T + b`` without a dense X."""

    def __init__(self, n_features: int, num_labels: int) -> None:
        super().__init__()
        self.features = nn.EmbeddingBag(n_features, num_labels, mode="sum")
        nn.init.zeros_(self.features.weight)  # as logistic regression: the bias (label priors) decides at first
        self.bias = nn.Parameter(torch.zeros(num_labels))

    def forward(self, indices, offsets, weights, labels=None):
        logits = self.features(indices, offsets, per_sample_weights=weights) + self.bias
        if labels is None:
            return {"logits": logits}
        return {"loss": nn.functional.binary_cross_entropy_with_logits(logits, labels), "logits": logits}


def build(cfg: RunConfig, schema: LabelSchema, train_texts: list[str], train_labels: np.ndarray) -> Family:
    """Fit the TF-IDF vocabulary on the training texts; zero weights, bias at the label priors."""
    spec: LinearConfig = cfg.model
    featurizer = TfidfFeaturizer.fit(train_texts, spec)
    model = LinearClassifier(featurizer.n_features, len(schema))
    if cfg.training.init_bias_from_prior:
        with torch.no_grad():
            model.bias.copy_(torch.from_numpy(label_prior_logits(train_labels)))
    return tfidf_family("linear", model, featurizer)


def load(cfg: RunConfig, schema: LabelSchema, folder: Path) -> Family:
    """Rebuild a trained linear model from ``folder``."""
    featurizer = TfidfFeaturizer.read(folder / "featurizer.json")
    model = LinearClassifier(featurizer.n_features, len(schema))
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    model.eval()
    return tfidf_family("linear", model, featurizer)
