#!/usr/bin/env bash
# Everything CUDA-only in one short run (bf16 autocast, fused and custom LSTM paths, FSDP2 with the bf16 policy on
# one GPU, the custom cells' speed against cuDNN), summarised in benchmarks/results/gpu_check.json.
#   bash benchmarks/gpu_check.sh            # on a GPU machine
#   bash benchmarks/gpu_check.sh --cpu      # the CPU-safe parts on the CPU (the CI smoke test)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-$here/../.venv/bin/python}"
[ -x "$python" ] || python=python3
exec "$python" "$here/gpu_check.py" "$@"
