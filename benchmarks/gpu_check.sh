#!/usr/bin/env bash
# One-GPU check of the speed work of issue #15, under 8 minutes on one card; all JSON into one folder.
#
#   benchmarks/gpu_check.sh [OUT_DIR]        # default runs/gpu_check/
#
# Writes OUT_DIR/{nvidia-smi.txt, versions.json, catalog.json, profile.json, profile.md, train_gpu.json} and the
# stderr of each step (*.log). Steps:
#   1. benchmarks/catalog.py --device cuda: (a) the published way (fp32, batch 1) vs (b) tiled fp32 vs (c) tiled
#      bf16 / fp16 (fastest mode with PSNR >= 40 dB) vs (d) the whole Ray Data job on 16×16 = 256 pairs
#   2. benchmarks/profile_model.py --device cuda: per-op profile of one tiled bf16 tile
#   3. benchmarks/train_gpu.py: a few distillation steps, fp32 vs AMP bf16 / fp16, channels_last, batch 8
# Exits 2 with one line on stderr when no CUDA GPU is usable; any failing step fails the script (set -e).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-runs/gpu_check}"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_check: no NVIDIA GPU here (nvidia-smi missing or sees no device)" >&2
  exit 2
fi
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "gpu_check: torch sees no CUDA device (torch.cuda.is_available() is False)" >&2
  exit 2
fi

mkdir -p "$OUT"
cd "$ROOT"
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}" AWS_EC2_METADATA_DISABLED=true PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

nvidia-smi > "$OUT/nvidia-smi.txt"
"$PY" - > "$OUT/versions.json" <<'EOF'
import json, platform, torch
print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                  "gpu": torch.cuda.get_device_name(0), "capability": list(torch.cuda.get_device_capability(0)),
                  "python": platform.python_version()}))
EOF
cat "$OUT/versions.json"

# Each step: a wall-clock cap (the sum stays under 8 minutes), the last stdout line (the JSON summary) kept.
step() {
  local name="$1" limit="$2"; shift 2
  local started=$SECONDS
  echo "gpu_check: $name ..." >&2
  timeout "$limit" "$PY" "$@" 2> "$OUT/$name.log" | tail -n 1 > "$OUT/$name.json"
  echo "gpu_check: $name done in $((SECONDS - started)) s" >&2
}

step catalog 270 benchmarks/catalog.py --device cuda --repeats 3 --e2e-garments 16 --e2e-models 16
step profile 60 benchmarks/profile_model.py --device cuda --mode bf16+channels_last --garments 8 --models 8 \
  --batch-size 32 --output "$OUT/profile_full.json" --markdown "$OUT/profile.md"
step train_gpu 120 benchmarks/train_gpu.py --device cuda --precisions fp32 bf16 fp16 --channels-last on \
  --batch-sizes 8 --steps 5 --warmup 2

echo "gpu_check: all JSON in $OUT" >&2
