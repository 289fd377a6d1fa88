"""Tokenized texts for the transformer families: dataset items and dynamic-padding collation.

``make_dataset`` tokenises through the on-disk cache of ``token_cache`` (keyed by the texts, the
tokenizer's fingerprint and ``max_length``): configs sharing a tokenizer tokenise the same texts once
per machine. The dataset's ``cache`` says ``hit``, ``miss`` or ``off``.
"""

from __future__ import annotations

import numpy as np
import torch

from emotion_core.models import token_cache


class TokenizedTexts(torch.utils.data.Dataset):
    """Tokenized texts (unpadded) with optional float labels; items carry ``input_ids`` for length grouping."""

    def __init__(self, encodings: dict[str, list], labels: np.ndarray | None, cache: str | None = None) -> None:
        self.encodings = encodings
        self.labels = labels
        self.cache = cache  # token cache outcome: "hit", "miss", "off" (None: not tokenised through it)

    def __len__(self) -> int:
        return len(self.encodings["input_ids"])

    def __getitem__(self, i: int) -> dict:
        item = {key: values[i] for key, values in self.encodings.items()}
        if self.labels is not None:
            item["labels"] = self.labels[i]
        return item


def text_io(tokenizer, max_length: int):
    """``(make_dataset, collate)`` for a tokenizer: truncation at ``max_length``, padding per batch."""

    def encode(texts: list[str]) -> dict[str, list]:
        enc = tokenizer(texts, truncation=True, max_length=max_length)
        return {k: enc[k] for k in tokenizer.model_input_names if k in enc}

    def make_dataset(texts: list[str], labels: np.ndarray | None) -> TokenizedTexts:
        # Everything besides the tokenizer and the texts that changes encode()'s result.
        params = {
            "truncation": True,
            "max_length": max_length,
            "add_special_tokens": True,
            "names": list(tokenizer.model_input_names),
        }
        encodings, status = token_cache.cached_encode(tokenizer, texts, encode, params)
        return TokenizedTexts(encodings, None if labels is None else labels.astype(np.float32), cache=status)

    def collate(items: list[dict]) -> dict[str, torch.Tensor]:
        features = [{k: v for k, v in item.items() if k != "labels"} for item in items]
        batch = dict(tokenizer.pad(features, return_tensors="pt"))
        if "labels" in items[0]:
            batch["labels"] = torch.from_numpy(np.stack([item["labels"] for item in items]))
        return batch

    return make_dataset, collate
