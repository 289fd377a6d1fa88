#!/usr/bin/env bash
# Set up a GPU machine of the fleet: install the environment, then start one Prefect worker per GPU.
#
#   deployments/setup_gpu_machine.sh --api-url http://prefect.internal:4200/api [--pool gpu]
#       [--gpus-per-worker N] [--python python3.11] [--venv DIR] [--install-only] [--project SPEC]
#
# Steps, in order (each one idempotent: run it again after an upgrade):
#   1. a virtual environment at --venv (default ~/.local/share/emotion-pipeline/venv; created with
#      --python unless DIR already holds a Python, e.g. /opt/conda in the Docker image);
#   2. torch: the version pyproject.toml pins, as the CUDA build from $TORCH_INDEX_URL (default the
#      PyTorch cu130 index). That version already there is kept (the PyTorch base image), unless it is a
#      CPU build on a machine with GPUs;
#   3. the project (--project, default this checkout), non-editable, with a constraint that keeps the
#      torch of step 2: the pin `torch==X` matches `X+cu130`, so pip never swaps it for the CPU wheel;
#   4. the worker kit (gpu_workers.py and pools.yaml) copied to <venv>/share/emotion-pipeline/, so the
#      workers need no checkout;
#   5. unless --install-only: checks the API answers and torch sees the GPUs nvidia-smi lists, then
#      runs gpu_workers.py in the foreground (one worker per GPU or per --gpus-per-worker cards).
# Needs: Python >= 3.11 with venv, an NVIDIA driver recent enough for the CUDA build of $TORCH_INDEX_URL,
# network to PyPI and the PyTorch index (or pip's own mirror settings). Store credentials
# (AWS_* / EMOTION_S3_ENDPOINT_URL) come from the environment, as for any worker.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
API_URL="${PREFECT_API_URL:-}"
POOL=gpu
GPUS_PER_WORKER=1
PYTHON=python3.11
VENV="${HOME}/.local/share/emotion-pipeline/venv"
INSTALL_ONLY=0
PROJECT="$ROOT"
TORCH_INDEX_URL="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cu130}"

usage() { sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
die() { echo "setup_gpu_machine.sh: $*" >&2; exit 2; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --api-url) API_URL="${2:?--api-url needs a URL}"; shift 2 ;;
    --pool) POOL="${2:?}"; shift 2 ;;
    --gpus-per-worker) GPUS_PER_WORKER="${2:?}"; shift 2 ;;
    --python) PYTHON="${2:?}"; shift 2 ;;
    --venv) VENV="${2:?}"; shift 2 ;;
    --project) PROJECT="${2:?}"; shift 2 ;;
    --install-only) INSTALL_ONLY=1; shift ;;
    -h|--help) usage 0 ;;
    *) echo "unknown option: $1" >&2; usage 2 ;;
  esac
done
[[ "$GPUS_PER_WORKER" =~ ^[1-9][0-9]*$ ]] || die "--gpus-per-worker must be a positive integer, got '$GPUS_PER_WORKER'"
[[ $INSTALL_ONLY == 1 || -n "$API_URL" ]] || die "--api-url (or \$PREFECT_API_URL) is required to start workers"

# The one torch version of the project: its pin in pyproject.toml.
TORCH_VERSION="$(sed -n 's/^ *"torch==\([0-9][0-9.]*\)".*/\1/p' "$ROOT/pyproject.toml" | head -1)"
[[ -n "$TORCH_VERSION" ]] || die "$ROOT/pyproject.toml: no \"torch==X.Y.Z\" pin in dependencies"

# 1. The environment.
if [[ ! -x "$VENV/bin/python" ]]; then
  command -v "$PYTHON" >/dev/null || die "--python $PYTHON: not found (Python >= 3.11 with venv is needed)"
  echo "== creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "$PY: Python >= 3.11 is needed"

# 2. torch: keep the pinned version if it is a CUDA build (or the machine has no GPU), else install it
#    from the CUDA index; a CPU build on a GPU machine is replaced.
has_gpu=0
command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 && has_gpu=1
installed="$("$PY" - <<'EOF' 2>/dev/null || true
from importlib.metadata import version
import torch  # noqa: F401  (a broken install must not count as installed)
print(version("torch"), "cuda" if torch.version.cuda else "cpu")
EOF
)"
if [[ "${installed%% *}" == "$TORCH_VERSION" || "${installed%% *}" == "$TORCH_VERSION+"* ]] \
   && [[ "${installed##* }" == cuda || $has_gpu == 0 ]]; then
  echo "== keeping torch $installed"
else
  [[ -z "$installed" ]] || { echo "== replacing torch $installed"; "$PY" -m pip uninstall -y -q torch; }
  echo "== torch==$TORCH_VERSION from $TORCH_INDEX_URL"
  "$PY" -m pip install -q "torch==$TORCH_VERSION" --index-url "$TORCH_INDEX_URL"
fi

# 3. The project, with the installed torch held in place.
constraint="$(mktemp)"
trap 'rm -f "$constraint"' EXIT
"$PY" -c 'from importlib.metadata import version; print("torch==" + version("torch"))' > "$constraint"
echo "== installing $PROJECT (constraint: $(cat "$constraint"))"
"$PY" -m pip install -q -c "$constraint" "$PROJECT"

# 4. The worker kit: the workers run from the environment, not from a checkout.
KIT="$VENV/share/emotion-pipeline"
mkdir -p "$KIT/pools"
cp "$ROOT/deployments/gpu_workers.py" "$KIT/gpu_workers.py"
cp "$ROOT/deployments/pools/pools.yaml" "$KIT/pools/pools.yaml"
"$PY" - <<'EOF'
import importlib.metadata as m
import torch
print(f"== installed: emotion-pipeline {m.version('emotion-pipeline')}, torch {torch.__version__} "
      f"(CUDA {torch.version.cuda or 'none'}), prefect {m.version('prefect')}")
EOF
echo "== worker kit: $KIT/gpu_workers.py"
[[ $INSTALL_ONLY == 1 ]] && exit 0

# 5. Workers: one per GPU (or per group of --gpus-per-worker cards), in the foreground.
if [[ $has_gpu == 1 ]]; then
  "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' \
    || die "nvidia-smi lists GPUs but torch $TORCH_VERSION cannot use them: is the driver recent enough for $TORCH_INDEX_URL? (set TORCH_INDEX_URL, e.g. .../whl/cu126, and run again)"
fi
export PREFECT_API_URL="$API_URL"
exec "$PY" "$KIT/gpu_workers.py" --api-url "$API_URL" --pool "$POOL" --gpus-per-worker "$GPUS_PER_WORKER"
