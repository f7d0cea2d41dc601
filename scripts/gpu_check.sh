#!/usr/bin/env bash
# BENCH_ARGS="--quick --repeats 1" tries the script on a CPU machine.
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
  python3 -c "import torch, accelerate; print('torch', torch.__version__, 'accelerate', accelerate.__version__, 'cuda', torch.cuda.is_available())"
} | tee "$OUT/environment.txt"
status=0
# Steps in order of importance; each writes its output as it goes, so a run cut short by the
# device tool's 10-minute limit still brings back the steps before it (about 8-9 minutes in all).
# 1. every GPU-marked test (about 1.5 minutes, compiled digits included)
timeout 150 python3 -m pytest -q -m gpu -rA tests/ 2>&1 | tee "$OUT/gpu_tests.txt" || status=1
# 2. effective batch 256 in fp16: 256 x 1 unconstrained vs automatic micro-batching under 3 GiB, without and
#    with gradient checkpointing
timeout 120 python3 bench/run.py ${BENCH_ARGS:-} --auto_batch_check --max_memory_gib 3 --out "$OUT/auto_batch.json" 2>&1 \
  | tee "$OUT/auto_batch.txt" || status=1
# 3. the peer benchmark with the framework+ckpt rows, fp32 and fp16, 2 alternating repeats (medians of 2;
#    about 5 minutes on one H100; bench.json.partial keeps finished repeats if the timeout cuts it)
timeout 300 python3 bench/run.py --repeats 2 ${BENCH_ARGS:-} --out "$OUT/bench.json" 2>&1 | tee "$OUT/bench.txt" || status=1
# 4. torch.compile: raw and framework, eager and compiled, fp16, one repeat (about 2 minutes)
timeout 120 python3 bench/run.py ${BENCH_ARGS:-} --compile --peers raw,framework --precisions fp16 --repeats 1 \
  --out "$OUT/bench_compile.json" 2>&1 | tee "$OUT/bench_compile.txt" || status=1
# 5. small models (issue 33): digits and tabular, framework vs a hand-written loop on the GPU, 3 alternating
#    rounds each (about 1.5 minutes)
for workload in digits tabular; do
  timeout 90 python3 bench/small_models.py --workload "$workload" --rounds 3 --threads 4 \
    --out "$OUT/small_$workload.json" 2>&1 | tee "$OUT/small_$workload.txt" || status=1
done
exit $status
