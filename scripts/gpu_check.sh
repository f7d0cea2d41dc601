#!/usr/bin/env bash
# Runs every GPU-marked test and (when present) the GPU benchmark on a CUDA machine, writing
# results under $OUT (default: gpu_check_out/). Uses the Python environment it is started in
# (the GPU machine has torch, accelerate, datasets, sklearn and tqdm preinstalled).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_check_out}"
mkdir -p "$OUT"
export HF_DATASETS_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
  python -c "import torch, accelerate; print('torch', torch.__version__, 'accelerate', accelerate.__version__, 'cuda', torch.cuda.is_available())"
} | tee "$OUT/environment.txt"
status=0
python -m pytest -q -m gpu -rA tests/test_gpu.py 2>&1 | tee "$OUT/gpu_tests.txt" || status=1
if [ -f bench/run.py ]; then
  python bench/run.py --out "$OUT/bench.json" 2>&1 | tee "$OUT/bench.txt" || status=1
fi
exit $status
