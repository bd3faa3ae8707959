#!/usr/bin/env bash
# The GPU path in one short run (well under 10 minutes on one GPU): the GPU tests, then bench_score.py on
# cxr-dev and on a small archive with --device cuda, the archive at several decode-worker counts (on a GPU
# the decoder is the bound). Run from the repository root with the virtualenv active:
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]
#
# Figures go to stdout and to OUT_DIR (default: $OUT if set, else a temporary folder). Without a CUDA device
# it stops after saying so (the CPU figures come from bench_score.py itself).
set -euo pipefail

out="${1:-${OUT:-$(mktemp -d -t cxr-gpu-check.XXXXXX)}}"
mkdir -p "$out"
archive="$(mktemp -d -t cxr-archive.XXXXXX)"
trap 'rm -rf "$archive"' EXIT
cores="$(nproc)"

python - <<'EOF' | tee "$out/device.txt"
import torch
if not torch.cuda.is_available():
    raise SystemExit("no CUDA device: nothing to check here")
print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
EOF

python -m pip list 2>/dev/null | grep -i -E '^(torch|pillow|nvidia-nvimgcodec)' | tee "$out/versions.txt" || true

echo "== GPU tests"
python -m pytest -q -m gpu tests 2>&1 | tee "$out/gpu_tests.txt"

echo "== cxr-dev (bench_score.py, --device cuda)"
timeout 150 python benchmarks/bench_score.py --device cuda --files 1200 2>&1 | tee "$out/bench_cxr_dev.txt"

echo "== archive of 40 full-size films"
python benchmarks/make_archive.py 40 "$archive" --jobs "$cores" | tee "$out/archive.txt"

for workers in 2 4 "$cores"; do
    echo "== archive, --device cuda, $workers decode workers"
    timeout 120 python benchmarks/bench_score.py --device cuda --archive "$archive" --workers "$workers" 2>&1 \
        | tee "$out/bench_archive_w$workers.txt"
done
echo "figures in $out"
