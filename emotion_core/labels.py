"""LabelSchema: the ordered label names of a dataset, stored once per run (``labels.json``).

Label order is a fact of the data: it names the columns of every label matrix (metrics, thresholds,
prediction files, reports).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from emotion_core.errors import DataError


@dataclass(frozen=True)
class LabelSchema:
    """Ordered, unique, non-empty label names; column ``i`` of every label matrix is ``names[i]``."""

    names: tuple[str, ...]

    def __post_init__(self) -> None:
        names = tuple(self.names)
        object.__setattr__(self, "names", names)
        if not names:
            raise DataError("a label schema needs at least one label")
        for name in names:
            if not isinstance(name, str) or not name.strip():
                raise DataError(f"label names must be non-empty strings, got {name!r}")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise DataError(f"duplicate label names: {', '.join(duplicates)}")

    def __len__(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise DataError(f"unknown label {name!r}; known labels: {', '.join(self.names)}") from None

    def to_json(self) -> str:
        return json.dumps({"labels": list(self.names)}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> LabelSchema:
        return cls(tuple(json.loads(text)["labels"]))

    @classmethod
    def read(cls, path: str | Path) -> LabelSchema:
        return cls.from_json(Path(path).read_text(encoding="utf-8"))
