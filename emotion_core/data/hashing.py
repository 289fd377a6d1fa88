"""Data hash: one ``sha256:<hex>`` that changes when the rows a run sees could change.

Features
- Covers the exact bytes of every file read, in role order (role name and byte length framed in, so
  moving bytes from one file to the next changes the hash), plus the loader options that change rows:
  dataset kind, columns, fractions, seed, subset sizes, invalid-row policy.
- The data path is deliberately left out: the same files read from another folder give the same hash.

Limits
- Hub data has no local files: its rows are hashed as the NDJSON text polars writes for them, which is
  stable for a given polars version, not across versions.
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
