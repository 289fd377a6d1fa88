"""Design-card rules that code review alone would miss."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import emotion_core

REPO = Path(__file__).resolve().parents[1]


def test_emotion_core_never_imports_prefect():
    modules = [m.name for m in pkgutil.walk_packages(emotion_core.__path__, "emotion_core.")]
    assert len(modules) > 20
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m == 'prefect' or m.startswith('prefect.'))\n"
        "print(len(bad)); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"emotion_core imported prefect: {result.stdout}{result.stderr[-2000:]}"


def test_no_remote_code_or_pickles_by_default():
    source = "\n".join(p.read_text() for p in (REPO / "emotion_core").rglob("*.py"))
    assert "trust_remote_code=True" not in source
    assert "import pickle" not in source and "pickle.load" not in source and "torch.load(" not in source
    assert "joblib" not in source
