"""Tokenized texts for the transformer families: dataset items and dynamic-padding collation."""

from __future__ import annotations

import numpy as np
import torch


class TokenizedTexts(torch.utils.data.Dataset):
    """Tokenized texts (unpadded) with optional float labels; items carry ``input_ids`` for length grouping."""

    def __init__(self, encodings: dict[str, list], labels: np.ndarray | None) -> None:
        self.encodings = encodings
        self.labels = labels

    def __len__(self) -> int:
        return len(self.encodings["input_ids"])

    def __getitem__(self, i: int) -> dict:
        item = {key: values[i] for key, values in self.encodings.items()}
        if self.labels is not None:
            item["labels"] = self.labels[i]
        return item


def text_io(tokenizer, max_length: int):
    """``(make_dataset, collate)`` for a tokenizer: truncation at ``max_length``, padding per batch."""

    def make_dataset(texts: list[str], labels: np.ndarray | None) -> TokenizedTexts:
        enc = tokenizer(list(texts), truncation=True, max_length=max_length)
        encodings = {k: enc[k] for k in tokenizer.model_input_names if k in enc}
        return TokenizedTexts(encodings, None if labels is None else labels.astype(np.float32))

    def collate(items: list[dict]) -> dict[str, torch.Tensor]:
        features = [{k: v for k, v in item.items() if k != "labels"} for item in items]
        batch = dict(tokenizer.pad(features, return_tensors="pt"))
        if "labels" in items[0]:
            batch["labels"] = torch.from_numpy(np.stack([item["labels"] for item in items]))
        return batch

    return make_dataset, collate
