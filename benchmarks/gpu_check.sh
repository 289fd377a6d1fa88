#!/usr/bin/env bash
# The GPU check, offline on a machine that has torch (CUDA), transformers, peft and accelerate only.
#
#   benchmarks/gpu_check.sh fetch [PYTHON_VERSION]   # here, with a registry: wheels + data into gitignored folders
#   benchmarks/gpu_check.sh [gpu_check.py args]      # there: unpack what is missing, run the check
#
# fetch: `pip download` of what the check needs and the GPU image lacks into benchmarks/gpu_wheels/
# (pydantic + pydantic_core for the config, scipy + scikit-learn for fit's validation metrics,
# bitsandbytes for QLoRA, trimmed to its CUDA 13 libraries: 43 MB -> ~7 MB), for the device's Python
# (default 3.12; binary wheels are per version), and a GoEmotions subset into benchmarks/gpu_data/.
# About 55 MB in all: carry both folders (run's `carry`: benchmarks/gpu_wheels, benchmarks/gpu_data).
# run: every package the device's Python cannot import is unzipped from its wheel into
# benchmarks/gpu_wheels/site (no pip, no network), which goes first on PYTHONPATH; then gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=benchmarks/gpu_wheels
PY=${PYTHON:-python3}

if [[ "${1:-}" == "fetch" ]]; then
  version=${2:-3.12}
  mkdir -p "$WHEELS" && rm -rf "$WHEELS/site"  # unpacked for another Python: stale
  platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
             --platform manylinux2014_x86_64)
  "$PY" -m pip download --only-binary=:all: --no-deps --python-version "$version" "${platforms[@]}" -d "$WHEELS" \
    pydantic pydantic_core annotated-types typing-inspection scipy scikit-learn joblib threadpoolctl bitsandbytes
  # bitsandbytes ships one library per CUDA/ROCm release; the device's torch is CUDA 13: keep cuda13x only.
  "$PY" - "$WHEELS" <<'EOF'
import re, sys, zipfile
from pathlib import Path
for wheel in Path(sys.argv[1]).glob("bitsandbytes-*.whl"):
    if ".trimmed" in wheel.name:
        continue
    trimmed = wheel.with_name(wheel.name.replace(".whl", ".trimmed.zip"))
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(trimmed, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            lib = re.search(r"libbitsandbytes_(\w+)\.so$", item.filename)
            if lib is None or lib.group(1).startswith(("cuda13", "cpu")):
                dst.writestr(item, src.read(item))
    wheel.unlink()
    print(f"{trimmed.name}: {trimmed.stat().st_size / 2**20:.1f} MiB")
EOF
  "$PY" benchmarks/gpu_check.py --prepare-data
  du -sh "$WHEELS" benchmarks/gpu_data
  exit 0
fi

SITE="$WHEELS/site"
mkdir -p "$SITE"
unpack() {  # unpack <import name> <wheel name prefix>: only when the device's Python lacks it
  if PYTHONPATH="$SITE" "$PY" -c "import $1" 2>/dev/null; then return; fi
  archive=$(ls "$WHEELS"/"$2"-*.whl "$WHEELS"/"$2"-*.zip 2>/dev/null | head -n 1 || true)
  if [[ -z "$archive" ]]; then echo "missing: $1 (no $2 wheel in $WHEELS; run: $0 fetch)" >&2; return; fi
  "$PY" -m zipfile -e "$archive" "$SITE"
  echo "unpacked $(basename "$archive")"
}
for pair in annotated_types:annotated_types typing_inspection:typing_inspection pydantic_core:pydantic_core \
            pydantic:pydantic joblib:joblib threadpoolctl:threadpoolctl scipy:scipy sklearn:scikit_learn \
            bitsandbytes:bitsandbytes; do
  unpack "${pair%%:*}" "${pair##*:}"
done
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "$PY" benchmarks/gpu_check.py "$@"
