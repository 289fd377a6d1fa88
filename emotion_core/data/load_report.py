"""DataReport: what a load read, dropped, carved and sampled (every run keeps it as ``data_report.json``).

- Files and rows read per role, rows used per split, every dropped row (file, row, column, reason),
  how splits were carved and subsets sampled, positives per label, rows without a label.
- ``to_dict()``/``to_json()`` give plain JSON types only.

Limits: built by ``load_data``; label counts cover labelled splits only.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass
class DataReport:
    """Facts about one load, JSON-serialisable via :meth:`to_dict`."""

    files: dict[str, str] = field(default_factory=dict)
    """Role (``train``, ``validation``, ``test``, ``predict``; ``labels`` for a label-names file) -> path read."""
    rows_read: dict[str, int] = field(default_factory=dict)
    """Role -> data rows in that file, before any row was dropped."""
    rows_used: dict[str, int] = field(default_factory=dict)
    """Split -> rows kept after dropping, carving and subsetting."""
    dropped: list[dict] = field(default_factory=list)
    """One ``{"file", "row", "column", "reason"}`` per dropped row (``invalid_rows: drop``)."""
    carved: dict[str, str] = field(default_factory=dict)
    """Split -> how it was carved out of train, when the data had no such split."""
    subsets: dict[str, str] = field(default_factory=dict)
    """Split -> how a ``max_*_samples`` subset was drawn."""
    label_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    """Split -> label -> positive rows."""
    rows_without_labels: dict[str, int] = field(default_factory=dict)
    """Split -> rows with no positive label (allowed; counted so it is visible)."""
    pushed: str | None = None
    """The pushed dataset read (``<store>/datasets/sha256/<id>``, from ``data.store_ref``); None otherwise."""

    def to_dict(self) -> dict:
        # asdict deep-copies, so callers can mutate the result without touching the report.
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)
