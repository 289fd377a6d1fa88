"""The isolation harness (tests/isolation.py) really isolates: a process worker run through it is "another machine".

1. A Python run through the harness is not root, cannot read the checkout or list the data folder, cannot
   import the project through the editable install, and still imports torch and Prefect from the venv.
2. The audit log records the attempts, so the leak check that tests/e2e/test_fleet.py makes of its isolated
   gpu workers (real Prefect workers running the nightly on code and data pulled from S3) can fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from isolation import cleanup, isolated_command, isolation_kwargs, leaked, read_audit

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the isolation harness needs root (mount namespace, setpriv)"),
]

REPO = Path(__file__).resolve().parents[2]
VENV = Path(sys.prefix)


@pytest.fixture
def isolation(tmp_path, tmp_path_factory, data_dir):
    """Keyword arguments of ``isolated_command`` for one test (without argv and env)."""
    return isolation_kwargs(
        tmp_path, checkout=REPO, venv=VENV, data_dir=data_dir, basetemp=tmp_path_factory.getbasetemp()
    )


def test_isolated_python_sees_no_checkout(isolation):
    kwargs = isolation
    probe = textwrap.dedent(
        f"""
        import json, os
        out = {{"uid": os.getuid(), "cwd": os.getcwd()}}
        try:
            out["readme"] = open({str(REPO / "README.md")!r}).read()[:20]
        except OSError as e:
            out["readme"] = type(e).__name__
        try:
            out["data"] = os.listdir({os.environ["EMOTION_DATA_DIR"]!r})
        except OSError as e:
            out["data"] = type(e).__name__
        try:
            import emotion_core
            out["emotion_core"] = emotion_core.__file__
        except ImportError as e:
            out["emotion_core"] = type(e).__name__
        import prefect, torch
        out["libs"] = [prefect.__version__, torch.__version__]
        print(json.dumps(out))
        """
    )
    cmd = isolated_command([str(VENV / "bin" / "python"), "-c", probe], env={}, **kwargs)
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    finally:
        cleanup(cmd)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["uid"] != 0
    assert Path(out["cwd"]) == kwargs["workdir"].resolve()
    assert out["readme"] == "FileNotFoundError"
    assert out["data"] in ([], "FileNotFoundError")  # an empty tmpfs where the data folder (or its parent) was
    assert out["emotion_core"] == "ModuleNotFoundError"
    assert out["libs"][0].startswith("3.")
    # The audit log sees the attempts: the check of test 2 can fail.
    assert str(REPO / "README.md") in leaked(**kwargs)
    assert any(path.startswith(str(VENV)) for _, path in read_audit(kwargs["audit_log"]))
