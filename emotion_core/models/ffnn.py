"""Feed-forward baseline trained from scratch: TF-IDF n-grams -> hidden layer -> one logit per label.

Features
- ``TfidfFeaturizer``: word and char n-grams, sublinear TF, IDF fitted on the training texts only, each block
  L2-normalised; saved as plain JSON (no pickles).
- The first layer is an ``nn.EmbeddingBag`` weighted by the TF-IDF values: a sparse-input linear layer.
- Output bias starts at each label's prior logit.

Limits
- One hidden layer; n-grams unseen in training are ignored at prediction time.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from safetensors.torch import load_file, save_file
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
from sklearn.preprocessing import normalize
from torch import nn

from emotion_core.config import RunConfig
from emotion_core.labels import LabelSchema
from emotion_core.model_configs import FFNNConfig
from emotion_core.models.family import Family, label_prior_logits


class TfidfFeaturizer:
    """Word + char TF-IDF blocks with a fixed vocabulary; ``fit`` once, ``transform`` many times."""

    def __init__(self, blocks: list[dict]) -> None:
        # Each block: {"analyzer", "ngram_range", "vocabulary": {term: column}, "idf": [float]}.
        self.blocks = blocks
        self._counters = [
            CountVectorizer(
                analyzer=b["analyzer"], ngram_range=tuple(b["ngram_range"]), vocabulary=b["vocabulary"], lowercase=True
            )
            for b in blocks
        ]
        self._idf = [np.asarray(b["idf"], dtype=np.float32) for b in blocks]

    @property
    def n_features(self) -> int:
        return sum(len(b["vocabulary"]) for b in self.blocks)

    @classmethod
    def fit(cls, texts: list[str], spec: FFNNConfig) -> TfidfFeaturizer:
        per_block = max(1, spec.max_features // 2)
        blocks = []
        for analyzer, ngrams in (("word", spec.word_ngrams), ("char_wb", spec.char_ngrams)):
            vec = TfidfVectorizer(
                analyzer=analyzer,
                ngram_range=tuple(ngrams),
                min_df=spec.min_df,
                max_features=per_block,
                sublinear_tf=True,
                lowercase=True,
                dtype=np.float32,
            )
            vec.fit(texts)
            vocabulary = {term: int(col) for term, col in vec.vocabulary_.items()}
            blocks.append(
                {"analyzer": analyzer, "ngram_range": list(ngrams), "vocabulary": vocabulary, "idf": vec.idf_.tolist()}
            )
        return cls(blocks)

    def transform(self, texts: list[str]) -> sp.csr_matrix:
        parts = []
        for counter, idf in zip(self._counters, self._idf):
            counts = counter.transform(texts).astype(np.float32)
            counts.data = 1.0 + np.log(counts.data)  # sublinear tf, as in the fitted TfidfVectorizer
            parts.append(normalize(counts.multiply(idf).tocsr()))
        return sp.hstack(parts, format="csr", dtype=np.float32)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"blocks": self.blocks}), encoding="utf-8")

    @classmethod
    def read(cls, path: Path) -> TfidfFeaturizer:
        return cls(json.loads(path.read_text(encoding="utf-8"))["blocks"])


class FFNNClassifier(nn.Module):
    """Sparse TF-IDF input -> EmbeddingBag (sum) + bias -> ReLU -> dropout -> linear head."""

    def __init__(self, n_features: int, hidden_size: int, num_labels: int, dropout: float) -> None:
        super().__init__()
        self.features = nn.EmbeddingBag(n_features, hidden_size, mode="sum")
        # Small init: rows of TF-IDF have unit norm, so pre-activations start with std ~0.05 and the
        # learnt signal, not the random projection, dominates after a few steps.
        nn.init.normal_(self.features.weight, std=0.05)
        self.hidden_bias = nn.Parameter(torch.zeros(hidden_size))
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, num_labels)

    def forward(self, indices, offsets, weights, labels=None):
        hidden = torch.relu(self.features(indices, offsets, per_sample_weights=weights) + self.hidden_bias)
        logits = self.head(self.dropout(hidden))
        if labels is None:
            return {"logits": logits}
        return {"loss": nn.functional.binary_cross_entropy_with_logits(logits, labels), "logits": logits}


class SparseRows(torch.utils.data.Dataset):
    """Rows of a CSR feature matrix with optional labels."""

    def __init__(self, features: sp.csr_matrix, labels: np.ndarray | None) -> None:
        self.features = features
        self.labels = labels

    def __len__(self) -> int:
        return self.features.shape[0]

    def __getitem__(self, i: int) -> dict:
        start, end = self.features.indptr[i], self.features.indptr[i + 1]
        item = {"indices": self.features.indices[start:end], "weights": self.features.data[start:end]}
        if self.labels is not None:
            item["labels"] = self.labels[i]
        return item


def collate(items: list[dict]) -> dict[str, torch.Tensor]:
    """Concatenate rows into EmbeddingBag's flat (indices, offsets, weights) form."""
    lengths = [len(item["indices"]) for item in items]
    batch = {
        "indices": torch.from_numpy(np.concatenate([item["indices"] for item in items]).astype(np.int64)),
        "offsets": torch.tensor([0] + list(np.cumsum(lengths)[:-1]), dtype=torch.int64),
        "weights": torch.from_numpy(np.concatenate([item["weights"] for item in items]).astype(np.float32)),
    }
    if "labels" in items[0]:
        batch["labels"] = torch.from_numpy(np.stack([item["labels"] for item in items]).astype(np.float32))
    return batch


def tfidf_family(name: str, model: nn.Module, featurizer: TfidfFeaturizer) -> Family:
    """The ``Family`` of a model on TF-IDF rows (this one and ``linear``): weights in safetensors + ``featurizer.json``.

    Trained from scratch: every layer is new, so no separate head; every layer learns at ``learning_rate``.
    """

    def make_dataset(texts: list[str], labels: np.ndarray | None) -> SparseRows:
        return SparseRows(featurizer.transform(list(texts)), None if labels is None else labels.astype(np.float32))

    def save(folder: Path) -> None:
        weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(weights, str(folder / "model.safetensors"))
        featurizer.save(folder / "featurizer.json")

    return Family(name, model, make_dataset, collate, save, has_lengths=False)


def build(cfg: RunConfig, schema: LabelSchema, train_texts: list[str], train_labels: np.ndarray) -> Family:
    """Fit the TF-IDF vocabulary on the training texts and initialise the network."""
    spec: FFNNConfig = cfg.model
    featurizer = TfidfFeaturizer.fit(train_texts, spec)
    model = FFNNClassifier(featurizer.n_features, spec.hidden_size, len(schema), spec.dropout)
    if cfg.training.init_bias_from_prior:
        with torch.no_grad():
            model.head.bias.copy_(torch.from_numpy(label_prior_logits(train_labels)))
    return tfidf_family("ffnn", model, featurizer)


def load(cfg: RunConfig, schema: LabelSchema, folder: Path) -> Family:
    """Rebuild a trained FFNN from ``folder``."""
    spec: FFNNConfig = cfg.model
    featurizer = TfidfFeaturizer.read(folder / "featurizer.json")
    model = FFNNClassifier(featurizer.n_features, spec.hidden_size, len(schema), spec.dropout)
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    model.eval()
    return tfidf_family("ffnn", model, featurizer)
