#!/usr/bin/env bash
# One call on a lent GPU machine: the CUDA tests of the engine, the benchmarks
# on the card, then the fan-out: the same sweep in-process on CUDA and over one
# `weightsim worker` per GPU (benchmarks/fanout.py --gpus). Results land in
# ${OUT:-.}/bench-cuda.json and ${OUT:-.}/fanout-gpu.json.
set -euo pipefail
out=${OUT:-.}
python -m pip install --quiet -e . pytest >/dev/null 2>&1 || true
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python -m pytest -q -p no:cacheprovider tests/test_engine.py -k cuda 2>&1 | tail -5 | tee "$out/cuda-tests.txt"
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
PREFECT_HOME=$(mktemp -d) python -m benchmarks.run --quick --device cuda --json "$out/bench-cuda.json" \
  > "$out/bench-cuda.log" 2>&1
tail -c 3000 "$out/bench-cuda.json"
PREFECT_HOME=$(mktemp -d) python -m benchmarks.fanout --gpus --json "$out/fanout-gpu.json" > "$out/fanout-gpu.log" 2>&1
tail -c 2000 "$out/fanout-gpu.json"
