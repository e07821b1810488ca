#!/usr/bin/env bash
# GPU benchmark in one call (about 5 minutes on an H100): devices, ResNet-50 train step
# (bf16, batch 256) and inference vs torch AMP + channels_last, Grad-CAM, `resnet-jax train`
# end to end on packed shards with worker processes (GPU_BENCH_E2E=0: not), a table.
# Installs nothing. GPU_BENCH_TINY=1 (or no GPU) runs tiny sizes; PYTHON picks the interpreter.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
nvidia-smi -L 2>/dev/null || echo "nvidia-smi: no NVIDIA GPU visible"
# Keep XLA from grabbing 75% of the GPU up front: torch runs in the same process.
export XLA_PYTHON_CLIENT_PREALLOCATE="${XLA_PYTHON_CLIENT_PREALLOCATE:-false}"
# The end-to-end row (last) gets what is left of the timeout, less 30 s for the table.
export GPU_BENCH_TIMEOUT="${GPU_BENCH_TIMEOUT:-420}"
exec timeout "$GPU_BENCH_TIMEOUT" "$PY" -m benchmarks.gpu "$@"
