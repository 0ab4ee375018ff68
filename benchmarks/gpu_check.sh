#!/usr/bin/env bash
# The GPU checks of one device session, in one go (each stage bounded, every log written to $OUT):
#   1. the GPU backends' tests, with cupy and torch:cuda required (nothing may skip);
#   2. the default run (python -m llm train) on cpu, cuda and torch:cuda, timed by the run itself;
#   3. benchmarks/train_bench.py --device cuda (all configs, all contenders), then a TF32 pass at large and gpt2-small;
#   4. gpt2-small in low precision (bf16 on torch:cuda, fp16 on CuPy, PyTorch eager under autocast with the same
#      dtype) and with micro-batches (issue 18's GPU floors).
# Wheels the machine lacks (array-api-compat, -extra, -strict) are installed from .whl/ when present.
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh
set -uo pipefail
OUT=${OUT:-/tmp/arraygpt-gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site:$PWD
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, cupy, numpy; print('torch', torch.__version__, 'cupy', cupy.__version__, 'numpy', numpy.__version__)" \
    | tee -a "$OUT/gpu.txt"

echo "== 1. tests on cupy and torch:cuda"
ARRAYGPT_REQUIRE_BACKENDS=cupy,torch:cuda timeout "${TEST_TIMEOUT:-240}" python3 -m pytest -q -p no:cacheprovider \
    -k "cupy or cuda" tests/ 2>&1 | tee "$OUT/tests.log" | tail -4

echo "== 2. the default run"
for dev in cpu cuda torch:cuda; do
    timeout 120 python3 -m llm train --device "$dev" --no-chat --no-progress --json \
        >"$OUT/run-${dev/:/-}.jsonl" 2>"$OUT/run-${dev/:/-}.err"
    echo "$dev rc=$? $(grep -h '"phase"\|exact_match' "$OUT/run-${dev/:/-}.err" "$OUT/run-${dev/:/-}.jsonl" | tail -1)"
    grep -h "tokens/s" "$OUT/run-${dev/:/-}.err" | tail -2
done

echo "== 3. training-step benchmark"
timeout "${BENCH_TIMEOUT:-300}" python3 benchmarks/train_bench.py --device cuda --rounds "${ROUNDS:-2}" \
    --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.md"
timeout 120 python3 benchmarks/train_bench.py --device cuda --rounds 1 --tf32 --configs large,gpt2-small \
    --contenders ours-cupy,ours-torch:cuda+graphs,torch-eager --json "$OUT/bench-tf32.json" 2>&1 | tee "$OUT/bench-tf32.md"

echo "== 4. gpt2-small: mixed precision and micro-batches"
timeout 150 python3 benchmarks/train_bench.py --device cuda --rounds 1 --configs gpt2-small --precision bf16 \
    --contenders ours-torch:cuda+graphs,torch-eager,torch-sdpa --json "$OUT/bench-bf16.json" 2>&1 | tee "$OUT/bench-bf16.md"
timeout 150 python3 benchmarks/train_bench.py --device cuda --rounds 1 --configs gpt2-small --precision fp16 \
    --contenders ours-cupy,torch-eager --json "$OUT/bench-fp16.json" 2>&1 | tee "$OUT/bench-fp16.md"
timeout 150 python3 benchmarks/train_bench.py --device cuda --rounds 1 --configs gpt2-small --micro-batch 2 \
    --contenders ours-cupy,ours-torch:cuda+graphs,torch-eager --json "$OUT/bench-micro.json" 2>&1 | tee "$OUT/bench-micro.md"
timeout 150 python3 benchmarks/train_bench.py --device cuda --rounds 1 --configs gpt2-small --precision bf16 \
    --micro-batch 2 --contenders ours-torch:cuda+graphs,torch-eager --json "$OUT/bench-bf16-micro.json" 2>&1 \
    | tee "$OUT/bench-bf16-micro.md"  # the graphed micro-batch path in low precision
