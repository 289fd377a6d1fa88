"""``provenance.code_version``: a content hash of the project's packages that needs no git."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from emotion_core.provenance import CODE_PACKAGES, code_version, hash_packages

REPO = Path(__file__).resolve().parents[2]


def _tree(root: Path) -> dict[str, Path]:
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "sub" / "mod.py").write_text("X = 1\n")
    (root / "other").mkdir()
    (root / "other" / "data.yaml").write_text("a: 1\n")
    return {"pkg": root / "pkg", "other": root / "other"}


def test_hash_is_stable_and_independent_of_where_the_tree_lies(tmp_path):
    first = hash_packages(_tree(tmp_path / "a"))
    assert first.startswith("sha256:") and len(first) == len("sha256:") + 64
    second = _tree(tmp_path / "b")
    assert hash_packages(second) == first
    assert hash_packages(second) == first  # same folders again


def test_hash_changes_when_a_file_changes_is_added_or_renamed(tmp_path):
    packages = _tree(tmp_path)
    before = hash_packages(packages)
    module = packages["pkg"] / "sub" / "mod.py"
    module.write_text("X = 2\n")
    changed = hash_packages(packages)
    assert changed != before
    module.write_text("X = 1\n")
    assert hash_packages(packages) == before
    (packages["other"] / "new.txt").write_text("")
    assert hash_packages(packages) != before
    (packages["other"] / "new.txt").unlink()
    module.rename(module.with_name("renamed.py"))
    assert hash_packages(packages) != before


def test_hash_ignores_pycache_and_pyc(tmp_path):
    packages = _tree(tmp_path)
    before = hash_packages(packages)
    cache = packages["pkg"] / "sub" / "__pycache__"
    cache.mkdir()
    (cache / "mod.cpython-311.pyc").write_bytes(b"\0\1\2")
    (packages["pkg"] / "stray.pyc").write_bytes(b"\3")
    assert hash_packages(packages) == before


def test_code_version_hashes_the_project_packages_and_is_cached():
    assert code_version() == hash_packages({p: REPO / p for p in CODE_PACKAGES})
    assert code_version() is code_version()


def test_code_version_of_a_copy_without_git_is_the_copy_s_own(tmp_path):
    """A pulled copy (no .git) imported from its own folder: the hash of the copy, from the copy's code."""
    for package in CODE_PACKAGES:
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "flows" / "extra.py").write_text("# only in the copy\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    script = "import emotion_core, emotion_core.provenance as p; print(emotion_core.__file__); print(p.code_version())"
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[0] == str(tmp_path / "emotion_core" / "__init__.py")  # the copy wins over the editable install
    assert out[1] == hash_packages({p: tmp_path / p for p in CODE_PACKAGES}) != code_version()
