"""Data hash: one ``sha256:<hex>`` that changes when the rows a run sees could change.

- Covers the bytes of every file read, in role order (role and length framed in), and the loader options
  that change rows (dataset, columns, fractions, seed, subset sizes, invalid-row policy).
- Not the data path: the same files in another folder give the same hash.

Limits: hub rows are hashed as polars' NDJSON text, stable within a polars version only.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


class DataHasher:
    """Accumulates file bytes (in call order) and options into one sha256."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256()

    def add_bytes(self, role: str, data: bytes) -> None:
        # Frame each part with its role and length so concatenations cannot collide.
        self._sha.update(f"{role}\0{len(data)}\0".encode())
        self._sha.update(data)

    def add_options(self, options: dict[str, Any]) -> None:
        self.add_bytes("options", json.dumps(options, sort_keys=True, default=list).encode())

    def hexdigest(self) -> str:
        return f"sha256:{self._sha.hexdigest()}"
